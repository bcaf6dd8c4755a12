"""A real Prefect server on a loopback port, started once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import free_port, stop_server

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def prefect_env(api_url: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        PREFECT_CLI_PROMPT="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        **extra,
    )
    return env


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """``(api_url, prefect_home)`` of a `prefect server start` on 127.0.0.1."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = open(home / "server.log", "w")
    env = prefect_env(api, home)
    env.pop("PREFECT_API_URL")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--analytics-off"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError("prefect server did not start: " + (home / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield api, home
    finally:
        stop_server(server, log, grace=20)


@pytest.fixture
def prefect_api(prefect_server):
    """This process talks to the session's Prefect server (no temporary server per test)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, _ = prefect_server
    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield api
