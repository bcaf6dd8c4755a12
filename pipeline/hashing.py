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
    digest = hashlib.sha256()
    digest.update(f"selfplay-frame-v{HASH_VERSION}".encode())
    digest.update(np.asarray(atoms.numbers, dtype="<i2").tobytes())
    digest.update(_quantize(atoms.positions))
    digest.update(_quantize(atoms.cell.array))
    digest.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
    return digest.hexdigest()
