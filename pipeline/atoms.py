"""Validation of ``ase.Atoms`` frames at module boundaries: the one structure validator.

:func:`structure_problem` is the one check of a structure (type, empty, elements, NaN
positions or cell, degenerate or exploded periodic cell, overlapping or too close atoms);
it says what is wrong in one line, or None. Every public function that takes frames calls
:func:`check_atoms` (which raises it as :class:`InvalidStructure`), so that bad structures
fail early with a message naming the problem, instead of producing NaNs deep inside a
model or an SCF; the selection's geometry filter
(:func:`pipeline.selection.geometry_problem`) and the model's graph builder
(:func:`potential.graph.validate_frame`) ask the same function.
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


def numbers_problem(numbers: np.ndarray) -> str | None:
    """Why ``numbers`` holds an unsupported atomic number (one line), or None."""
    numbers = np.asarray(numbers)
    if numbers.size and (numbers.min() < 1 or numbers.max() > MAX_Z):
        bad = int(numbers[(numbers < 1) | (numbers > MAX_Z)][0])
        return f"atomic number {bad} is outside the supported range 1..{MAX_Z} (H..Bi)"
    return None


def bonded(atoms: Atoms, factor: float) -> np.ndarray:
    """Bond matrix: atoms closer than ``factor`` × their covalent radii sum (minimum image
    in periodic cells), without the diagonal."""
    if len(atoms) < 2:
        return np.zeros((len(atoms), len(atoms)), dtype=bool)
    distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    radii = covalent_radii[atoms.numbers]
    matrix = distances < factor * (radii[:, None] + radii[None, :])
    np.fill_diagonal(matrix, False)
    return matrix


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


def distance_problem(
    dmin: float,
    ratio: float = float("inf"),
    min_distance: float = HARD_MIN_DISTANCE,
    min_covalent_ratio: float | None = None,
) -> str | None:
    """Why the closest pair (``dmin`` Å apart, ``ratio`` x the sum of covalent radii) is
    too close, or None (also for callers that measure the pair from their own neighbour list)."""
    if dmin < min_distance:
        return f"atoms overlap (closest pair {dmin:.3g} Å apart, minimum {min_distance} Å)"
    if min_covalent_ratio is not None and ratio < min_covalent_ratio:
        return f"atoms too close ({dmin:.3g} Å = {ratio:.2f} x the sum of covalent radii, minimum {min_covalent_ratio})"
    return None


def structure_problem(
    atoms: Atoms,
    *,
    min_distance: float = HARD_MIN_DISTANCE,
    min_covalent_ratio: float | None = None,
    max_volume_per_atom: float | None = None,
    distances: bool = True,
) -> str | None:
    """Why ``atoms`` cannot be used (one line, without a name), or None when it is fine.

    Checks: an ``ase.Atoms``, non-empty, supported elements (H..Bi), finite positions and
    cell, a non-degenerate cell along periodic directions, at most ``max_volume_per_atom``
    Å³ per atom in a fully periodic cell (when given), and (with ``distances``) no two
    atoms, periodic images included, closer than ``min_distance`` Å or than
    ``min_covalent_ratio`` times the sum of their covalent radii (when given).
    """
    if not isinstance(atoms, Atoms):
        return f"expected ase.Atoms, got {type(atoms).__name__}"
    if len(atoms) == 0:
        return "structure has no atoms"
    problem = numbers_problem(atoms.numbers)
    if problem:
        return problem
    if not np.all(np.isfinite(atoms.positions)):
        return "positions contain NaN or infinite values"
    cell = atoms.cell.array
    if not np.all(np.isfinite(cell)):
        return "cell contains NaN or infinite values"
    if atoms.pbc.any():
        lengths = np.linalg.norm(cell[atoms.pbc], axis=1)
        if np.any(lengths < 1e-6):
            return "periodic cell vector of zero length"
        if atoms.pbc.all():
            volume = abs(float(np.linalg.det(cell)))
            if volume < 1e-6:
                return "periodic cell has zero volume"
            if max_volume_per_atom is not None and volume / len(atoms) > max_volume_per_atom:
                return f"cell exploded ({volume / len(atoms):.1f} Å^3/atom > {max_volume_per_atom})"
    if not distances:
        return None
    return distance_problem(*min_distance_ratio(atoms), min_distance, min_covalent_ratio)


def check_atoms(
    atoms: Atoms,
    name: str = "frame",
    *,
    min_distance: float = HARD_MIN_DISTANCE,
    min_covalent_ratio: float | None = None,
    max_volume_per_atom: float | None = None,
    allow_empty: bool = False,
    distances: bool = True,
) -> None:
    """Raise :class:`InvalidStructure` (``"<name>: <problem>"``) if ``atoms`` cannot be
    used; the checks are those of :func:`structure_problem`."""
    if allow_empty and isinstance(atoms, Atoms) and len(atoms) == 0:
        return
    problem = structure_problem(
        atoms,
        min_distance=min_distance,
        min_covalent_ratio=min_covalent_ratio,
        max_volume_per_atom=max_volume_per_atom,
        distances=distances,
    )
    if problem:
        raise InvalidStructure(f"{name}: {problem}")
