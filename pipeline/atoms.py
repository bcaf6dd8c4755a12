"""Validation of ``ase.Atoms`` frames at module boundaries.

Every public function that takes frames calls :func:`check_atoms`, so that bad
structures fail early with a message naming the problem, instead of producing NaNs
deep inside a model or an SCF.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii

from pipeline.errors import InvalidStructure

#: Heaviest element the project supports (Bi): the model's embedding and the default
#: basis sets with ECPs cover H..Bi.
MAX_Z = 83

#: Two atoms closer than this (Å) are "on top of each other" whatever their elements.
HARD_MIN_DISTANCE = 0.1


def symbols_to_numbers(symbols: list[str] | tuple[str, ...], what: str = "element") -> list[int]:
    """Atomic numbers of element symbols; an unknown or unsupported symbol raises."""
    numbers = []
    for symbol in symbols:
        if symbol not in chemical_symbols[1:]:
            raise InvalidStructure(f"unknown {what} symbol {symbol!r}")
        z = chemical_symbols.index(symbol)
        if z > MAX_Z:
            raise InvalidStructure(f"{what} {symbol} (Z={z}) is beyond Bi (Z={MAX_Z}), the heaviest supported")
        numbers.append(z)
    return numbers


def check_numbers(numbers: np.ndarray, name: str = "frame") -> None:
    numbers = np.asarray(numbers)
    if numbers.size and (numbers.min() < 1 or numbers.max() > MAX_Z):
        bad = int(numbers[(numbers < 1) | (numbers > MAX_Z)][0])
        raise InvalidStructure(f"{name}: atomic number {bad} is outside the supported range 1..{MAX_Z} (H..Bi)")


def min_distance_ratio(atoms: Atoms) -> tuple[float, float]:
    """Smallest interatomic distance (Å) and smallest distance / (r_cov,i + r_cov,j).

    Periodic images are included. Returns ``(inf, inf)`` for fewer than two atoms in
    an open system.
    """
    from vesin import NeighborList

    n = len(atoms)
    if n == 0 or (n == 1 and not atoms.pbc.any()):
        return float("inf"), float("inf")
    numbers = atoms.numbers
    radii = covalent_radii[numbers]
    cutoff = float(2 * radii.max() + 0.5)
    positions = atoms.positions.astype(np.float64)
    periodic = bool(atoms.pbc.all())
    if atoms.pbc.any() and not periodic:
        # vesin handles fully periodic or fully open systems; mixed pbc falls back to ASE.
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", atoms, cutoff)
    else:
        box = atoms.cell.array if periodic else np.zeros((3, 3))
        i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(
            points=positions, box=box, periodic=periodic, quantities="ijd"
        )
    if len(d) == 0:
        return float("inf"), float("inf")
    ratio = d / (radii[i] + radii[j])
    return float(d.min()), float(ratio.min())


def check_atoms(
    atoms: Atoms,
    name: str = "frame",
    *,
    min_distance: float = HARD_MIN_DISTANCE,
    min_covalent_ratio: float | None = None,
    allow_empty: bool = False,
) -> None:
    """Raise :class:`InvalidStructure` if ``atoms`` cannot be used.

    Checks: non-empty, supported elements (H..Bi), finite positions and cell, a
    non-degenerate cell along periodic directions, and no two atoms closer than
    ``min_distance`` Å (or than ``min_covalent_ratio`` times the sum of their covalent
    radii, when given).
    """
    if not isinstance(atoms, Atoms):
        raise InvalidStructure(f"{name}: expected ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        if allow_empty:
            return
        raise InvalidStructure(f"{name}: structure has no atoms")
    check_numbers(atoms.numbers, name)
    positions = atoms.positions
    if not np.all(np.isfinite(positions)):
        raise InvalidStructure(f"{name}: positions contain NaN or infinite values")
    cell = atoms.cell.array
    if not np.all(np.isfinite(cell)):
        raise InvalidStructure(f"{name}: cell contains NaN or infinite values")
    if atoms.pbc.any():
        lengths = np.linalg.norm(cell[atoms.pbc], axis=1)
        if np.any(lengths < 1e-6):
            raise InvalidStructure(f"{name}: periodic cell vector of zero length")
        if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-6:
            raise InvalidStructure(f"{name}: periodic cell has zero volume")
    dmin, ratio = min_distance_ratio(atoms)
    if dmin < min_distance:
        raise InvalidStructure(f"{name}: atoms overlap (closest pair {dmin:.3g} Å apart, minimum {min_distance} Å)")
    if min_covalent_ratio is not None and ratio < min_covalent_ratio:
        raise InvalidStructure(
            f"{name}: atoms too close ({ratio:.2f} x the sum of covalent radii, minimum {min_covalent_ratio})"
        )
