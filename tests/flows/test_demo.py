"""The README's main command, as a user runs it: no database, no Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_runs_a_real_generation_on_a_fresh_setup(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    workdir = tmp_path / "demo"  # does not exist yet, like on a fresh machine
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--generations", "1", "--workdir", str(workdir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generation 0: completed" in result.stdout
    assert "cold start" in result.stdout
    snapshots = list((workdir / "snapshots").glob("*.h5"))
    assert len(snapshots) == 1
    with h5py.File(snapshots[0]) as f:
        labelled = int(f.attrs["n_frames"])
    assert labelled > 0 and f"labelled {labelled}" in result.stdout
    assert list((workdir / "reports").glob("*.html"))
    assert (workdir / ".prefect").is_dir()  # Prefect's temporary server kept its state here
