"""`selfplay demo --backend xtb`: generations labelled by GFN2-xTB, one table row each."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest

pytestmark = pytest.mark.slow


def run_demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "demo", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_xtb_demo_prints_a_row_per_generation(tmp_path):
    pytest.importorskip("tblite")
    from flows.commands.generation import DEMO_CONFIGS, TABLE_COLUMNS
    from flows.config import load_config

    workdir = tmp_path / "demo"
    result = run_demo(tmp_path, "--backend", "xtb", "--generations", "2", "--workdir", str(workdir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "GFN2-xTB with tblite" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["gen"])
    assert all(title in lines[header] for title, _ in TABLE_COLUMNS)
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == ["0", "1"]
    cold, trained = rows
    assert cold[1] == "-" and cold[6] == "-"  # cold start: no model, no error yet
    labelled = int(cold[4]) + int(trained[4])
    assert int(trained[1]) == int(cold[4]) > 0  # generation 1 trained on generation 0's labels
    assert float(trained[6]) > 0 and float(trained[7]) > 0  # the model's error on its new labels
    snapshots = sorted((workdir / "snapshots").glob("*.h5"))
    with h5py.File(snapshots[-1]) as f:
        assert int(f.attrs["n_frames"]) == labelled
    assert load_config(DEMO_CONFIGS["xtb"]).dft.backend == "xtb"
    assert not (workdir / ".prefect").exists()  # the xtb demo runs without Prefect by default


def test_unknown_demo_backend_is_one_error_line(tmp_path):
    result = run_demo(tmp_path, "--backend", "vasp", "--workdir", str(tmp_path / "demo"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --backend must be one of pyscf, xtb, not 'vasp'"
