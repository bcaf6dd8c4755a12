"""Content hashes of frames.

Two frames are the same frame when they have the same atomic numbers in the same order,
the same positions and cell after rounding to :data:`POSITION_TOLERANCE` Å, and the same
periodic boundary conditions. The hash is what makes inserts idempotent (unique index on
``Frame.hash``) and what selection uses to drop frames already in the database.
"""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms

#: Positions and cell vectors are rounded to this grid (Å) before hashing: far below any
#: physically meaningful displacement, far above float64 noise from file round trips.
POSITION_TOLERANCE = 1e-5

HASH_VERSION = 1


def _quantize(values: np.ndarray) -> bytes:
    # Integers on a grid: rounding is stable and -0.0 and 0.0 become the same bytes.
    grid = np.rint(np.asarray(values, dtype=np.float64) / POSITION_TOLERANCE).astype("<i8")
    return grid.tobytes()


def frame_hash(atoms: Atoms) -> str:
    """Hex SHA-256 of (numbers, rounded positions, rounded cell, pbc)."""
    return frame_hashes(
        atoms.numbers, atoms.positions, atoms.cell.array[None], np.asarray(atoms.pbc)[None], [0, len(atoms)]
    )[0]


def frame_hashes(numbers, positions, cells, pbcs, offsets) -> list[str]:
    """:func:`frame_hash` of many frames given as concatenated arrays: ``numbers`` (N,),
    ``positions`` (N, 3), ``cells`` (F, 3, 3), ``pbcs`` (F, 3) and ``offsets`` (F + 1,),
    frame ``i`` being atoms ``offsets[i]:offsets[i + 1]``. The quantisation runs once over
    the whole batch, which is what makes bulk inserts cheap."""
    numbers_bytes = np.asarray(numbers).astype("<i2").tobytes()
    grid_positions = _quantize(positions)
    grid_cells = _quantize(cells)
    pbc_bytes = np.asarray(pbcs, dtype=np.uint8).tobytes()
    prefix = f"selfplay-frame-v{HASH_VERSION}".encode()
    hashes = []
    for i in range(len(offsets) - 1):
        a0, a1 = int(offsets[i]), int(offsets[i + 1])
        digest = hashlib.sha256(prefix)
        digest.update(numbers_bytes[2 * a0 : 2 * a1])
        digest.update(grid_positions[24 * a0 : 24 * a1])
        digest.update(grid_cells[72 * i : 72 * (i + 1)])
        digest.update(pbc_bytes[3 * i : 3 * (i + 1)])
        hashes.append(digest.hexdigest())
    return hashes
