"""Reading frames from files: the one reader of every file kind the project reads.

``selfplay db import`` (:mod:`pipeline.importer`), the training data
(:func:`potential.read_frames`), the samplers' input and output
(:func:`samplers.frames.read_frames`), ``selfplay label`` and ``selfplay predict`` all
read through :func:`read_frames`:

* HDF5, recognised by its magic bytes (not by the file name): selfplay's snapshots
  (:func:`pipeline.export.read_hdf5`), or any file of the same ragged layout
  (:func:`read_hdf5_layout`);
* everything else through ``ase.io.read(path, index=":")``: extxyz, VASP OUTCAR and
  vasprun.xml, FHI-aims, CASTEP, ASE trajectories, ...

Each problem is one :class:`~pipeline.errors.DataFileError` naming the file (and the
frame): a missing file, an unreadable one, an empty one, a bad structure, missing labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms

from pipeline.arrays import labels_of
from pipeline.atoms import check_atoms
from pipeline.errors import DataFileError, InvalidStructure, SelfplayError

#: The first eight bytes of every HDF5 file.
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: How the file kinds are called in messages ("not a readable extended XYZ file").
KIND_NAMES = {"extxyz": "extended XYZ", "hdf5": "HDF5"}


def is_hdf5(path: Path | str) -> bool:
    """Whether ``path`` starts with the HDF5 magic bytes (whatever its name)."""
    with open(path, "rb") as handle:
        return handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC


def read_frames(
    path: Path | str,
    *,
    require_labels: bool = False,
    check: bool = True,
    format: str | None = None,
    allow_empty: bool = False,
    index: str = ":",
) -> list[Atoms]:
    """All frames of ``path``: a selfplay HDF5 snapshot (or the same layout), or any file
    ``ase.io.read`` understands (``format`` forces an ASE format, e.g. "extxyz").

    With ``check`` every frame passes :func:`pipeline.atoms.check_atoms`; with
    ``require_labels`` every frame must carry a finite energy and forces of the right
    shape. An empty file (or one holding no frames) is an error unless ``allow_empty``,
    when it holds no frames. Raises :class:`DataFileError` naming the file (and frame)
    on any problem.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path} does not exist (no such file)")
    if path.is_dir():
        raise DataFileError(f"{path} is a directory, not a file of frames")
    if path.stat().st_size == 0:
        if allow_empty:
            return []
        raise DataFileError(f"{path}: file is empty")
    kind = "hdf5" if is_hdf5(path) else format
    try:
        if kind == "hdf5":
            frames = _read_hdf5(path)
        else:
            import ase.io

            frames = ase.io.read(path, index=index, format=format)
            if isinstance(frames, Atoms):
                frames = [frames]
    except SelfplayError:
        raise
    except KeyError as exc:  # ASE's symbol lookup: the only KeyError its readers raise on content
        raise DataFileError(f"{path}: unknown element symbol {exc.args[0]!r}") from None
    except Exception as exc:  # ASE and h5py raise many exception types for unreadable files
        message = " ".join(str(exc).split()) or type(exc).__name__
        what = KIND_NAMES.get(kind, "structure")
        raise DataFileError(f"{path}: not a readable {what} file ({type(exc).__name__}: {message[:200]})") from None
    if not frames and not allow_empty:
        raise DataFileError(f"{path}: contains no frames")
    for i, atoms in enumerate(frames):
        name = f"{path} frame {i}"
        if check:
            try:
                check_atoms(atoms, name)
            except InvalidStructure as exc:
                raise DataFileError(str(exc)) from None
        if require_labels:
            label_arrays(atoms, name)
    return frames


#: Where a frame names its level of theory in ``atoms.info``: selfplay's exports write
#: ``theory``, ``selfplay label`` writes ``dft_theory_key``. Either way the labels are stored
#: under the key their labeller gave them, so a generation with the same labeller settings
#: trains on them (``selfplay label ... && selfplay db import`` seeds the store).
THEORY_INFO_KEYS = ("theory", "dft_theory_key")


def info_theory(atoms: Atoms) -> str | None:
    """The level-of-theory key ``atoms.info`` names (None when it names none)."""
    for key in THEORY_INFO_KEYS:
        if atoms.info.get(key):
            return str(atoms.info[key])
    return None


def label_arrays(atoms: Atoms, name: str) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Energy, forces and stress (Voigt, or None) carried by ``atoms``; raises
    :class:`DataFileError` naming ``name`` if missing or malformed (see
    :func:`pipeline.arrays.labels_of`)."""
    return labels_of(atoms, name, error=DataFileError)


def _read_hdf5(path: Path) -> list[Atoms]:
    """A selfplay snapshot through :func:`pipeline.export.read_hdf5`; any other HDF5 file
    through :func:`read_hdf5_layout`."""
    import h5py

    with h5py.File(path, "r") as handle:
        is_snapshot = handle.attrs.get("format") == "selfplay-snapshot"
    if is_snapshot:
        from pipeline.export import read_hdf5

        return list(read_hdf5(path))
    return read_hdf5_layout(path)


def read_hdf5_layout(path: Path | str) -> list[Atoms]:
    """Frames of an HDF5 file in the snapshot's ragged layout without its attributes:
    numbers, positions, forces (per atom); energy, cell, pbc, offsets (n_frames + 1),
    optional stress (n_frames, 6; NaN = none). Datasets may sit at the root or in a group
    named ``frames``."""
    import h5py
    from ase.calculators.singlepoint import SinglePointCalculator

    path = Path(path)
    with h5py.File(path, "r") as handle:
        group = handle["frames"] if "frames" in handle and isinstance(handle["frames"], h5py.Group) else handle
        need = ["numbers", "positions", "energy", "offsets"]
        missing = [k for k in need if k not in group]
        if missing:
            raise DataFileError(f"{path}: HDF5 lacks datasets {missing}")
        numbers = np.asarray(group["numbers"][()], dtype=np.int64)
        positions = np.asarray(group["positions"][()], dtype=np.float64)
        energy = np.asarray(group["energy"][()], dtype=np.float64)
        offsets = np.asarray(group["offsets"][()], dtype=np.int64)
        forces = np.asarray(group["forces"][()], dtype=np.float64) if "forces" in group else None
        n = len(energy)
        cell = np.asarray(group["cell"][()], dtype=np.float64) if "cell" in group else np.zeros((n, 3, 3))
        pbc = np.asarray(group["pbc"][()], dtype=bool) if "pbc" in group else np.zeros((n, 3), bool)
        stress = np.asarray(group["stress"][()], dtype=np.float64) if "stress" in group else None
    if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(numbers) or np.any(np.diff(offsets) < 0):
        raise DataFileError(f"{path}: offsets do not match {n} frames of {len(numbers)} atoms")
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
