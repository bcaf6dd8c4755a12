"""Compact, bit-exact storage of numpy arrays in MongoDB documents, and label checks.

Arrays are stored as raw little-endian bytes (``BinaryField``) with the shape implied by
the document (``n_atoms``): 24 bytes per position instead of ~60 for a BSON list of
doubles, and the values come back bit for bit.

:func:`label_arrays` is the one validation of (energy, forces, stress) used by the store,
the importer and the training-data reader; :func:`labels_of` reads them from an
``ase.Atoms``' calculator first.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from pipeline.errors import InvalidStructure, SelfplayError

FLOAT = np.dtype("<f8")
NUMBERS = np.dtype("<u1")  # atomic numbers 1..83 fit in one byte


def pack(array, dtype: np.dtype = FLOAT) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def unpack(data: bytes | None, shape: tuple[int, ...], dtype: np.dtype = FLOAT) -> np.ndarray | None:
    if data is None:
        return None
    # copy(): frombuffer views are read-only and tied to the BSON bytes.
    return np.frombuffer(bytes(data), dtype=dtype).reshape(shape).copy()


def unpack_many(chunks: Sequence[bytes], shape: tuple[int, ...], dtype: np.dtype = FLOAT) -> np.ndarray:
    """Concatenate many packed arrays into one ``(-1, *shape)`` array with a single copy.

    One join and one ``frombuffer`` per batch instead of one numpy array per document:
    the export's hot path.
    """
    # bytearray().join: one copy, and the result is writable (frombuffer of bytes is not).
    return np.frombuffer(bytearray().join(chunks), dtype=dtype).reshape((-1, *shape))


def voigt(stress: np.ndarray) -> np.ndarray:
    """A stress as ASE's Voigt 6-vector (xx, yy, zz, yz, xz, xy); 6-vectors pass through."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return stress


def label_arrays(
    energy,
    forces,
    stress,
    n_atoms: int,
    name: str = "frame",
    *,
    error: type[SelfplayError] = InvalidStructure,
    invalid_stress: Literal["raise", "drop"] = "raise",
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Validated ``(energy, forces, stress)`` of a frame of ``n_atoms`` atoms.

    Returns a float energy, ``(n_atoms, 3)`` float64 forces and the stress as a Voigt
    6-vector (or None). Raises ``error`` (one line, starting with ``name``) when the energy
    or forces are missing, not finite or of the wrong shape; a malformed or non-finite
    stress raises too, or is dropped (None) with ``invalid_stress="drop"``.
    """
    if energy is None or forces is None:
        missing = " and ".join(k for k, v in (("energy", energy), ("forces", forces)) if v is None)
        raise error(f"{name}: no {missing}")
    try:
        energy = float(energy)
    except (TypeError, ValueError):
        raise error(f"{name}: energy {energy!r} is not a number") from None
    if not np.isfinite(energy):
        raise error(f"{name}: energy is not finite")
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (n_atoms, 3):
        raise error(f"{name}: forces have shape {forces.shape}, expected ({n_atoms}, 3)")
    if not np.isfinite(forces).all():
        raise error(f"{name}: forces contain NaN or infinite values")
    if stress is not None:
        stress = voigt(stress)
        problem = None
        if stress.shape != (6,):
            problem = f"stress has shape {stress.shape}, expected (6,) or (3, 3)"
        elif not np.isfinite(stress).all():
            problem = "stress contains NaN or infinite values"
        if problem is not None:
            if invalid_stress == "drop":
                return energy, forces, None
            raise error(f"{name}: {problem}")
    return energy, forces, stress


def labels_of(
    atoms,
    name: str = "frame",
    *,
    error: type[SelfplayError] = InvalidStructure,
    invalid_stress: Literal["raise", "drop"] = "raise",
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces and stress carried by ``atoms.calc`` (a SinglePointCalculator or any
    calculator with ``results``), checked by :func:`label_arrays`.

    The energy is ``results["energy"]``, or ``"free_energy"`` when only that is present.
    """
    results = getattr(getattr(atoms, "calc", None), "results", None) or {}
    energy = results.get("energy", results.get("free_energy"))
    forces = results.get("forces")
    if energy is None or forces is None:
        missing = " and ".join(k for k, v in (("energy", energy), ("forces", forces)) if v is None)
        raise error(f"{name}: no {missing} in the labels (atoms.calc holds {sorted(results) or 'nothing'})")
    return label_arrays(
        energy, forces, results.get("stress"), len(atoms), name, error=error, invalid_stress=invalid_stress
    )
