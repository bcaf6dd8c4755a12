"""Single points in this process against PySCF called directly, and against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.units import Bohr, Hartree

from dft import DFTFailure, DFTResult, DFTSettings, single_point
from tests.dft.helpers import pyscf_reference, small_molecule

SETTINGS = DFTSettings(threads=1, time_limit=None)


def run(atoms: Atoms, settings: DFTSettings = SETTINGS):
    return single_point(atoms, settings, isolate=False)


@pytest.mark.parametrize("name", ["H2O", "CH4", "NH3", "HF", "LiH"])
def test_energy_and_forces_equal_pyscf_called_directly(name):
    atoms = small_molecule(name)
    result = run(atoms)
    assert isinstance(result, DFTResult), getattr(result, "reason", "")
    e_ref, gradient_ref, mol = pyscf_reference(atoms)
    assert abs(result.energy / Hartree - e_ref) < 1e-6
    np.testing.assert_allclose(result.forces, -gradient_ref * Hartree / Bohr, atol=1e-4)
    info = result.info
    assert info["converged"] is True and info["rung"] == "initial" and info["scf_cycles"] > 0
    assert info["device"] == "cpu" and info["versions"]["pyscf"]
    assert info["theory_key"] == SETTINGS.theory_key() == result.theory_key
    assert (info["charge"], info["spin"], info["unrestricted"]) == (0, 0, False)
    assert abs(sum(info["mulliken_charges"])) < 1e-6  # neutral
    assert len(info["dipole_eA"]) == 3 and info["wall_time_s"] > 0
    assert result.stress is None
    assert atoms.calc is None  # the input frame is untouched


def test_forces_are_the_gradient_of_the_energy():
    ammonia = small_molecule("NH3")
    result = run(ammonia)
    h = 1e-3  # Å
    for axis in range(3):
        energies = []
        for step in (h, -h):
            displaced = ammonia.copy()
            displaced.positions[1, axis] += step
            energies.append(run(displaced).energy)
        finite_difference = -(energies[0] - energies[1]) / (2 * h)
        # Without the grid-weight response the analytic force misses ~1e-4 eV/Å.
        assert abs(result.forces[1, axis] - finite_difference) < 5e-4


def test_grid_response_makes_forces_exact_and_translation_invariant():
    settings = DFTSettings(threads=1, time_limit=None, grid_response=True, conv_tol=1e-12)
    molecule = small_molecule("HF")
    result = run(molecule, settings)
    h = 3e-4  # small: the stiff H-F bond makes the O(h²) error of larger steps ~1e-4 eV/Å
    plus, minus = molecule.copy(), molecule.copy()
    plus.positions[1, 2] += h
    minus.positions[1, 2] -= h
    finite_difference = -(run(plus, settings).energy - run(minus, settings).energy) / (2 * h)
    assert abs(result.forces[1, 2] - finite_difference) < 2e-5
    assert np.abs(result.forces.sum(axis=0)).max() < 1e-6


def test_odd_electron_frame_is_an_unrestricted_doublet():
    radical = small_molecule("OH")
    result = run(radical)
    assert isinstance(result, DFTResult)
    assert (result.info["spin"], result.info["multiplicity"], result.info["unrestricted"]) == (1, 2, True)
    e_ref, gradient_ref, _ = pyscf_reference(radical, spin=1)
    assert abs(result.energy / Hartree - e_ref) < 1e-6
    np.testing.assert_allclose(result.forces, -gradient_ref * Hartree / Bohr, atol=1e-4)


def test_charged_frame_from_info():
    cation = small_molecule("H2O")
    cation.info["charge"] = 1
    result = run(cation, DFTSettings(threads=1, time_limit=None, spin_policy="from_info"))
    assert (result.info["charge"], result.info["spin"], result.info["spin_source"]) == (1, 1, "atoms.info")
    e_ref, _, _ = pyscf_reference(cation, spin=1, charge=1)
    assert abs(result.energy / Hartree - e_ref) < 1e-6
    assert abs(sum(result.info["mulliken_charges"]) - 1) < 1e-6


def test_transition_metal_beyond_krypton_uses_the_def2_ecp():
    silver_hydride = small_molecule("AgH")
    result = run(silver_hydride)
    assert isinstance(result, DFTResult), getattr(result, "reason", "")
    # 19 valence electrons of Ag outside the 28-electron def2 core, plus H.
    assert result.info["n_electrons_explicit"] == 20
    e_ref, gradient_ref, mol = pyscf_reference(silver_hydride)
    assert mol.nelectron == 20
    assert abs(result.energy / Hartree - e_ref) < 1e-6
    np.testing.assert_allclose(result.forces, -gradient_ref * Hartree / Bohr, atol=1e-4)


def stretched_water() -> Atoms:
    return Atoms("OH2", positions=[[0, 0, 0], [2.0, 0, 0], [-0.5, 1.94, 0]])


def test_hard_frame_climbs_the_ladder_to_a_converged_label():
    settings = DFTSettings(threads=1, time_limit=None, max_cycle=10, spin_policy="lowest")
    result = run(stretched_water(), settings)
    assert isinstance(result, DFTResult), getattr(result, "reason", "")
    attempts = result.info["attempts"]
    assert [a["rung"] for a in attempts[:3]] == ["initial", "damping", "guess"]
    assert all(not a["converged"] for a in attempts[:-1]) and attempts[-1]["converged"]
    assert result.info["rung"] == attempts[-1]["rung"] != "initial"
    assert attempts[1]["damp"] > 0 and attempts[1]["level_shift"] > 0 and attempts[2]["init_guess"] == "atom"
    # The rescued label is the same SCF solution that an unhurried SCF finds.
    e_ref, gradient_ref, _ = pyscf_reference(stretched_water())
    assert abs(result.energy / Hartree - e_ref) < 1e-6
    np.testing.assert_allclose(result.forces, -gradient_ref * Hartree / Bohr, atol=2e-4)


def test_frame_that_never_converges_is_a_failure_with_its_attempts():
    settings = DFTSettings(threads=1, time_limit=None, max_cycle=2, ladder=("damping", "guess"), spin_policy="lowest")
    outcome = run(stretched_water(), settings)
    assert isinstance(outcome, DFTFailure)
    assert outcome.kind == "unconverged" and "did not converge after 3 attempts" in outcome.reason
    assert [a["rung"] for a in outcome.attempts] == ["initial", "damping", "guess"]
    assert all(a["converged"] is False and a["cycles"] == 2 for a in outcome.attempts)
    assert outcome.theory_key == settings.theory_key()
    assert not hasattr(outcome, "energy")  # an unconverged energy is never a label


def test_newton_rung_alone():
    settings = DFTSettings(threads=1, time_limit=None, max_cycle=3, ladder=("newton",), spin_policy="lowest")
    result = run(small_molecule("H2O"), settings)
    assert isinstance(result, DFTResult)
    assert [a["rung"] for a in result.info["attempts"]] == ["initial", "newton"]
    assert result.info["attempts"][1]["solver"] == "newton"
    e_ref, _, _ = pyscf_reference(small_molecule("H2O"))
    assert abs(result.energy / Hartree - e_ref) < 1e-6


def test_smeared_energy_is_the_free_energy_the_forces_derive_from():
    # A wide smearing so that the entropy term is large enough to tell E and E - σS apart.
    settings = DFTSettings(threads=1, time_limit=None, always_smear=True, smearing_sigma=1.5, conv_tol=1e-11)
    water = small_molecule("H2O")
    result = run(water, settings)
    assert result.info["smearing_used"] and result.info["entropy"] > 0.1
    h = 1e-3
    plus, minus = water.copy(), water.copy()
    plus.positions[1, 1] += h
    minus.positions[1, 1] -= h
    r_plus, r_minus = run(plus, settings), run(minus, settings)
    fd_free = -(r_plus.energy - r_minus.energy) / (2 * h)
    fd_total = -(r_plus.info["e_tot_ev"] - r_minus.info["e_tot_ev"]) / (2 * h)
    assert abs(result.forces[1, 1] - fd_free) < 5e-4
    assert abs(result.forces[1, 1] - fd_total) > 20 * 5e-4
