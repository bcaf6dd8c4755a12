"""Shared fixtures: the embedded store and a real MongoDB-wire server.

The server is, in order: ``SELFPLAY_TEST_MONGODB_URI`` if set; else a FerretDB binary
(``SELFPLAY_FERRETDB_BIN``, or ``ferretdb`` on PATH) started here on a free loopback
port with its own SQLite data directory; else tests that need a server are skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_server(process: subprocess.Popen, log, grace: float) -> None:
    """SIGTERM a server the fixtures started, SIGKILL it after ``grace`` seconds, close its log."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def mongo_server_uri(tmp_path_factory) -> str:
    """Base URI (no database) of a real MongoDB-wire server, or skip."""
    uri = os.environ.get("SELFPLAY_TEST_MONGODB_URI")
    if uri:
        yield uri.rstrip("/")
        return
    binary = os.environ.get("SELFPLAY_FERRETDB_BIN") or shutil.which("ferretdb")
    if not binary:
        pytest.skip("no MongoDB-wire server: set SELFPLAY_TEST_MONGODB_URI or put a ferretdb binary on PATH")
    data = tmp_path_factory.mktemp("ferretdb")
    port = free_port()
    log = open(data / "ferretdb.log", "w")
    process = subprocess.Popen(
        [
            binary,
            "--handler=sqlite",
            f"--sqlite-url=file:{data}/",
            f"--state-dir={data}",
            f"--listen-addr=127.0.0.1:{port}",
            f"--debug-addr=127.0.0.1:{free_port()}",
            "--telemetry=disable",
            "--log-level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        stop_server(process, log, grace=10)


@pytest.fixture
def server_store(mongo_server_uri):
    """A fresh database on the real server, connected as mongoengine's default; dropped after."""
    import mongoengine as me

    from pipeline.store import connect

    name = f"selfplay_test_{uuid.uuid4().hex[:10]}"
    uri = f"{mongo_server_uri}/{name}"
    connect(uri, timeout_ms=5000)
    yield uri
    try:
        me.get_db().client.drop_database(name)
    finally:
        me.disconnect()


@pytest.fixture
def embedded_store():
    """A fresh embedded (mongomock-ng) database, connected as mongoengine's default."""
    import mongoengine as me

    from pipeline.store import connect

    connect(None, database=f"selfplay_test_{uuid.uuid4().hex[:10]}")
    yield "embedded"
    me.disconnect()


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.mongo)])
def store(request):
    """Runs a test on the embedded store and on the real server."""
    if request.param == "embedded":
        yield request.getfixturevalue("embedded_store")
    else:
        yield request.getfixturevalue("server_store")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
