"""Bad input is refused with one-line errors before any SCF runs."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from dft import DFTSettings, label_frames, single_point
from dft.backend import kpoint_mesh
from dft.validate import electronic_state, plan_frame
from pipeline.errors import ConfigError, InvalidStructure
from tests.dft.helpers import silicon_pair, small_molecule

SETTINGS = DFTSettings(threads=1)


@pytest.fixture
def no_scf(monkeypatch):
    """Fails the test if any SCF (in this process or in a worker) would start."""

    def forbidden(*args, **kwargs):
        raise AssertionError("an SCF was started")

    monkeypatch.setattr("dft.compute._compute_frame", forbidden)
    monkeypatch.setattr("dft.runner._Pool.launch", forbidden)


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_element_missing_from_the_basis(no_scf):
    cerium_hydride = Atoms("CeH", positions=[[0, 0, 0], [0, 0, 2.1]])
    with pytest.raises(InvalidStructure) as err:
        single_point(cerium_hydride, SETTINGS)
    assert "def2-SVP" in one_line(err.value) and "Ce" in str(err.value)


def test_element_missing_from_the_periodic_basis(no_scf):
    iron = Atoms("Fe2", positions=[[0, 0, 0], [1.43, 1.43, 1.43]], cell=np.eye(3) * 2.87, pbc=True)
    with pytest.raises(InvalidStructure, match="gth-szv has no functions for Fe"):
        single_point(iron, DFTSettings(pbc_basis="gth-szv"))
    plan_frame(iron, DFTSettings())  # the MOLOPT-SR default covers Fe


def test_basis_made_for_an_ecp_without_the_ecp(no_scf):
    with pytest.raises(ConfigError, match="def2 ECP"):
        single_point(small_molecule("HI"), DFTSettings(ecp="none"))


def test_pseudopotential_valence_must_match_the_basis(no_scf):
    magnesium = Atoms("Mg", positions=[[0, 0, 0]], cell=np.eye(3) * 3.2, pbc=True)
    with pytest.raises(ConfigError, match="10 valence electrons"):
        plan_frame(magnesium, DFTSettings(pbc_pseudo="gth-pbe-q2"))


def test_overlapping_atoms_and_empty_frames(no_scf):
    with pytest.raises(InvalidStructure, match="overlap"):
        single_point(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.01]]), SETTINGS)
    with pytest.raises(InvalidStructure, match="too close"):
        single_point(Atoms("O2", positions=[[0, 0, 0], [0, 0, 0.3]]), SETTINGS)
    with pytest.raises(InvalidStructure, match="no atoms"):
        single_point(Atoms(), SETTINGS)


def test_partially_periodic_frames(no_scf):
    slab = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]], cell=np.eye(3) * 5, pbc=[True, True, False])
    with pytest.raises(InvalidStructure, match="partially periodic"):
        single_point(slab, SETTINGS)


def test_absurd_charge_and_spin(no_scf):
    water = small_molecule("H2O")
    with pytest.raises(InvalidStructure, match="charge \\+10 leaves 0 electrons"):
        single_point(water, DFTSettings(charge=10))
    with pytest.raises(InvalidStructure, match="leaves -2 electrons"):
        single_point(water, DFTSettings(charge=12))
    water.info.update(charge=0, spin=1)
    with pytest.raises(InvalidStructure, match="2S=1 is impossible with 10 electrons"):
        single_point(water, DFTSettings(spin_policy="from_info"))
    hydrogen = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], info={"spin": 4})
    with pytest.raises(InvalidStructure, match="exceeds the 2 electrons"):
        single_point(hydrogen, DFTSettings(spin_policy="from_info"))
    hydrogen.info["spin"] = "two"
    with pytest.raises(InvalidStructure, match="not a number"):
        single_point(hydrogen, DFTSettings(spin_policy="from_info"))


def test_batch_validates_every_frame_before_the_first_scf(no_scf):
    frames = [small_molecule("H2O"), Atoms("CeH", positions=[[0, 0, 0], [0, 0, 2.1]])]
    with pytest.raises(InvalidStructure, match="frame 1"):
        list(label_frames(frames, SETTINGS, progress=False))


def test_batch_can_report_invalid_frames_as_failures(no_scf):
    frames = [Atoms(), Atoms("CeH", positions=[[0, 0, 0], [0, 0, 2.1]])]
    outcomes = dict(label_frames(frames, SETTINGS, progress=False, invalid="fail"))
    assert sorted(outcomes) == [0, 1]
    assert all(not o.ok and o.kind == "invalid" for o in outcomes.values())
    assert "no atoms" in outcomes[0].reason and "Ce" in outcomes[1].reason


def test_gpu_requested_without_a_gpu(no_scf):
    from dft.backend import gpu_usable

    if gpu_usable()[0]:
        pytest.skip("a GPU is available here")
    with pytest.raises(ConfigError, match="device 'gpu'"):
        list(label_frames([small_molecule("H2O")], DFTSettings(device="gpu"), progress=False))


def test_spin_policies():
    lowest = DFTSettings()
    assert electronic_state(small_molecule("H2O"), lowest).spin == 0
    radical = electronic_state(small_molecule("OH"), lowest)
    assert (radical.spin, radical.multiplicity, radical.unrestricted) == (1, 2, True)
    cation = electronic_state(small_molecule("H2O"), DFTSettings(charge=1))
    assert (cation.n_electrons, cation.spin) == (9, 1)
    high = DFTSettings(spin_policy="high")
    assert electronic_state(Atoms("O", positions=[[0, 0, 0]]), high).spin == 2  # 3P oxygen
    assert electronic_state(Atoms("Fe", positions=[[0, 0, 0]]), high).spin == 4  # 5D iron
    assert electronic_state(Atoms("N", positions=[[0, 0, 0]]), high).spin == 3  # 4S nitrogen
    from_info = DFTSettings(spin_policy="from_info")
    oxygen = Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.21]], info={"spin": 2})
    state = electronic_state(oxygen, from_info)
    assert (state.spin, state.source) == (2, "atoms.info")
    anion = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]], info={"charge": -1})
    assert (electronic_state(anion, from_info).charge, electronic_state(anion, from_info).spin) == (-1, 0)
    assert electronic_state(anion, lowest).charge == 0  # the default policy ignores atoms.info


def test_kpoint_mesh_from_density():
    si = silicon_pair()
    assert kpoint_mesh(si, DFTSettings(kpts=(1, 1, 1))) == (1, 1, 1)
    assert kpoint_mesh(si, DFTSettings(kpoint_density=0)) == (1, 1, 1)
    # |b_i| of the fcc primitive cell is sqrt(3)/a; 2π·1.5·sqrt(3)/5.43 = 3.006 -> 4.
    assert kpoint_mesh(si, DFTSettings(kpoint_density=1.5)) == (4, 4, 4)
    big = si.copy()
    big.set_cell(si.cell * 3, scale_atoms=True)
    assert kpoint_mesh(big, DFTSettings(kpoint_density=1.5)) == (2, 2, 2)


def test_heavy_elements_need_the_ecp_fact():
    """PySCF's def2-svp without ecp= silently treats iodine all-electron (53 electrons)."""
    from pyscf import gto

    atoms = [("H", (0, 0, 0)), ("I", (0, 0, 1.61))]
    assert gto.M(atom=atoms, basis="def2-svp", verbose=0).nelectron == 54
    assert gto.M(atom=atoms, basis="def2-svp", ecp={"I": "def2-svp"}, verbose=0).nelectron == 26
