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
from pipeline.errors import DataFileError
from pipeline.frames_io import read_frames as read_frame_file

log = logging.getLogger(__name__)

#: The names of HDF5 files a training-data directory contributes, besides .xyz/.extxyz
#: (how a file is read is decided by its content, not its name).
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
    """Labelled frames of a file (extxyz or any ASE format; HDF5 export or layout, by its
    magic bytes) or of every .xyz/.extxyz/.h5 file in a directory (sorted by name).

    Files are read by :func:`pipeline.frames_io.read_frames`; structures are checked where
    the model builds its graph (:func:`potential.graph.validate_frame`).
    """
    path = Path(path)
    if path.is_dir():
        frames: list[Atoms] = []
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in HDF5_SUFFIXES | {".xyz", ".extxyz"})
        if not files:
            raise DataFileError(f"training data directory {path} holds no .xyz/.extxyz/.h5 files")
        for file in files:
            frames.extend(read_frames(file))
        return frames
    return read_frame_file(path, check=False)


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
