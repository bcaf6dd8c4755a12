"""The ``ase`` labeller kind (dft/ase_calculator.py) against ASE calculators called directly."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron

from dft.ase_calculator import (
    NON_THEORY_KWARGS,
    ASESettings,
    convergence_problem,
    key_kwargs,
    takes_directory,
)
from dft.results import DFTFailure, DFTResult
from pipeline.errors import ConfigError
from tests.dft.helpers import label_one_after_another

EMT_PATH = "ase.calculators.emt:EMT"
TEST_CALCULATORS = "tests.dft.ase_test_calculators"


def alloy_cluster() -> Atoms:
    """A rattled 13-atom Cu/Al/Ni icosahedron (open boundaries)."""
    atoms = Icosahedron("Cu", noshells=2)
    atoms.set_chemical_symbols(["Cu"] * 7 + ["Al"] * 3 + ["Ni"] * 3)
    atoms.rattle(0.08, seed=3)
    atoms.center(vacuum=5.0)
    atoms.pbc = False
    return atoms


def alloy_cell() -> Atoms:
    """A rattled, sheared 8-atom fcc Cu/Ni/Al cell (periodic, with non-zero shear stress)."""
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 1, 1))
    atoms.set_chemical_symbols(["Cu", "Ni", "Cu", "Al", "Cu", "Ni", "Cu", "Cu"])
    shear = np.array([[1.01, 0.02, 0.0], [0.0, 0.99, 0.03], [0.01, 0.0, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.05, seed=5)
    return atoms


def emt_directly(atoms: Atoms, **kwargs):
    frame = atoms.copy()
    frame.calc = EMT(**kwargs)
    stress = frame.get_stress() if frame.pbc.all() else None
    return frame.get_potential_energy(), frame.get_forces(), stress


def label(settings: ASESettings, atoms: Atoms, **kwargs):
    return settings.compute(atoms, settings.plan(atoms), **kwargs)


@pytest.mark.parametrize("make_frame", [alloy_cluster, alloy_cell], ids=["cluster", "periodic"])
def test_emt_through_ase_settings_is_emt(make_frame):
    atoms = make_frame()
    settings = ASESettings(calculator=EMT_PATH, theory="EMT")
    settings.check()
    result = label(settings, atoms)
    assert isinstance(result, DFTResult), getattr(result, "reason", None)
    energy, forces, stress = emt_directly(atoms)
    assert result.energy == energy
    np.testing.assert_array_equal(result.forces, forces)
    if atoms.pbc.all():
        np.testing.assert_array_equal(result.stress, stress)
        assert np.abs(stress[3:]).max() > 1e-4  # the frame probes the shear components
    else:
        assert result.stress is None
    assert result.theory_key == settings.theory_key()
    assert result.info["calculator"] == EMT_PATH
    assert result.info["versions"]["ase"]
    assert result.info["attempts"][0]["converged"] is True
    assert "directory" not in result.info  # EMT writes nothing: no working directory


def test_forces_are_minus_the_gradient_of_the_stored_energy():
    atoms = alloy_cluster()
    settings = ASESettings(calculator=EMT_PATH, theory="EMT")
    forces = label(settings, atoms).forces
    step = 1e-4
    for atom, axis in [(0, 0), (4, 1), (11, 2)]:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * step
            energies.append(label(settings, displaced).energy)
        assert -(energies[0] - energies[1]) / (2 * step) == pytest.approx(forces[atom, axis], abs=1e-6)


def test_theory_key_follows_what_changes_the_number():
    atoms = alloy_cluster()
    base = ASESettings(calculator=EMT_PATH, theory="EMT")
    wider = ASESettings(calculator=EMT_PATH, theory="EMT", kwargs={"asap_cutoff": True})
    # The premise: this kwarg changes the number.
    assert emt_directly(atoms, asap_cutoff=True)[0] != emt_directly(atoms)[0]
    assert wider.theory_key() != base.theory_key()
    assert ASESettings(calculator=EMT_PATH, theory="EMT-2").theory_key() != base.theory_key()
    assert ASESettings(calculator="ase.calculators.lj:LennardJones", theory="EMT").theory_key() != base.theory_key()
    # Execution settings do not.
    for execution in ({"time_limit": 5.0}, {"time_limit": None}, {"threads": 3}, {"keep_directories": "always"}):
        assert ASESettings(calculator=EMT_PATH, theory="EMT", **execution).theory_key() == base.theory_key()
    assert ASESettings(calculator="ase.calculators.emt.EMT", theory=" EMT ").theory_key() == base.theory_key()
    assert len(base.theory_key()) == 16 and int(base.theory_key(), 16) >= 0


def test_execution_kwargs_stay_out_of_the_key():
    incar = {"xc": "PBE", "encut": 520, "ediff": 1e-6, "ispin": 2, "magmom": [1.0, 0.0]}
    vasp = ASESettings(calculator="ase.calculators.vasp:Vasp", theory="PBE/520", kwargs=incar)
    parallel = ASESettings(
        calculator="ase.calculators.vasp:Vasp",
        theory="PBE/520",
        kwargs={**incar, "ncore": 4, "kpar": 2, "command": "mpirun -np 8 vasp_std", "directory": "x", "nelm": 200},
    )
    assert parallel.theory_key() == vasp.theory_key()
    for changed in ({"encut": 600}, {"ispin": 1}, {"magmom": [2.0, 0.0]}):
        other = ASESettings(calculator="ase.calculators.vasp:Vasp", theory="PBE/520", kwargs={**incar, **changed})
        assert other.theory_key() != vasp.theory_key(), changed
    # Nested namelists (Quantum ESPRESSO's input_data): paths and verbosity go, physics stays.
    control = {"pseudo_dir": "/pp", "outdir": "/tmp", "tprnfor": True}
    qe = {"input_data": {"control": control, "system": {"ecutwfc": 60}}}
    assert key_kwargs(qe) == {"input_data": {"control": {}, "system": {"ecutwfc": 60}}}
    assert {"directory", "command", "ncore", "npar", "kpar", "pseudo_dir"} <= NON_THEORY_KWARGS
    # kwargs_in_key: exactly the named ones.
    chosen = ASESettings(
        calculator="ase.calculators.vasp:Vasp", theory="PBE/520", kwargs=incar, kwargs_in_key=["encut"]
    )
    assert chosen.theory_spec()["kwargs"] == {"encut": 520}
    with pytest.raises(ValueError, match="kwargs_in_key names lreal"):
        ASESettings(calculator="ase.calculators.vasp:Vasp", theory="t", kwargs=incar, kwargs_in_key=["lreal"])


def test_a_calculator_that_raises_is_a_recorded_failure():
    settings = ASESettings(
        calculator=f"{TEST_CALCULATORS}:RaisingCalculator", theory="broken", kwargs={"message": "SCF diverged badly"}
    )
    settings.check()
    seen = []
    outcome = label(settings, alloy_cluster(), on_attempt=seen.append)
    assert isinstance(outcome, DFTFailure)
    assert outcome.kind == "error"
    assert "RuntimeError: SCF diverged badly" in outcome.reason
    assert outcome.theory_key == settings.theory_key()
    assert seen and seen[0]["error"].startswith("RuntimeError") and outcome.attempts == seen


@pytest.mark.parametrize("converged", [True, False])
def test_a_converged_flag_that_is_false_is_an_unconverged_failure(converged):
    atoms = alloy_cell()
    settings = ASESettings(
        calculator=f"{TEST_CALCULATORS}:FlaggedEMT", theory="EMT", kwargs={"report_converged": converged}
    )
    outcome = label(settings, atoms)
    if converged:
        energy, forces, stress = emt_directly(atoms)
        assert outcome.ok and outcome.energy == energy
        np.testing.assert_array_equal(outcome.stress, stress)
    else:
        assert isinstance(outcome, DFTFailure) and outcome.kind == "unconverged"
        assert "converged=False" in outcome.reason


def test_output_file_convergence_checks(tmp_path):
    """The table's checks read the codes' own messages from their output files."""
    from ase.calculators.espresso import Espresso, EspressoProfile
    from ase.calculators.orca import ORCA, OrcaProfile

    espresso = Espresso(profile=EspressoProfile(command="pw.x", pseudo_dir=str(tmp_path)), directory=tmp_path)
    output = tmp_path / "espresso.pwo"
    output.write_text(
        "!    total energy              =     -15.8 Ry\n     convergence has been achieved in   8 iterations\n"
    )
    assert convergence_problem(espresso, tmp_path) is None
    output.write_text("     convergence NOT achieved after 100 iterations: stopping\n")
    assert "convergence NOT achieved" in convergence_problem(espresso, tmp_path)

    orca = ORCA(profile=OrcaProfile(command="orca"), directory=tmp_path)
    (tmp_path / "orca.out").write_text("FINAL SINGLE POINT ENERGY       -76.3\n")
    assert convergence_problem(orca, tmp_path) is None
    (tmp_path / "orca.out").write_text("                        SCF NOT CONVERGED AFTER 125 CYCLES\n")
    assert "SCF NOT CONVERGED" in convergence_problem(orca, tmp_path)


def test_a_file_writing_calculator_runs_in_the_frame_directory(tmp_path):
    """A separate program reading and writing files in its directory, as VASP does."""
    atoms = alloy_cell()
    folder = tmp_path / "frame"
    folder.mkdir()
    (folder / "WAVECAR").write_text("left by a killed run")
    settings = ASESettings(calculator=f"{TEST_CALCULATORS}:EMTProgram", theory="EMT", keep_directories="always")
    assert settings.uses_workdir and not ASESettings(calculator=EMT_PATH, theory="EMT").uses_workdir
    result = label(settings, atoms, workdir=folder)
    assert isinstance(result, DFTResult), getattr(result, "reason", None)
    energy, forces, stress = emt_directly(atoms)
    assert result.energy == pytest.approx(energy, abs=1e-12)
    np.testing.assert_allclose(result.forces, forces, atol=1e-12)
    np.testing.assert_allclose(result.stress, stress, atol=1e-12)
    assert result.info["directory"] == str(folder.resolve())
    assert sorted(p.name for p in folder.iterdir()) == ["frame.json", "results.json"]  # no stale WAVECAR
    # Kept only for failures by default: a success leaves nothing behind.
    default = ASESettings(calculator=f"{TEST_CALCULATORS}:EMTProgram", theory="EMT")
    assert label(default, atoms, workdir=folder).ok
    assert not folder.exists()


def test_directory_goes_to_calculators_that_write_files():
    from ase.calculators.cp2k import CP2K
    from ase.calculators.espresso import Espresso
    from ase.calculators.vasp import Vasp

    assert all(takes_directory(cls) for cls in (Vasp, CP2K, Espresso))
    assert not takes_directory(EMT)


def test_check_stops_bad_settings_with_one_line():
    cases = {
        "does not import": ASESettings(calculator="no_such_package.calculators:Calc", theory="t"),
        "has no EMTT": ASESettings(calculator="ase.calculators.emt:EMTT", theory="t"),
        "is not an ASE calculator": ASESettings(calculator="ase.atoms:Atoms", theory="t"),
        "unknown kwargs asap_cutof": ASESettings(calculator=EMT_PATH, theory="t", kwargs={"asap_cutof": True}),
        "cannot be built with its kwargs": ASESettings(
            calculator=f"{TEST_CALCULATORS}:StrictCalculator", theory="t", kwargs={"scael": 2.0}
        ),
        "needs a theory name": ASESettings(calculator=EMT_PATH),
        "dispersion_functional": ASESettings(calculator=EMT_PATH, theory="t", dispersion="d3bj"),
    }
    for expected, settings in cases.items():
        with pytest.raises(ConfigError) as caught:
            settings.check()
        assert expected in str(caught.value)
        assert "\n" not in str(caught.value)
    ASESettings(calculator=f"{TEST_CALCULATORS}:StrictCalculator", theory="t", kwargs={"scale": 2.0}).check()
    with pytest.raises(ValueError, match="module:Class"):
        ASESettings(calculator="EMT", theory="t")
    with pytest.raises(ValueError, match="JSON"):
        ASESettings(calculator=EMT_PATH, theory="t", kwargs={"profile": object()})


def test_check_wants_the_vasp_command_and_pseudopotentials(monkeypatch, tmp_path):
    for variable in ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH"):
        monkeypatch.delenv(variable, raising=False)
    settings = ASESettings(calculator="ase.calculators.vasp:Vasp", theory="PBE", kwargs={"xc": "PBE", "encut": 520})
    with pytest.raises(ConfigError, match="ASE_VASP_COMMAND"):
        settings.check()
    monkeypatch.setenv("ASE_VASP_COMMAND", "vasp_std")
    with pytest.raises(ConfigError, match="VASP_PP_PATH"):
        settings.check()
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path))
    settings.check()


def test_check_builds_but_does_not_run_the_calculator():
    settings = ASESettings(calculator=f"{TEST_CALCULATORS}:SlowEMT", theory="slow", kwargs={"seconds": 600})
    start = time.perf_counter()
    settings.check()
    assert time.perf_counter() - start < 5


def test_slow_emt_in_process_is_emt():
    atoms = alloy_cluster()
    settings = ASESettings(calculator=f"{TEST_CALCULATORS}:SlowEMT", theory="slow", kwargs={"seconds": 0.2})
    result = label(settings, atoms)
    assert result.ok and result.energy == emt_directly(atoms)[0]
    assert result.info["calculate_time_s"] >= 0.2


def test_a_calculator_that_never_returns_times_out_in_the_runner():
    """The time limit is the runner's: the worker is killed, the frame becomes a timeout failure."""
    from dft.runner import single_point

    settings = ASESettings(
        calculator=f"{TEST_CALCULATORS}:SlowEMT", theory="slow", kwargs={"seconds": 600}, time_limit=1.0
    )
    start = time.perf_counter()
    outcome = single_point(alloy_cluster(), settings, isolate=True)
    assert isinstance(outcome, DFTFailure)
    assert outcome.kind == "timeout"
    assert outcome.theory_key == settings.theory_key()
    assert time.perf_counter() - start < 60


def test_emt_through_the_runner_worker_is_emt():
    from dft.runner import single_point

    atoms = alloy_cell()
    result = single_point(atoms, ASESettings(calculator=EMT_PATH, theory="EMT", time_limit=60), isolate=True)
    assert isinstance(result, DFTResult), getattr(result, "reason", None)
    energy, forces, stress = emt_directly(atoms)
    assert result.energy == energy
    np.testing.assert_array_equal(result.forces, forces)
    np.testing.assert_array_equal(result.stress, stress)


def test_a_timeout_also_ends_the_program_the_calculator_started(tmp_path):
    """A code the calculator runs as its own process (mpirun vasp) must not outlive the
    frame's time limit: killing the worker alone would leave it computing."""
    import os
    import signal

    from dft.runner import single_point

    settings = ASESettings(calculator=f"{TEST_CALCULATORS}:HangingProgram", theory="hang", time_limit=1.0)
    outcome = single_point(alloy_cluster(), settings, isolate=True, workdir=tmp_path)
    assert isinstance(outcome, DFTFailure) and outcome.kind == "timeout"
    pid_files = list(tmp_path.rglob("program.pid"))
    assert len(pid_files) == 1, "the program never started"
    pid = int(pid_files[0].read_text())
    deadline = time.monotonic() + 10
    alive = True
    while alive and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            alive = False
    if alive:
        os.kill(pid, signal.SIGKILL)  # the program this test started; do not leave it running
    assert not alive, "the calculator's program survived the timeout of its worker"


def test_in_process_calculators_reuse_their_worker_and_file_codes_do_not():
    """EMT frames run one after another in one worker (start-up costs far more than EMT);
    a timed-out worker is killed and replaced; a file-writing code keeps a fresh one."""
    assert ASESettings(calculator=EMT_PATH, theory="EMT").reuse_worker
    assert not ASESettings(calculator=EMT_PATH, theory="EMT", fresh_worker=True).reuse_worker
    assert not ASESettings(calculator=f"{TEST_CALCULATORS}:EMTProgram", theory="p").reuse_worker
    assert ASESettings(calculator=f"{TEST_CALCULATORS}:EMTProgram", theory="p", fresh_worker=False).reuse_worker
    # the worker choice is how the number is computed, not which number: the key ignores it
    assert (
        ASESettings(calculator=EMT_PATH, theory="EMT", fresh_worker=True).theory_key()
        == ASESettings(calculator=EMT_PATH, theory="EMT").theory_key()
    )

    # the 13-atom cluster hangs, the 8-atom cells are EMT at once
    frames = [alloy_cell(), alloy_cell(), alloy_cluster(), alloy_cell()]
    settings = ASESettings(calculator=f"{TEST_CALCULATORS}:SlowForLargeEMT", theory="slow", time_limit=3.0)
    outcomes, spawned = label_one_after_another(settings, frames)
    assert [outcome.ok or outcome.kind for outcome in outcomes] == [True, True, "timeout", True]
    # the second frame ran in the first frame's worker; the timed-out one was killed, not reused
    assert spawned == [1, 1, 1, 2]
    energy, forces, _ = emt_directly(frames[3])
    assert outcomes[3].energy == energy
    np.testing.assert_array_equal(outcomes[3].forces, forces)
