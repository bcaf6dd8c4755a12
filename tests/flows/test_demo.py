"""The README's main command, as a user runs it: no database, no Prefect server.

Run as a first run on a busy laptop: a fresh Prefect home (the temporary server migrates a
new database before it answers) while other processes keep every CPU busy, which is when
Prefect's own 20 s wait for its temporary server ran out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import h5py
import pytest

pytestmark = pytest.mark.slow


@contextmanager
def busy_cpus():
    """One busy loop per CPU this process may use, for as long as the block runs."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(len(os.sched_getaffinity(0)))]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@pytest.mark.timeout(1800)  # minutes of PySCF at a fraction of the CPUs
def selfplay_script() -> str:
    """The console script ``pip install -e .`` put beside this interpreter."""
    script = Path(sys.executable).with_name("selfplay")
    if not script.exists():
        pytest.fail(f"{script} is missing: install the project (pip install -e '.[dev]')")
    return str(script)


def test_demo_runs_a_real_generation_on_a_fresh_setup_of_a_busy_machine(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    # Half the demo's DFT (the configuration's own override by environment): the busy
    # CPUs make every single point several times slower, and what is tested is the start.
    env["SELFPLAY_SELECTION__MAX_SELECTED"] = "4"
    workdir = tmp_path / "demo"  # does not exist yet, like on a fresh machine
    with busy_cpus():
        result = subprocess.run(
            # The README's command: the installed `selfplay` script (one generation, not two,
            # to keep the suite short; tests/test_readme_commands.py checks the rest of it).
            [selfplay_script(), "demo", "--generations", "1", "--workdir", str(workdir)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "generation 0: completed" in result.stdout
    assert "cold start" in result.stdout
    snapshots = list((workdir / "snapshots").glob("*.h5"))
    assert len(snapshots) == 1
    with h5py.File(snapshots[0]) as f:
        labelled = int(f.attrs["n_frames"])
    assert labelled > 0 and f"labelled {labelled}" in result.stdout
    assert list((workdir / "reports").glob("*.html"))
    assert_no_label_above_a_lower_state(snapshots[0])
    # Prefect's temporary server ran from the fresh home: its new database and its log are there.
    assert (workdir / ".prefect" / "prefect.db").is_file()
    assert (workdir / ".prefect" / "temporary-server.log").is_file()


#: Two SCFs that reach the same state agree far better than this (eV).
SAME_STATE_EV = 1e-4


def assert_no_label_above_a_lower_state(snapshot) -> None:
    """Every label of the demo is at least as low as the neighbouring spin states that PySCF,
    called directly at the demo's level of theory (flows/demo.yaml), finds on its frame."""
    from ase.units import Hartree
    from pyscf import dft, gto

    from pipeline.export import read_hdf5

    frames = list(read_hdf5(snapshot))
    assert frames
    for atoms in frames:
        label = atoms.get_potential_energy()
        spin = atoms.info["multiplicity"] - 1
        assert not atoms.info["smeared"]
        for other in (spin - 2, spin, spin + 2):
            if other < 0:
                continue
            mol = gto.M(
                atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                unit="Angstrom",
                basis="6-31g",
                spin=other,
                verbose=0,
            )
            mf = dft.UKS(mol, xc="pbe").density_fit()
            mf.grids.level = 3
            mf.conv_tol = 1e-9
            energy = mf.kernel() * Hartree
            if mf.converged:
                assert label <= energy + SAME_STATE_EV, (atoms.get_chemical_formula(), spin, other, label, energy)
