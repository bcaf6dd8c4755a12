"""The xtb kind against tblite called directly, finite differences, keys, failures."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from dft import DFTFailure, DFTResult, XTBSettings, label_frames, single_point
from pipeline.errors import ConfigError, InvalidStructure
from tests.dft.helpers import label_one_after_another, tblite_reference

tblite = pytest.importorskip("tblite.interface")


def water() -> Atoms:
    atoms = molecule("H2O")
    atoms.info.clear()
    atoms.rattle(0.05, seed=3)  # off equilibrium: forces worth comparing
    return atoms


def rocksalt_mgo() -> Atoms:
    """The 8-atom cubic cell, rattled: tblite works at Γ only, which 2-atom cells do not survive."""
    atoms = bulk("MgO", "rocksalt", a=4.25, cubic=True)
    atoms.rattle(0.05, seed=2)
    return atoms


def iron_cluster() -> Atoms:
    """A frame tblite needs about 30 SCF cycles for."""
    return Atoms("Fe4", positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.3, 0], [0, 0, 2.3]])


@pytest.mark.parametrize("method", ["GFN2-xTB", "GFN1-xTB"])
@pytest.mark.parametrize("frame", [water, rocksalt_mgo], ids=["molecule", "cell"])
def test_matches_tblite_called_directly(frame, method):
    atoms = frame()
    settings = XTBSettings(method=method, threads=1, time_limit=None)
    result = single_point(atoms, settings)
    assert isinstance(result, DFTResult), getattr(result, "reason", "")
    energy, forces, stress = tblite_reference(atoms, method)
    assert result.energy == pytest.approx(energy, abs=1e-7)
    np.testing.assert_allclose(result.forces, forces, atol=1e-7)
    if atoms.pbc.all():
        np.testing.assert_allclose(result.stress, stress, atol=1e-9)
        assert np.abs(result.stress).max() > 1e-4  # a strained cell: the comparison means something
    else:
        assert result.stress is None
    info = result.info
    assert info["method"] == method and info["theory_key"] == settings.theory_key() == result.theory_key
    assert info["versions"]["tblite"] and info["electronic_temperature_k"] == 300.0
    assert info["charge"] == 0 and info["uhf"] == 0 and info["rung"] == "initial"
    assert len(info["charges"]) == len(atoms) and abs(sum(info["charges"])) < 1e-6


def _energy(atoms: Atoms, settings: XTBSettings) -> float:
    outcome = single_point(atoms, settings, isolate=False)
    assert outcome.ok, outcome.reason
    return outcome.energy


@pytest.mark.parametrize("frame, method", [(water, "GFN2-xTB"), (rocksalt_mgo, "GFN1-xTB")], ids=["molecule", "cell"])
def test_forces_and_stress_are_derivatives_of_the_energy(frame, method):
    atoms = frame()
    # A tight SCF for clean differences; GFN1 for the cell, whose periodic single point is
    # several times cheaper than GFN2's.
    settings = XTBSettings(method=method, accuracy=0.01, threads=1, time_limit=None)
    result = single_point(atoms, settings, isolate=False)
    h = 1e-4
    for atom, axis in [(0, 2), (1, 0), (len(atoms) - 1, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        numeric = -(_energy(plus, settings) - _energy(minus, settings)) / (2 * h)
        assert result.forces[atom, axis] == pytest.approx(numeric, abs=1e-5)
    if atoms.pbc.all():
        for voigt, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
            if voigt not in (0, 3):
                continue
            strain = np.zeros((3, 3))
            strain[i, j] = strain[j, i] = h if i == j else h / 2
            energies = []
            for sign in (1, -1):
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
                energies.append(_energy(strained, settings))
            numeric = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
            assert result.stress[voigt] == pytest.approx(numeric, abs=2e-6)


def test_key_follows_what_changes_the_number():
    base = XTBSettings()
    assert XTBSettings(method="gfn2").theory_key() == base.theory_key()  # the same method, spelled differently
    for changed in (
        {"method": "GFN1-xTB"},
        {"electronic_temperature": 500.0},
        {"accuracy": 0.1},
        {"charge": 1},
        {"spin_policy": "from_info"},
        {"rescue_temperature": 2000.0},
    ):
        assert XTBSettings(**changed).theory_key() != base.theory_key(), changed
    for unchanged in ({"time_limit": 5.0}, {"threads": 3}, {"max_iter": 40}, {"mixer_damping": 0.2}):
        assert XTBSettings(**unchanged).theory_key() == base.theory_key(), unchanged
    # Without the temperature rung the rescue temperature cannot change a number.
    no_rescue = XTBSettings(ladder=("damping",))
    assert XTBSettings(ladder=("damping",), rescue_temperature=2000.0).theory_key() == no_rescue.theory_key()
    assert len(base.theory_key()) == 16 and int(base.theory_key(), 16) >= 0


def test_settings_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="unknown xTB method 'GFN3'"):
        XTBSettings(method="GFN3")
    with pytest.raises(ValueError, match="count it twice"):
        XTBSettings(dispersion="d4")
    with pytest.raises(InvalidStructure, match="partially periodic"):
        XTBSettings().plan(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=[True, False, False]))
    with pytest.raises(InvalidStructure, match="impossible"):
        XTBSettings(spin_policy="from_info").plan(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], info={"spin": 1}))


def test_charge_and_spin_from_info_reach_tblite():
    hydroxide = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"charge": -1, "spin": 0})
    radical = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    settings = XTBSettings(spin_policy="from_info", threads=1, time_limit=None)
    anion = single_point(hydroxide, settings)
    doublet = single_point(radical, settings)  # no info: odd electron count, one unpaired
    assert (anion.info["charge"], anion.info["uhf"]) == (-1, 0)
    assert (doublet.info["charge"], doublet.info["uhf"]) == (0, 1)
    assert anion.energy == pytest.approx(tblite_reference(hydroxide, "GFN2-xTB", charge=-1)[0], abs=1e-7)
    assert doublet.energy == pytest.approx(tblite_reference(radical, "GFN2-xTB", uhf=1)[0], abs=1e-7)


def test_unconverged_scf_is_a_recorded_failure_and_the_batch_goes_on():
    # H2 converges in 3 cycles, Fe4 needs 30 to 60: 4 cycles, then 16 damped ones, leave it unconverged.
    hydrogen = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    settings = XTBSettings(max_iter=4, ladder=("damping",), threads=1, time_limit=60)
    outcomes = dict(label_frames([iron_cluster(), hydrogen], settings, workers=2, progress=False))
    failure, result = outcomes[0], outcomes[1]
    assert isinstance(failure, DFTFailure) and failure.kind == "unconverged"
    assert [a["rung"] for a in failure.attempts] == ["initial", "damping"]
    assert [a["max_iter"] for a in failure.attempts] == [4, 16]
    assert failure.attempts[1]["mixer_damping"] < failure.attempts[0]["mixer_damping"]
    assert all(not a["converged"] and "not converged" in a["error"] for a in failure.attempts)
    assert failure.theory_key == settings.theory_key()
    assert isinstance(result, DFTResult) and result.info["threads"] == 1
    assert result.energy == pytest.approx(tblite_reference(hydrogen, "GFN2-xTB")[0], abs=1e-7)


def test_the_rescue_ladder_converges_what_the_first_attempt_cannot():
    settings = XTBSettings(max_iter=20, threads=1, time_limit=None)  # Fe4 needs 30-60 cycles; the damping rung 80
    result = single_point(iron_cluster(), settings)
    assert isinstance(result, DFTResult), result.reason
    attempts = result.info["attempts"]
    assert attempts[0]["rung"] == "initial" and not attempts[0]["converged"]
    assert attempts[-1]["converged"] and result.info["rung"] == attempts[-1]["rung"] != "initial"
    # The rescued number is tblite's at the rung's parameters (the same temperature here).
    assert result.energy == pytest.approx(tblite_reference(iron_cluster(), "GFN2-xTB")[0], abs=1e-6)


def test_missing_tblite_is_a_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tblite(name, *args, **kwargs):
        if name.startswith("tblite"):
            raise ImportError("No module named 'tblite'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tblite)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[xtb\]'"):
        XTBSettings().check()


def test_one_worker_labels_frame_after_frame_and_a_timed_out_one_is_replaced():
    """xTB frames reuse their worker process; the time limit still kills it, and the next
    frame gets a fresh one."""
    hydrogen = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    slow_cell = rocksalt_mgo()  # periodic GFN2-xTB: seconds, far over the limit below
    settings = XTBSettings(threads=1, time_limit=0.3)
    outcomes, spawned = label_one_after_another(settings, [hydrogen, water(), slow_cell, hydrogen])
    assert [outcome.ok or outcome.kind for outcome in outcomes] == [True, True, "timeout", True]
    # the second frame ran in the first frame's worker; the timed-out one was killed, not reused
    assert spawned == [1, 1, 1, 2]
    assert outcomes[3].energy == pytest.approx(outcomes[0].energy, abs=1e-9)
