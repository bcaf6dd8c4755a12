"""A periodic cell: energy against PySCF called directly, forces and stress against
finite differences of that energy (CPU: KRKS at Γ with FFTDF and GTH pseudopotentials)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.units import Hartree

from dft import DFTResult, DFTSettings, single_point
from tests.dft.helpers import silicon_pair

#: A small basis and plane-wave cutoff keep each SCF at a few seconds; the checks are
#: about consistency, which does not need a converged basis.
SETTINGS = DFTSettings(
    threads=1,
    time_limit=None,
    pbc_basis="gth-szv",
    pbc_ke_cutoff=30,
    pbc_precision=1e-6,
    kpts=(1, 1, 1),
    conv_tol=1e-11,
)


def pyscf_energy(atoms, mesh=None) -> float:
    """Energy (eV) of an independently built PySCF cell; ``mesh`` pins the FFT grid so that
    displaced and strained cells are evaluated on the same number of points."""
    from pyscf.pbc import dft as pbcdft
    from pyscf.pbc import gto as pbcgto

    cell = pbcgto.M(
        atom=[("Si", tuple(p)) for p in atoms.positions],
        a=atoms.cell.array,
        unit="Angstrom",
        basis="gth-szv",
        pseudo="gth-pbe",
        ke_cutoff=30,
        precision=1e-6,
        verbose=0,
    )
    if mesh is not None:
        cell.mesh = mesh
        cell.build()
    mf = pbcdft.KRKS(cell, kpts=np.zeros((1, 3)), xc="pbe")
    mf.conv_tol = 1e-11
    energy = mf.kernel()
    assert mf.converged
    return energy * Hartree


@pytest.mark.slow
def test_periodic_cell_energy_forces_and_stress():
    si = silicon_pair()
    result = single_point(si, SETTINGS, isolate=False)
    assert isinstance(result, DFTResult), getattr(result, "reason", "")
    info = result.info
    assert info["periodic"] and info["kpts_mesh"] == [1, 1, 1] and "stress_note" not in info
    assert result.stress.shape == (6,)
    mesh = info["fft_mesh"]
    assert abs(result.energy - pyscf_energy(si)) < 1e-6 * Hartree

    h = 1e-3  # Å
    plus, minus = si.copy(), si.copy()
    plus.positions[1, 0] += h
    minus.positions[1, 0] -= h
    fd_force = -(pyscf_energy(plus, mesh) - pyscf_energy(minus, mesh)) / (2 * h)
    assert abs(result.forces[1, 0] - fd_force) < 1e-4

    # Stress in ASE's convention, (1/V) dE/dε, checked on the xx component.
    eps = 1e-4
    energies = []
    for sign in (1, -1):
        strained = si.copy()
        strained.set_cell(si.cell.array @ np.diag([1 + sign * eps, 1, 1]), scale_atoms=True)
        energies.append(pyscf_energy(strained, mesh))
    fd_stress = (energies[0] - energies[1]) / (2 * eps) / si.get_volume()
    assert abs(result.stress[0] - fd_stress) < 1e-5
    # Cubic symmetry is broken only by the displaced atom: diagonal terms stay alike.
    assert np.ptp(result.stress[:3]) < 0.1 * np.abs(result.stress[:3]).max()


def test_periodic_cpu_config_loads_with_the_recommended_cell_settings(tmp_path):
    """flows/periodic_cpu.yaml is a valid generation config whose labeller is the CPU
    setting dft/README.md recommends for small cells (benchmarks/results/periodic_cpu.md);
    the mesh it gives the benchmark's 2-atom Si cell is 2×2×2."""
    from pathlib import Path

    from dft.backend import kpoint_mesh
    from flows.config import load_config
    from tests.dft.helpers import silicon_pair

    path = Path(__file__).resolve().parents[2] / "flows" / "periodic_cpu.yaml"
    config = load_config(path, workdir=tmp_path, mongodb_uri=None)
    dft = config.dft
    assert isinstance(dft, DFTSettings)
    assert (dft.pbc_basis, dft.pbc_ke_cutoff, dft.pbc_precision) == ("gth-dzvp-molopt-sr", 60, 1e-6)
    assert dft.kpts is None and kpoint_mesh(silicon_pair(), dft) == (2, 2, 2)
    assert dft.theory_key() != DFTSettings().theory_key()
