"""The real ``selfplay`` entry point, run as a subprocess."""

import os
import subprocess
import sys

import ase.io
import h5py
import pytest

from ..store.helpers import emt_dataset


def selfplay(*args, env=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SELFPLAY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300
    )


def test_help_lists_commands():
    result = selfplay("--help")
    assert result.returncode == 0
    for command in ("db", "export"):
        assert command in result.stdout


def test_no_database_configured_is_a_plain_error(tmp_path):
    result = selfplay("status")
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: no MongoDB configured")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_database(tmp_path):
    from ..conftest import free_port

    uri = f"mongodb://me:pw123@127.0.0.1:{free_port()}/x"
    result = selfplay("status", env={"SELFPLAY_MONGODB_URI": uri, "SELFPLAY_DB_TIMEOUT_MS": "500"})
    assert result.returncode == 3
    assert "cannot reach MongoDB" in result.stderr and "pw123" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("db_timeout_ms: soon\n")
    result = selfplay("--config", str(config), "status")
    assert result.returncode == 2
    assert "field 'db_timeout_ms'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.mongo
def test_import_status_export_against_server(server_store, tmp_path):
    env = {"SELFPLAY_MONGODB_URI": server_store}
    good = tmp_path / "good.xyz"
    ase.io.write(good, emt_dataset(4))
    bad = tmp_path / "bad.xyz"
    bad.write_text("")
    result = selfplay("db", "import", str(good), str(bad), env=env)
    assert result.returncode == 2, result.stderr
    assert "4 new labels" in result.stdout
    assert "bad.xyz: file is empty" in result.stdout + result.stderr

    result = selfplay("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["labels"] == 4 and summary["frames"] == 4

    out = tmp_path / "snap.h5"
    result = selfplay("export", "--format", "hdf5", "--out", str(out), "--elements", "Cu,Al", env=env)
    assert result.returncode == 0, result.stderr
    expected = sum(1 for a in emt_dataset(4) if set(a.get_chemical_symbols()) <= {"Cu", "Al"})
    with h5py.File(out) as f:
        assert f.attrs["n_frames"] == expected

    result = selfplay("export", "--format", "xyz", "--out", str(tmp_path / "x"), env=env)
    assert result.returncode == 2 and "unknown export format" in result.stderr
    result = selfplay("export", "--out", str(tmp_path / "y.h5"), "--elements", "Cu,Qq", env=env)
    assert result.returncode == 2 and "unknown element symbol 'Qq'" in result.stderr
