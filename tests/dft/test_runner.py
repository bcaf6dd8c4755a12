"""The batch API: worker processes, the time limit, resuming, completion order."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Hartree

from dft import DFTFailure, DFTResult, DFTSettings, label_frames, single_point
from tests.dft.helpers import pyscf_reference, small_molecule


def hydrogen() -> Atoms:
    return Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])


def test_time_limit_turns_a_slow_frame_into_a_failure_and_the_batch_goes_on():
    # Benzene with def2-SVP takes far more than 3 s of SCF on one thread; H2 and LiH a fraction.
    frames = [hydrogen(), molecule("C6H6"), small_molecule("LiH"), small_molecule("H2O")]
    before = [f.positions.copy() for f in frames]
    # One state per frame: this is about the time limit, not the state search.
    settings = DFTSettings(threads=1, time_limit=3, spin_policy="lowest")
    skipped = []

    def already_done(atoms):
        done = atoms.get_chemical_formula() == "H2O"
        skipped.append(done)
        return done

    outcomes = list(label_frames(frames, settings, skip=already_done, workers=2, progress=False))
    by_index = dict(outcomes)
    assert sorted(by_index) == [0, 1, 2] and sum(skipped) == 1  # H2O was skipped (resume)
    # Completion order: the killed benzene frame arrives after H2, which ran beside it.
    assert [i for i, _ in outcomes].index(0) < [i for i, _ in outcomes].index(1)
    slow = by_index[1]
    assert isinstance(slow, DFTFailure) and slow.kind == "timeout"
    assert "time limit of 3 s" in slow.reason and slow.theory_key == settings.theory_key()
    for index in (0, 2):  # H2, LiH
        result = by_index[index]
        assert isinstance(result, DFTResult), getattr(result, "reason", "")
        e_ref, gradient_ref, _ = pyscf_reference(frames[index])
        assert abs(result.energy / Hartree - e_ref) < 1e-6
    for frame, positions in zip(frames, before):
        assert frame.calc is None and np.array_equal(frame.positions, positions)


def test_isolated_single_point_matches_the_in_process_one():
    settings = DFTSettings(threads=1, time_limit=120)
    isolated = single_point(hydrogen(), settings)  # time_limit set: runs in a worker process
    in_process = single_point(hydrogen(), settings, isolate=False)
    assert isinstance(isolated, DFTResult)
    assert abs(isolated.energy - in_process.energy) < 1e-8
    np.testing.assert_allclose(isolated.forces, in_process.forces, atol=1e-8)
    assert isolated.info["threads"] == 1


def test_failures_inside_a_worker_come_back_with_their_attempts():
    settings = DFTSettings(threads=1, time_limit=120, max_cycle=1, ladder=("damping",), spin_policy="lowest")
    outcome = single_point(small_molecule("LiH"), settings)
    assert isinstance(outcome, DFTFailure) and outcome.kind == "unconverged"
    assert [a["rung"] for a in outcome.attempts] == ["initial", "damping"]


def test_labelled_frame_carries_a_single_point_calculator():
    settings = DFTSettings(threads=1, time_limit=None)
    water = small_molecule("H2O")
    result = single_point(water, settings, isolate=False)
    labelled = result.to_atoms(water)
    assert labelled is not water and water.calc is None
    assert labelled.get_potential_energy() == pytest.approx(result.energy)
    np.testing.assert_allclose(labelled.get_forces(), result.forces)


def test_worker_dies_with_the_process_that_started_it(tmp_path):
    """Killing the labelling process (a crashed flow) takes its DFT workers with it."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from ase.build import molecule
            from dft import DFTSettings, label_frames
            frames = [molecule("CH3CH2OH")]
            settings = DFTSettings(basis="def2-TZVP", time_limit=600, threads=1)
            for _ in label_frames(frames, settings, progress=False):
                pass
            """
        )
    )
    driver = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and not workers:
        time.sleep(0.2)
        out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
        workers = [
            int(line.split()[0])
            for line in out.splitlines()
            if "dft._worker" in line and int(line.split()[1]) == driver.pid
        ]
    assert workers, "no worker process was started"

    def cpu_seconds(pid):
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # Kill only once the worker is inside the SCF (well past reading its job and imports).
    while cpu_seconds(workers[0]) < 8:
        assert time.time() < deadline + 120, "the worker never got to work"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    # At once, not when the worker next writes to its closed result pipe (after an SCF
    # that can take hours).
    deadline = time.time() + 3
    while time.time() < deadline:
        try:
            os.kill(workers[0], 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(workers[0], signal.SIGKILL)
    raise AssertionError("the DFT worker outlived its parent")
