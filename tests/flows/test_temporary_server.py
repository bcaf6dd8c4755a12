"""When Prefect cannot run the flow, `selfplay demo` and `selfplay run` say so in one line.

The start that succeeds, with a fresh Prefect home on a busy machine, is the demo's own
test (test_demo.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ..conftest import free_port
from .conftest import REPO
from .helpers import TINY

pytestmark = pytest.mark.slow  # each case starts (part of) a Prefect server: seconds

#: Prefect settings that keep the flow from running, and what the error line then says.
CANNOT_START = {
    "server slower than the wait": (
        {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"},
        "did not answer within 1 s",
    ),
    "server exits": (
        {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////nonexistent-dir/prefect.db"},
        "exited (code 3) before it answered: sqlalchemy.exc.OperationalError",
    ),
    "configured server down": (
        {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"},
        "(PREFECT_API_URL) does not answer",
    ),
}


def selfplay(args, settings: dict, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    environment.update(settings, **env)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result, time.monotonic() - started


def assert_one_line(result, fragment: str) -> None:
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "--no-prefect" in lines[0] and "PREFECT_API_URL" in lines[0]  # the ways out


@pytest.mark.parametrize("case", list(CANNOT_START))
def test_demo_without_a_prefect_fails_in_one_line(case, tmp_path):
    settings, fragment = CANNOT_START[case]
    workdir = tmp_path / "demo"
    # A wait long enough that only noticing the exit ends it early.
    result, seconds = selfplay(
        ["demo", "--generations", "1", "--workdir", str(workdir)],
        {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", **settings},
    )
    assert_one_line(result, fragment)
    server_log = workdir / ".prefect" / "temporary-server.log"
    if case == "configured server down":
        assert not server_log.exists()  # the configured API is used, no server of our own
    else:
        assert f"log: {server_log}" in result.stderr
        assert seconds < 200
    assert not (workdir / "snapshots").exists()  # stopped before any work


@pytest.mark.mongo
def test_run_without_a_prefect_fails_in_one_line(server_store, tmp_path):
    settings, fragment = CANNOT_START["server exits"]
    result, _ = selfplay(
        ["--config", str(TINY), "run"],
        settings,
        SELFPLAY_MONGODB_URI=server_store,
        SELFPLAY_WORKDIR=str(tmp_path / "work"),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
    )
    assert_one_line(result, fragment)
    assert (tmp_path / "prefect-home" / "temporary-server.log").exists()
