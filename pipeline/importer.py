"""Reading labelled frames from files and importing them into the store.

Anything ``ase.io.read`` understands that carries energies and forces (extxyz, VASP
OUTCAR/vasprun.xml, FHI-aims, CASTEP, ...) and selfplay's own HDF5 snapshots. A file is
validated whole before anything is written, and if the database fails half-way the
frames and labels this import created are removed again: a file is imported entirely
or not at all. Files are read by :func:`pipeline.frames_io.read_frames`, structures and
labels checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ase import Atoms

# The one frame reader (any ASE format, HDF5 by its magic bytes) lives in
# pipeline.frames_io; its names stay importable from here.
from pipeline.frames_io import info_theory, is_hdf5, label_arrays, read_frames  # noqa: F401

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    path: Path
    frames: int
    new_frames: int
    new_labels: int
    theory: str


def file_theory(path: Path) -> str:
    """Without a name from the user or the file, the format names the source (vasp-out,
    aims-output, castep-castep, extxyz, ...): labels from different codes never mix."""
    try:
        from ase.io.formats import filetype

        kind = filetype(str(path), guess=True)
    except Exception:
        kind = path.suffix.lstrip(".") or "file"
    return f"import:{kind}"


def import_file(path: Path | str, *, theory: str | None = None, batch_size: int = 1000) -> ImportReport:
    """Import one file's labelled frames; all or nothing."""
    from pipeline.store import add_labelled_frames, remove_created

    path = Path(path)
    frames = read_frames(path, require_labels=True)
    labels = [label_arrays(atoms, f"{path} frame {i}") for i, atoms in enumerate(frames)]
    # The file's format is looked up once (filetype() opens the file), not once per frame.
    named = [info_theory(a) for a in frames]
    fallback = theory or (None if all(named) else file_theory(path))
    keys = [theory or name or fallback for name in named]
    resolved = str(path.resolve())
    created_frames, created_labels = [], []
    try:
        # One bulk insert per (theory, batch): a file normally holds a single theory.
        for key in dict.fromkeys(keys):
            indices = [i for i, k in enumerate(keys) if k == key]
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                result = add_labelled_frames(
                    [frames[i] for i in chunk],
                    [labels[i] for i in chunk],
                    theory=key,
                    source="import",
                    theory_spec={"source_file": path.name, "format": key.removeprefix("import:")},
                    provenance=[{"file": resolved, "index": i} for i in chunk],
                    label_generation=[_generation(frames[i]) for i in chunk],
                )
                created_frames += result.created_frames
                created_labels += result.created_labels
    except BaseException:
        # Undo this file's writes so a failed import leaves nothing behind.
        remove_created(created_frames, created_labels)
        raise
    report = ImportReport(
        path=path,
        frames=len(frames),
        new_frames=len(created_frames),
        new_labels=len(created_labels),
        theory=", ".join(sorted(set(keys))),
    )
    log.info("imported %s: %d frames, %d new, %d new labels", path, report.frames, report.new_frames, report.new_labels)
    return report


def _generation(atoms: Atoms) -> int | None:
    value = atoms.info.get("generation")
    return None if value is None else int(value)


def import_files(paths: Iterable[Path | str], *, theory: str | None = None) -> list[ImportReport]:
    return [import_file(p, theory=theory) for p in paths]
