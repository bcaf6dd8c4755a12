"""A temporary local Prefect server for flows run with no Prefect API configured.

``selfplay demo`` and ``selfplay run`` run their generation as a Prefect flow. Without a
``PREFECT_API_URL`` (environment or Prefect profile) Prefect would start its own temporary
("ephemeral") server on first use, but

- it waits ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (20 s by default) as the
  settings stood when ``prefect`` was first imported (Prefect reads its settings once, into
  a global context), so setting the variable later changes nothing, and a first start,
  which migrates a fresh SQLite database, takes longer than that on a busy 2-core machine;
- when it gives up, a ``RuntimeError`` comes out of the flow call at the end of a long
  traceback, and the server's own output, tracebacks included, goes to our terminal.

So the server is started here, before the flow: ``prefect server start`` (the command the
README gives for a real server) on a free loopback port, its output in
``$PREFECT_HOME/temporary-server.log``. It is waited for through its health check as long
as ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` says (180 s unless set), and no
longer once it has exited; then ``PREFECT_API_URL`` points this process (and its children)
at it. If it does not come up, :class:`~pipeline.errors.PrefectUnavailable` says so in one
line, with the way out.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from pipeline.errors import PrefectUnavailable
from pipeline.processes import die_with_parent

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Seconds a first start may take: migrations of a fresh database on a busy 2-core machine
#: took over 20 s; 180 leaves room for slower machines.
DEFAULT_STARTUP_TIMEOUT_S = 180
WAY_OUT = "run with --no-prefect, or set PREFECT_API_URL to a running Prefect server"
LOG_NAME = "temporary-server.log"


def ensure_prefect_api(home: Optional[Path] = None) -> str:
    """The Prefect API this process runs flows on: the configured one, else a temporary server.

    The configured API is ``PREFECT_API_URL`` in the environment or in the active Prefect
    profile. With ``home`` (and no ``PREFECT_HOME`` set) a temporary server keeps its
    state, its database among it, there instead of sharing ``~/.prefect`` with other runs.
    Raises :class:`PrefectUnavailable` when the configured API does not answer or the
    temporary server does not start.
    """
    os.environ.setdefault(STARTUP_TIMEOUT_VARIABLE, str(DEFAULT_STARTUP_TIMEOUT_S))
    settings = current_prefect_settings()
    if not settings.api.url and home is not None and "PREFECT_HOME" not in os.environ:
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
        os.environ["PREFECT_HOME"] = str(home.resolve())
        settings = current_prefect_settings()
    if settings.api.url:
        # Any answer will do (Prefect Cloud answers 401 without a key); no answer would
        # otherwise surface as a connection error deep inside the flow call.
        if _health(settings.api.url) is None:
            raise PrefectUnavailable(
                f"the Prefect API at {settings.api.url} (PREFECT_API_URL) does not answer; start that server, "
                "or unset PREFECT_API_URL for a temporary one, or run with --no-prefect"
            )
        return settings.api.url
    url = start_temporary_server(Path(settings.home), timeout=settings.server.ephemeral.startup_timeout_seconds)
    os.environ["PREFECT_API_URL"] = url
    current_prefect_settings()
    return url


def current_prefect_settings():
    """Prefect's settings as the environment stands now, also if ``prefect`` was imported before."""
    import prefect.context
    from prefect.settings import get_current_settings

    prefect.context.refresh_global_settings_context()
    return get_current_settings()


def start_temporary_server(home: Path, timeout: float) -> str:
    """Start ``prefect server start`` on a free loopback port; its API URL once it answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = home / LOG_NAME
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as server_log:  # the server writes to its own copy of the file
        process = subprocess.Popen(
            [*command, "--no-ui", "--analytics-off"],
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PREFECT_HOME": str(home)},
            # The server must not outlive a command that is killed (atexit does not run).
            preexec_fn=die_with_parent,
        )
    # Registered before Prefect starts its own exit handlers (log and event workers, which
    # flush to the server); atexit runs the latest first, so the server outlives them.
    atexit.register(_stop, process)
    log.info("starting a temporary Prefect server on %s (up to %.0f s; log %s)", url, timeout, log_path)
    started = time.monotonic()
    while _health(url) != 200:
        if process.poll() is not None:
            raise PrefectUnavailable(
                f"Prefect's temporary server exited (code {process.returncode}) before it answered: "
                f"{_reason(log_path)} (log: {log_path}); {WAY_OUT}"
            )
        if time.monotonic() - started > timeout:
            _stop(process)
            raise PrefectUnavailable(
                f"Prefect's temporary server did not answer within {timeout:.0f} s (log: {log_path}; a longer "
                f"wait: {STARTUP_TIMEOUT_VARIABLE}); {WAY_OUT}"
            )
        time.sleep(0.5)
    log.info("temporary Prefect server answered after %.1f s", time.monotonic() - started)
    return url


def _health(url: str) -> Optional[int]:
    """The HTTP status of the API's health check; None when it does not answer."""
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=5).status_code
    except httpx.HTTPError:  # not listening (yet), or too busy to answer in time
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: The last line of a Python traceback: ``sqlalchemy.exc.OperationalError: (...) unable to ...``.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


def _reason(server_log: Path) -> str:
    """Why the server exited: its last exception line, else its last line of output."""
    lines = [line.strip() for line in server_log.read_text(errors="replace").splitlines() if line.strip()]
    exceptions = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (exceptions or lines or ["no output"])[-1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
