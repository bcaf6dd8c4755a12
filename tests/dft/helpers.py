"""Frames and an independent PySCF reference for the dft tests."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import molecule


def small_molecule(name: str) -> Atoms:
    """H2O, CH4, NH3 from ASE's G2 set; HF, LiH, OH, AgH, HI as diatomics near equilibrium."""
    diatomics = {"HF": ("HF", 0.92), "LiH": ("LiH", 1.60), "OH": ("OH", 0.97), "AgH": ("AgH", 1.62), "HI": ("HI", 1.61)}
    if name in diatomics:
        symbols, distance = diatomics[name]
        return Atoms(symbols, positions=[[0.0, 0.0, 0.0], [0.0, 0.0, distance]])
    atoms = molecule(name)
    atoms.info.clear()
    return atoms


def silicon_pair() -> Atoms:
    """Two Si atoms in the primitive diamond cell, the second one off its lattice site."""
    a = 5.43
    cell = np.array([[0.0, a / 2, a / 2], [a / 2, 0.0, a / 2], [a / 2, a / 2, 0.0]])
    return Atoms("Si2", positions=[[0.0, 0.0, 0.0], [1.40, 1.33, 1.38]], cell=cell, pbc=True)


def label_one_after_another(settings, frames: list[Atoms]) -> tuple[list, list[int]]:
    """Each frame through one runner pool of one worker, waiting for each to finish:
    ``(outcomes, workers spawned so far after each frame)``, to see which worker was reused."""
    from dft.runner import _Pool

    pool = _Pool(settings, workers=1)
    outcomes, spawned = [], []
    try:
        for index, atoms in enumerate(frames):
            pool.launch(index, f"frame {index}", atoms, settings.plan(atoms))
            finished = []
            while not finished:
                finished = pool.poll(timeout=1.0)
            outcomes.extend(outcome for _, outcome in finished)
            spawned.append(pool.spawned)
    finally:
        pool.shutdown()
    return outcomes, spawned


def pyscf_reference(atoms: Atoms, xc: str = "pbe", spin: int = 0, charge: int = 0, conv_tol: float = 1e-9):
    """An independently built PySCF DF-KS calculation: ``(e_tot Hartree, gradient Ha/Bohr)``."""
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom",
        basis="def2-svp",
        ecp="def2-svp",
        spin=spin,
        charge=charge,
        verbose=0,
    )
    mf = (dft.UKS if spin else dft.RKS)(mol, xc=xc).density_fit()
    mf.grids.level = 3
    mf.conv_tol = conv_tol
    mf.kernel()
    assert mf.converged
    return mf.e_tot, mf.nuc_grad_method().kernel(), mol


def tblite_reference(
    atoms: Atoms, method: str = "GFN2-xTB", temperature_k: float = 300.0, charge: float = 0.0, uhf: int = 0
):
    """tblite's own Calculator on ``atoms``: ``(energy eV, forces eV/Å, stress eV/Å³ or None)``."""
    from ase.units import Bohr, Hartree, kB
    from tblite.interface import Calculator

    periodic = bool(atoms.pbc.all())
    calc = Calculator(
        method,
        atoms.numbers,
        atoms.positions / Bohr,
        charge,
        uhf,
        atoms.cell.array / Bohr if periodic else None,
        np.array([True] * 3) if periodic else None,
    )
    calc.set("verbosity", 0)
    calc.set("temperature", temperature_k * kB / Hartree)
    result = calc.singlepoint()
    stress = None
    if periodic:
        stress = (result.get("virial") * Hartree / atoms.get_volume()).flat[[0, 4, 8, 5, 2, 1]]
    return result.get("energy") * Hartree, -result.get("gradient") * Hartree / Bohr, stress
