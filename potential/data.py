"""Training data: labelled frames from extxyz / the project's HDF5 export, as ase.Atoms.

A labelled frame is an ``ase.Atoms`` whose calculator (normally a
SinglePointCalculator) holds energy and forces, and optionally stress.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from pipeline.arrays import labels_of
from pipeline.errors import DataFileError, SelfplayError

log = logging.getLogger(__name__)

HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf"}


@dataclass
class Labels:
    energy: float
    forces: np.ndarray  # (n, 3)
    stress: np.ndarray | None  # (6,) Voigt, eV/Å³, or None


def frame_labels(atoms: Atoms, name: str = "frame") -> Labels:
    """Energy, forces and (on fully periodic frames, if valid) stress of a labelled frame."""
    energy, forces, stress = labels_of(atoms, name, invalid_stress="drop")
    if not atoms.pbc.all():
        stress = None
    return Labels(energy=energy, forces=forces, stress=stress)


def read_frames(path: str | Path) -> list[Atoms]:
    """Labelled frames from an extxyz file or the project's HDF5 export."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"training data {path} does not exist")
    if path.is_dir():
        frames: list[Atoms] = []
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in HDF5_SUFFIXES | {".xyz", ".extxyz"})
        if not files:
            raise DataFileError(f"training data directory {path} holds no .xyz/.extxyz/.h5 files")
        for file in files:
            frames.extend(read_frames(file))
        return frames
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _read_hdf5(path)
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ase raises many kinds on malformed input
        raise DataFileError(f"training data {path}: cannot read ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if not isinstance(frames, list):
        frames = [frames]
    return frames


def _read_hdf5(path: Path) -> list[Atoms]:
    """Snapshots written by pipeline.export go through its reader; other files with the
    same ragged layout through :func:`_read_hdf5_layout`."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            is_snapshot = handle.attrs.get("format") == "selfplay-snapshot"
    except OSError as exc:
        raise DataFileError(f"training data {path}: not a readable HDF5 file ({exc})".splitlines()[0]) from exc
    if is_snapshot:
        from pipeline.export import read_hdf5

        try:
            return list(read_hdf5(path))
        except SelfplayError:
            raise
        except Exception as exc:
            raise DataFileError(f"training data {path}: cannot read HDF5 ({exc})".splitlines()[0]) from exc
    return _read_hdf5_layout(path)


def _read_hdf5_layout(path: Path) -> list[Atoms]:
    """Fallback reader of the ragged layout: numbers, positions, forces (per atom);
    energy, cell, pbc, offsets (n_frames + 1), optional stress (n_frames, 6; NaN = none).
    Datasets may sit at the root or in a group named ``frames``."""
    import h5py
    from ase.calculators.singlepoint import SinglePointCalculator

    try:
        with h5py.File(path, "r") as handle:
            group = handle["frames"] if "frames" in handle and isinstance(handle["frames"], h5py.Group) else handle
            need = ["numbers", "positions", "energy", "offsets"]
            missing = [k for k in need if k not in group]
            if missing:
                raise DataFileError(f"training data {path}: HDF5 lacks datasets {missing}")
            numbers = np.asarray(group["numbers"][()], dtype=np.int64)
            positions = np.asarray(group["positions"][()], dtype=np.float64)
            energy = np.asarray(group["energy"][()], dtype=np.float64)
            offsets = np.asarray(group["offsets"][()], dtype=np.int64)
            forces = np.asarray(group["forces"][()], dtype=np.float64) if "forces" in group else None
            n = len(energy)
            cell = np.asarray(group["cell"][()], dtype=np.float64) if "cell" in group else np.zeros((n, 3, 3))
            pbc = np.asarray(group["pbc"][()], dtype=bool) if "pbc" in group else np.zeros((n, 3), bool)
            stress = np.asarray(group["stress"][()], dtype=np.float64) if "stress" in group else None
    except OSError as exc:
        raise DataFileError(f"training data {path}: not a readable HDF5 file ({exc})".splitlines()[0]) from exc
    if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(numbers) or np.any(np.diff(offsets) < 0):
        raise DataFileError(f"training data {path}: offsets do not match {n} frames of {len(numbers)} atoms")
    frames = []
    for f in range(n):
        lo, hi = offsets[f], offsets[f + 1]
        atoms = Atoms(numbers=numbers[lo:hi], positions=positions[lo:hi], cell=cell[f], pbc=pbc[f])
        results = {"energy": float(energy[f])}
        if forces is not None:
            results["forces"] = forces[lo:hi]
        if stress is not None and np.all(np.isfinite(stress[f])):
            results["stress"] = stress[f]
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def fit_element_refs(numbers_per_frame: list[np.ndarray], energies: np.ndarray, n_elements: int) -> np.ndarray:
    """Per-element reference energies: least squares of E_frame on element counts.

    Elements absent from the data get 0. The fit is minimum-norm when compositions are
    collinear (e.g. one element only in all frames: E ≈ n·e, unique anyway).
    """
    present = sorted({int(z) for numbers in numbers_per_frame for z in np.unique(numbers)})
    column = {z: c for c, z in enumerate(present)}
    counts = np.zeros((len(numbers_per_frame), len(present)))
    for row, numbers in enumerate(numbers_per_frame):
        zs, n = np.unique(numbers, return_counts=True)
        for z, c in zip(zs, n):
            counts[row, column[int(z)]] = c
    solution, *_ = np.linalg.lstsq(counts, np.asarray(energies, dtype=np.float64), rcond=None)
    refs = np.zeros(n_elements)
    for z, value in zip(present, solution):
        refs[z] = value
    return refs
