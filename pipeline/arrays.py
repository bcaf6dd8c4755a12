"""Compact, bit-exact storage of numpy arrays in MongoDB documents.

Arrays are stored as raw little-endian bytes (``BinaryField``) with the shape implied by
the document (``n_atoms``): 24 bytes per position instead of ~60 for a BSON list of
doubles, and the values come back bit for bit.
"""

from __future__ import annotations

import numpy as np

FLOAT = np.dtype("<f8")
NUMBERS = np.dtype("<u1")  # atomic numbers 1..83 fit in one byte


def pack(array, dtype: np.dtype = FLOAT) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def unpack(data: bytes | None, shape: tuple[int, ...], dtype: np.dtype = FLOAT) -> np.ndarray | None:
    if data is None:
        return None
    # copy(): frombuffer views are read-only and tied to the BSON bytes.
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape).copy()


def voigt(stress: np.ndarray) -> np.ndarray:
    """A stress as ASE's Voigt 6-vector (xx, yy, zz, yz, xz, xy); 6-vectors pass through."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return stress
