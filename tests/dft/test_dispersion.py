"""D3(BJ) and D4 corrections (dft/dispersion.py) against the dftd3/dftd4 packages called directly."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from dft.ase_calculator import ASESettings
from dft.dispersion import (
    add_dispersion,
    check_dispersion,
    dispersion_functional,
    dispersion_spec,
    dispersion_terms,
)
from dft.settings import DFTSettings
from pipeline.errors import ConfigError


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.03, seed=2)
    return atoms


def silicon_cell() -> Atoms:
    """A rattled, sheared 8-atom diamond Si cell: every stress component non-zero."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    shear = np.array([[1.02, 0.03, 0.0], [0.0, 0.98, 0.02], [0.01, 0.0, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.05, seed=4)
    return atoms


def boxed_ethanol() -> Atoms:
    """Ethanol in a sheared periodic box wider than the packages' cutoffs (31.8 Å pairs,
    21 Å triples and coordination numbers): a periodic frame whose energy is smooth under
    strain, so finite differences see no pair crossing a cutoff."""
    atoms = ethanol()
    atoms.set_cell([[38.0, 0.0, 0.0], [1.5, 38.5, 0.0], [0.8, -1.1, 39.0]])
    atoms.positions += atoms.cell.array.sum(axis=0) / 2 - atoms.positions.mean(axis=0)
    atoms.pbc = True
    return atoms


def package_directly(atoms: Atoms, method: str, functional: str, charge: float = 0.0):
    """The packages' own ASE calculators, configured only by method name."""
    frame = atoms.copy()
    if method == "d3bj":
        from dftd3.ase import DFTD3

        frame.calc = DFTD3(method=functional, damping="d3bj")
    else:
        from dftd4.ase import DFTD4

        charges = np.zeros(len(frame))
        charges[0] = charge  # DFTD4 takes the total of the initial charges
        frame.set_initial_charges(charges)
        frame.calc = DFTD4(method=functional)
    stress = frame.get_stress() if frame.pbc.all() else None
    return frame.get_potential_energy(), frame.get_forces(), stress


FRAMES = {"molecule": ethanol, "periodic": silicon_cell, "boxed": boxed_ethanol}


@pytest.mark.parametrize("method", ["d3bj", "d4"])
@pytest.mark.parametrize(
    "frame, functional", [("molecule", "pbe"), ("molecule", "r2scan"), ("periodic", "pbe"), ("boxed", "b3lyp")]
)
def test_matches_the_package_called_directly(method, frame, functional):
    atoms = FRAMES[frame]()
    terms = dispersion_terms(atoms, method, functional)
    energy, forces, stress = package_directly(atoms, method, functional)
    assert energy < 0
    assert terms.energy == pytest.approx(energy, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(terms.forces, forces, rtol=1e-10, atol=1e-13)
    if atoms.pbc.all():
        np.testing.assert_allclose(terms.stress, stress, rtol=1e-10, atol=1e-13)
    else:
        assert terms.stress is None


def test_d4_uses_the_charge():
    atoms = ethanol()
    neutral = dispersion_terms(atoms, "d4", "pbe", charge=0)
    cation = dispersion_terms(atoms, "d4", "pbe", charge=1)
    assert cation.energy != neutral.energy
    assert cation.energy == pytest.approx(package_directly(atoms, "d4", "pbe", charge=1)[0], rel=1e-12)


@pytest.mark.parametrize("method", ["d3bj", "d4"])
@pytest.mark.parametrize("frame", ["molecule", "boxed"])
def test_forces_are_minus_the_gradient(method, frame):
    atoms = FRAMES[frame]()
    forces = dispersion_terms(atoms, method, "pbe").forces
    step = 1e-4
    for atom, axis in [(0, 0), (2, 1), (len(atoms) - 1, 2)]:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * step
            energies.append(dispersion_terms(displaced, method, "pbe").energy)
        assert -(energies[0] - energies[1]) / (2 * step) == pytest.approx(forces[atom, axis], abs=1e-8)


@pytest.mark.parametrize("method", ["d3bj", "d4"])
def test_stress_is_the_strain_derivative(method):
    atoms = boxed_ethanol()
    stress = dispersion_terms(atoms, method, "pbe").stress
    volume = atoms.get_volume()
    step = 1e-5

    def strained_energy(strain: np.ndarray) -> float:
        frame = atoms.copy()
        frame.set_cell(frame.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        return dispersion_terms(frame, method, "pbe").energy

    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    numerical = []
    for i, j in voigt:
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = step  # symmetric: an off-diagonal pair counts twice
        difference = strained_energy(strain) - strained_energy(-strain)
        numerical.append(difference / (2 * step * volume) / (1 if i == j else 2))
    assert np.abs(stress).min() > 1e-9  # every component probed (a molecule in a big box: small)
    np.testing.assert_allclose(stress, numerical, rtol=1e-5, atol=1e-12)


def test_unknown_functional_is_one_config_error():
    for method in ("d3bj", "d4"):
        settings = ASESettings(
            calculator="ase.calculators.emt:EMT", theory="t", dispersion=method, dispersion_functional="nosuch-xc"
        )
        with pytest.raises(ConfigError) as caught:
            check_dispersion(settings)
        assert "no damping parameters for functional 'nosuch-xc'" in str(caught.value)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="GGA_X_PBE,GGA_C_PBE|gga_x_pbe,gga_c_pbe"):
        dispersion_spec(DFTSettings(functional="GGA_X_PBE,GGA_C_PBE", dispersion="d4"))


def test_which_functional_each_kind_uses():
    assert dispersion_functional(DFTSettings(functional="PBE0", dispersion="d3bj")) == "pbe0"
    ase = ASESettings(calculator="ase.calculators.emt:EMT", theory="t", dispersion="d4", dispersion_functional="PBE")
    assert dispersion_functional(ase) == "pbe"
    with pytest.raises(ConfigError, match="needs dispersion_functional"):
        dispersion_functional(ASESettings(calculator="ase.calculators.emt:EMT", theory="t", dispersion="d4"))
    with pytest.raises(ConfigError, match="GFN2-xTB already contains D4"):
        dispersion_functional(SimpleNamespace(backend="xtb", dispersion="d4"))


def test_spec_holds_what_changes_the_number():
    def settings(**kwargs):
        return ASESettings(calculator="ase.calculators.emt:EMT", theory="EMT", **kwargs)

    d3 = dispersion_spec(settings(dispersion="d3bj", dispersion_functional="PBE"))
    assert d3["method"] == "d3bj" and d3["functional"] == "pbe" and d3["three_body"] is False
    assert d3["parameters"]["s9"] == 0.0 and set(d3["parameters"]) >= {"s6", "s8", "a1", "a2"}
    d4 = dispersion_spec(settings(dispersion="d4", dispersion_functional="pbe"))
    assert d4["three_body"] is True and d4["model"] == "d4"
    assert dispersion_spec(settings()) is None
    keys = {
        settings().theory_key(),
        settings(dispersion="d3bj", dispersion_functional="pbe").theory_key(),
        settings(dispersion="d3bj", dispersion_functional="b3lyp").theory_key(),
        settings(dispersion="d4", dispersion_functional="pbe").theory_key(),
    }
    assert len(keys) == 4
    assert (
        settings(dispersion="d4", dispersion_functional="PBE").theory_key()
        == settings(dispersion="d4", dispersion_functional="pbe").theory_key()
    )


@pytest.mark.parametrize("method", ["d3bj", "d4"])
def test_added_to_an_emt_label(method):
    """The protocol's path (compute, then the correction) against EMT plus the package, both direct."""
    from dft.labeller import label_in_process

    # A small Cu/Ni cluster in a periodic box: stress from both terms, at the cost of a molecule.
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True)
    atoms.set_chemical_symbols(["Cu", "Ni", "Cu", "Ni"])
    atoms.rattle(0.05, seed=1)
    atoms.set_cell([[36.0, 0.0, 0.0], [1.0, 36.5, 0.0], [0.5, -0.7, 37.0]])
    settings = ASESettings(
        calculator="ase.calculators.emt:EMT", theory="EMT", dispersion=method, dispersion_functional="pbe"
    )
    settings.check()
    result = label_in_process(atoms, settings, settings.plan(atoms))
    assert result.ok, getattr(result, "reason", None)
    frame = atoms.copy()
    frame.calc = EMT()
    energy, forces, stress = package_directly(atoms, method, "pbe")
    assert result.energy == pytest.approx(frame.get_potential_energy() + energy, rel=1e-13)
    np.testing.assert_allclose(result.forces, frame.get_forces() + forces, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(result.stress, frame.get_stress() + stress, rtol=1e-12, atol=1e-13)
    record = result.info["dispersion"]
    assert record["method"] == method and record["functional"] == "pbe"
    assert record["energy_ev"] == pytest.approx(energy, rel=1e-12)
    assert record["version"]
    assert result.info["energy_without_dispersion_ev"] == frame.get_potential_energy()
    assert result.theory_key == settings.theory_key()
    assert result.theory_key != ASESettings(calculator="ase.calculators.emt:EMT", theory="EMT").theory_key()


def test_add_dispersion_without_a_method_returns_the_result_unchanged():
    atoms = ethanol()
    settings = ASESettings(calculator="ase.calculators.emt:EMT", theory="EMT")
    result = settings.compute(atoms, settings.plan(atoms))
    assert add_dispersion(atoms, result, settings) is result
