"""Small labelled data sets from ASE's EMT potential, for tests, demos and benchmarks.

EMT (effective medium theory) is a real empirical many-body potential for fcc metals;
its energies, forces and stresses are smooth and physical, so a model that learns them
is learning something, without any network access or DFT cost.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Octahedron

#: fcc metals EMT describes well, with lattice constants (Å) near EMT's equilibrium
EMT_METALS = {"Cu": 3.61, "Al": 4.05, "Ni": 3.52, "Ag": 4.09, "Au": 4.08, "Pd": 3.89, "Pt": 3.92}


def _label(atoms: Atoms, stress: bool) -> Atoms:
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        results["stress"] = atoms.get_stress()
    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, **results)
    return labelled


def emt_frames(
    n_frames: int = 120,
    elements: tuple[str, ...] = ("Cu", "Al", "Ni"),
    seed: int = 0,
    rattle: float = 0.12,
    max_atoms: int = 32,
) -> list[Atoms]:
    """Labelled frames: rattled, strained fcc alloy cells (with stress) and rattled
    alloy clusters (no stress), drawn over ``elements`` (EMT metals)."""
    unknown = [e for e in elements if e not in EMT_METALS]
    if unknown:
        raise ValueError(f"EMT reference data supports {sorted(EMT_METALS)}, not {unknown}")
    rng = np.random.default_rng(seed)
    frames = []
    cells = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)]
    while len(frames) < n_frames:
        host = str(rng.choice(elements))
        a = EMT_METALS[host] * rng.uniform(0.97, 1.04)
        if rng.random() < 0.65:
            reps = cells[rng.integers(len(cells))]
            atoms = bulk(host, "fcc", a=a, cubic=True) * reps
            strain = np.eye(3) + rng.normal(0, 0.02, (3, 3))
            atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            periodic = True
        else:
            atoms = Octahedron(host, length=3, cutoff=int(rng.integers(0, 2)), latticeconstant=a)
            atoms.center(vacuum=5.0)
            atoms.pbc = False
            periodic = False
        if len(atoms) > max_atoms:
            continue
        symbols = np.array(atoms.get_chemical_symbols())
        swap = rng.random(len(atoms)) < 0.35
        symbols[swap] = rng.choice(elements, swap.sum())
        atoms.set_chemical_symbols(symbols.tolist())
        atoms.positions += rng.normal(0, rattle, atoms.positions.shape)
        frames.append(_label(atoms, stress=periodic))
    return frames
