"""Small labelled datasets made with ASE's EMT potential (a real, cheap calculator)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def labelled(atoms: Atoms, with_stress: bool | None = None) -> Atoms:
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if with_stress if with_stress is not None else atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def emt_dataset(n: int = 6, seed: int = 0) -> list[Atoms]:
    """Periodic Cu/Al cells and open clusters/molecules, rattled, with EMT labels."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        if i % 3 == 0:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
            atoms.numbers[rng.integers(len(atoms))] = 13  # one Al
        elif i % 3 == 1:
            atoms = bulk("Al", "fcc", a=4.05) * (2, 2, 1)
        else:
            atoms = molecule("CH3CH2OH")  # EMT knows H, C, N, O (roughly) as well
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        frames.append(labelled(atoms))
    return frames
