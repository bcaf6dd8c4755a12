"""GPU4PySCF against PySCF on the same frames (skipped without a CUDA GPU).

Stated tolerance for "the same settings give the same number on both devices":
energy 1e-5 Hartree, forces 5e-4 eV/Å, stress 1e-5 eV/Å³.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.units import Hartree

from dft import DFTResult, DFTSettings, single_point
from dft.backend import gpu_usable
from tests.dft.helpers import silicon_pair, small_molecule

pytestmark = pytest.mark.gpu

ENERGY_TOL_HA = 1e-5
FORCE_TOL = 5e-4
STRESS_TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _need_gpu():
    usable, why = gpu_usable()
    if not usable:
        pytest.skip(f"no usable GPU: {why}")


def both(atoms, **settings):
    cpu = single_point(atoms, DFTSettings(device="cpu", time_limit=None, **settings), isolate=False)
    gpu = single_point(atoms, DFTSettings(device="gpu", time_limit=None, **settings), isolate=False)
    assert isinstance(cpu, DFTResult), getattr(cpu, "reason", "")
    assert isinstance(gpu, DFTResult), getattr(gpu, "reason", "")
    assert gpu.info["device"] == "gpu" and gpu.info["versions"]["gpu4pyscf"]
    assert cpu.theory_key == gpu.theory_key
    return cpu, gpu


@pytest.mark.parametrize("name", ["H2O", "OH", "AgH"])
def test_gpu_matches_cpu_on_molecules(name):
    cpu, gpu = both(small_molecule(name))
    assert abs(cpu.energy - gpu.energy) / Hartree < ENERGY_TOL_HA
    np.testing.assert_allclose(gpu.forces, cpu.forces, atol=FORCE_TOL)
    assert gpu.info["spin"] == cpu.info["spin"]


@pytest.mark.parametrize(
    "atoms",
    [
        pytest.param(Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.21]]), id="triplet O2"),
        pytest.param(Atoms("H2", positions=[[0, 0, 0], [0, 0, 3.0]]), id="broken-symmetry H2"),
        pytest.param(Atoms("N2", positions=[[0, 0, 0], [0, 0, 2.5]]), id="broken-symmetry N2"),
    ],
)
def test_gpu_finds_the_same_lowest_state(atoms):
    """spin_policy='auto' on the GPU (stability analysis on the CPU twin of the GPU
    solution) reaches the state and energy the CPU reaches."""
    cpu, gpu = both(atoms)
    cpu_state, gpu_state = cpu.info["electronic_state"], gpu.info["electronic_state"]
    assert gpu_state["spin"] == cpu_state["spin"] and gpu_state["restricted"] == cpu_state["restricted"]
    assert abs(cpu.energy - gpu.energy) / Hartree < ENERGY_TOL_HA
    np.testing.assert_allclose(gpu.forces, cpu.forces, atol=FORCE_TOL)
    np.testing.assert_allclose(gpu_state["magnetic_moments"], cpu_state["magnetic_moments"], atol=1e-3)
    assert abs(gpu_state["s2"] - cpu_state["s2"]) < 1e-3


def test_gpu_ladder_newton_and_smearing_rungs():
    settings = dict(max_cycle=3, ladder=("newton",), spin_policy="lowest")
    cpu, gpu = both(small_molecule("H2O"), **settings)
    assert gpu.info["rung"] == "newton"
    assert abs(cpu.energy - gpu.energy) / Hartree < ENERGY_TOL_HA
    cpu, gpu = both(small_molecule("H2O"), always_smear=True, smearing_sigma=1.5)
    assert gpu.info["smearing_used"]
    assert abs(cpu.energy - gpu.energy) / Hartree < ENERGY_TOL_HA
    np.testing.assert_allclose(gpu.forces, cpu.forces, atol=FORCE_TOL)


def test_gpu_matches_cpu_on_a_periodic_cell():
    cpu, gpu = both(silicon_pair(), pbc_basis="gth-szv", pbc_ke_cutoff=30, pbc_precision=1e-6, kpts=(1, 1, 1))
    assert abs(cpu.energy - gpu.energy) / Hartree < ENERGY_TOL_HA
    np.testing.assert_allclose(gpu.forces, cpu.forces, atol=FORCE_TOL)
    assert gpu.stress is not None
    np.testing.assert_allclose(gpu.stress, cpu.stress, atol=STRESS_TOL)


def test_gpu_worker_process():
    result = single_point(small_molecule("H2O"), DFTSettings(device="gpu", time_limit=300))
    assert isinstance(result, DFTResult) and result.info["device"] == "gpu"
