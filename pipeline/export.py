"""Snapshots of the labelled dataset: HDF5 and extended XYZ, streaming.

Both formats are readable without this project (h5py alone; ``ase.io.read``). Records
are streamed from the database in batches, so exporting a million frames never holds a
million objects in memory.

HDF5 layout (``schema_version`` 1); per-atom arrays are concatenated and frame ``i``
owns rows ``offsets[i]:offsets[i+1]``::

    /numbers     (N_atoms,)      uint8    atomic numbers
    /positions   (N_atoms, 3)    float64  Å
    /forces      (N_atoms, 3)    float64  eV/Å
    /offsets     (N_frames + 1,) int64
    /energy      (N_frames,)     float64  eV (force-consistent total energy)
    /cell        (N_frames, 3, 3) float64 Å, rows are lattice vectors
    /pbc         (N_frames, 3)   bool
    /stress      (N_frames, 6)   float64  eV/Å³, Voigt xx yy zz yz xz xy, NaN where unlabelled
    /frame_hash  (N_frames,)     S64      content hash (pipeline.hashing)
    /theory      (N_frames,)     int16    index into the root attribute ``theories``
    /generation  (N_frames,)     int32    generation that labelled the frame, -1 if imported
    /source      (N_frames,)     str      sampler or "import"
    /provenance  (N_frames,)     str      JSON

Root attributes: ``schema_version``, ``format`` = "selfplay-snapshot", ``units`` (JSON),
``theories`` (JSON list of level-of-theory keys), ``theory_specs`` (JSON), ``query``
(JSON), ``created_at``, ``selfplay_version``, ``n_frames``, ``n_atoms``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from pipeline import arrays
from pipeline.atoms import symbols_to_numbers
from pipeline.documents import Frame, Label
from pipeline.errors import DataFileError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
UNITS = {
    "energy": "eV",
    "positions": "Angstrom",
    "cell": "Angstrom",
    "forces": "eV/Angstrom",
    "stress": "eV/Angstrom^3 (Voigt xx yy zz yz xz xy)",
}
BATCH = 2000


@dataclass
class Record:
    """One labelled frame as plain arrays (cheaper than ``ase.Atoms`` when exporting)."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    frame_hash: str
    theory: str
    generation: int | None = None
    source: str = ""
    provenance: dict = field(default_factory=dict)

    def to_atoms(self) -> Atoms:
        atoms = Atoms(numbers=self.numbers.astype(int), positions=self.positions, cell=self.cell, pbc=self.pbc)
        results = {"energy": self.energy, "free_energy": self.energy, "forces": self.forces}
        if self.stress is not None:
            results["stress"] = self.stress
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(frame_hash=self.frame_hash, theory=self.theory, source=self.source)
        if self.generation is not None:
            atoms.info["generation"] = self.generation
        return atoms


def label_query(
    *,
    generation: int | None = None,
    until_generation: int | None = None,
    elements: Iterable[str] | None = None,
    theories: Iterable[str] | None = None,
) -> dict:
    """MongoDB filter on labels. ``elements``: frames made only of these elements."""
    query: dict = {}
    if generation is not None and until_generation is not None:
        raise DataFileError("give either a generation or an upper generation bound, not both")
    if generation is not None:
        query["generation"] = generation
    if until_generation is not None:
        query["generation"] = {"$lte": until_generation}
    if elements is not None:
        allowed = set(chemical_symbols[z] for z in symbols_to_numbers(list(elements)))
        # "no element outside the set": $nin on the array field, understood by every server.
        query["elements"] = {"$nin": [s for s in chemical_symbols[1:] if s not in allowed]}
    if theories is not None:
        query["theory"] = {"$in": list(theories)}
    return query


def iter_records(query: dict | None = None, batch_size: int = BATCH) -> Iterator[Record]:
    """Labelled frames matching ``query``, in insertion order, fetched in batches."""
    labels = Label._get_collection()
    frames = Frame._get_collection()
    cursor = labels.find(query or {}, sort=[("_id", 1)], batch_size=batch_size)
    batch: list[dict] = []

    def flush(batch):
        by_id = {d["_id"]: d for d in frames.find({"_id": {"$in": [label["frame"] for label in batch]}})}
        for label in batch:
            frame = by_id.get(label["frame"])
            if frame is None:
                log.warning("label %s points to a missing frame; skipped", label["_id"])
                continue
            n = frame["n_atoms"]
            yield Record(
                numbers=arrays.unpack(frame["numbers"], (n,), arrays.NUMBERS),
                positions=arrays.unpack(frame["positions"], (n, 3)),
                cell=arrays.unpack(frame["cell"], (3, 3)),
                pbc=np.array(frame["pbc"], dtype=bool),
                energy=label["energy"],
                forces=arrays.unpack(label["forces"], (n, 3)),
                stress=arrays.unpack(label.get("stress"), (6,)),
                frame_hash=frame["hash"],
                theory=label["theory"],
                generation=label.get("generation"),
                source=frame.get("source", ""),
                provenance=frame.get("provenance") or {},
            )

    for label in cursor:
        batch.append(label)
        if len(batch) >= batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


def iter_labelled(
    theories: Iterable[str] | None = None, *, elements: Iterable[str] | None = None, **query
) -> Iterator[Atoms]:
    for record in iter_records(label_query(theories=theories, elements=elements, **query)):
        yield record.to_atoms()


# ------------------------------------------------------------------------------ HDF5


class HDF5Writer:
    """Append records to a snapshot file in chunks; ``close()`` writes the attributes."""

    def __init__(self, path: Path, *, query: dict | None = None, theory_specs: dict | None = None):
        self.path = Path(path)
        self.file = h5py.File(self.path, "w")
        self.theories: list[str] = []
        self.theory_specs = theory_specs or {}
        self.query = query or {}
        self.n_frames = 0
        self.n_atoms = 0
        self._pending: list[Record] = []
        f = self.file
        string = h5py.string_dtype()

        def make(name, shape, dtype, chunk_rows):
            f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(chunk_rows, *shape))

        make("numbers", (), "u1", 65536)
        make("positions", (3,), "<f8", 16384)
        make("forces", (3,), "<f8", 16384)
        make("energy", (), "<f8", 4096)
        make("cell", (3, 3), "<f8", 4096)
        make("pbc", (3,), "bool", 4096)
        make("stress", (6,), "<f8", 4096)
        make("frame_hash", (), "S64", 4096)
        make("theory", (), "<i2", 4096)
        make("generation", (), "<i4", 4096)
        make("source", (), string, 4096)
        make("provenance", (), string, 4096)
        f.create_dataset("offsets", data=np.zeros(1, dtype="<i8"), maxshape=(None,), chunks=(4096,))

    def add(self, record: Record) -> None:
        self._pending.append(record)
        if len(self._pending) >= BATCH:
            self._flush()

    def _theory_index(self, theory: str) -> int:
        if theory not in self.theories:
            self.theories.append(theory)
        return self.theories.index(theory)

    def _flush(self) -> None:
        records = self._pending
        if not records:
            return
        self._pending = []
        f = self.file
        sizes = np.array([len(r.numbers) for r in records], dtype=np.int64)

        def append(name, values):
            dataset = f[name]
            start = dataset.shape[0]
            dataset.resize(start + len(values), axis=0)
            dataset[start:] = values

        append("numbers", np.concatenate([r.numbers for r in records]))
        append("positions", np.concatenate([r.positions for r in records]))
        append("forces", np.concatenate([r.forces for r in records]))
        append("offsets", self.n_atoms + np.cumsum(sizes))
        append("energy", np.array([r.energy for r in records], dtype=np.float64))
        append("cell", np.stack([r.cell for r in records]))
        append("pbc", np.stack([r.pbc for r in records]))
        nan6 = np.full(6, np.nan)
        append("stress", np.stack([nan6 if r.stress is None else r.stress for r in records]))
        append("frame_hash", np.array([r.frame_hash.encode() for r in records], dtype="S64"))
        append("theory", np.array([self._theory_index(r.theory) for r in records], dtype=np.int16))
        append("generation", np.array([-1 if r.generation is None else r.generation for r in records], dtype=np.int32))
        append("source", [r.source for r in records])
        append("provenance", [json.dumps(r.provenance, sort_keys=True, default=str) for r in records])
        self.n_frames += len(records)
        self.n_atoms += int(sizes.sum())

    def close(self) -> None:
        from pipeline import __version__

        self._flush()
        attrs = self.file.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        attrs["format"] = "selfplay-snapshot"
        attrs["units"] = json.dumps(UNITS)
        attrs["theories"] = json.dumps(self.theories)
        attrs["theory_specs"] = json.dumps({t: self.theory_specs.get(t, {}) for t in self.theories}, default=str)
        attrs["query"] = json.dumps(self.query, default=str)
        attrs["created_at"] = datetime.now(timezone.utc).isoformat()
        attrs["selfplay_version"] = __version__
        attrs["n_frames"] = self.n_frames
        attrs["n_atoms"] = self.n_atoms
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_hdf5(path: Path | str, batch_size: int = BATCH) -> Iterator[Atoms]:
    """Frames of a snapshot as ``ase.Atoms`` with a SinglePointCalculator, streamed."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("format") != "selfplay-snapshot":
            raise DataFileError(f"{path}: not a selfplay snapshot (missing format attribute)")
        version = int(f.attrs["schema_version"])
        if version > SCHEMA_VERSION:
            raise DataFileError(f"{path}: schema version {version} is newer than this selfplay understands")
        theories = json.loads(f.attrs["theories"])
        offsets = f["offsets"][:]
        n_frames = len(offsets) - 1
        for start in range(0, n_frames, batch_size):
            stop = min(start + batch_size, n_frames)
            a0, a1 = offsets[start], offsets[stop]
            numbers = f["numbers"][a0:a1]
            positions = f["positions"][a0:a1]
            forces = f["forces"][a0:a1]
            energy = f["energy"][start:stop]
            cell = f["cell"][start:stop]
            pbc = f["pbc"][start:stop]
            stress = f["stress"][start:stop]
            hashes = f["frame_hash"][start:stop]
            theory = f["theory"][start:stop]
            generation = f["generation"][start:stop]
            source = f["source"].asstr()[start:stop]
            for k in range(stop - start):
                lo, hi = offsets[start + k] - a0, offsets[start + k + 1] - a0
                record = Record(
                    numbers=numbers[lo:hi],
                    positions=positions[lo:hi],
                    cell=cell[k],
                    pbc=pbc[k],
                    energy=float(energy[k]),
                    forces=forces[lo:hi],
                    stress=None if np.isnan(stress[k]).all() else stress[k],
                    frame_hash=hashes[k].decode(),
                    theory=theories[theory[k]],
                    generation=None if generation[k] < 0 else int(generation[k]),
                    source=source[k],
                )
                yield record.to_atoms()


# --------------------------------------------------------------------------- extxyz


def _fmt(values: Iterable[float]) -> str:
    # 17 significant digits: every float64 reads back bit for bit.
    return " ".join(f"{v:.17g}" for v in values)


def write_extxyz_record(handle, record: Record) -> None:
    n = len(record.numbers)
    header = []
    if record.pbc.any() or np.any(record.cell):
        header.append(f'Lattice="{_fmt(record.cell.ravel())}"')
    header.append("Properties=species:S:1:pos:R:3:forces:R:3")
    header.append(f"energy={record.energy:.17g}")
    if record.stress is not None:
        s = record.stress
        full = [s[0], s[5], s[4], s[5], s[1], s[3], s[4], s[3], s[2]]
        header.append(f'stress="{_fmt(full)}"')
    header.append('pbc="' + " ".join("T" if p else "F" for p in record.pbc) + '"')
    header.append(f"frame_hash={record.frame_hash}")
    header.append(f"theory={record.theory}")
    if record.generation is not None:
        header.append(f"generation={record.generation}")
    if record.source:
        header.append(f"source={record.source}")
    lines = [str(n), " ".join(header)]
    symbols = [chemical_symbols[z] for z in record.numbers]
    for symbol, pos, force in zip(symbols, record.positions, record.forces):
        lines.append(f"{symbol} {_fmt(pos)} {_fmt(force)}")
    handle.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- entry


@dataclass
class ExportSummary:
    path: Path
    format: str
    n_frames: int
    n_atoms: int


def export_snapshot(
    out: Path,
    *,
    format: str = "hdf5",
    generation: int | None = None,
    until_generation: int | None = None,
    elements: Iterable[str] | None = None,
    theories: Iterable[str] | None = None,
    progress: bool = False,
) -> ExportSummary:
    """Write the labels matching the filters to ``out``; returns what was written.

    The file is written under a temporary name and renamed at the end, so a crash never
    leaves a half-written snapshot under the requested name.
    """
    if format not in ("hdf5", "extxyz"):
        raise DataFileError(f"unknown export format {format!r} (choose hdf5 or extxyz)")
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    query = label_query(generation=generation, until_generation=until_generation, elements=elements, theories=theories)
    total = Label._get_collection().count_documents(query)
    tmp = out.with_name(out.name + ".partial")
    records = iter_records(query)
    n_frames = n_atoms = 0
    bar = _progress(progress, total, f"export {format}")
    try:
        if format == "hdf5":
            specs = {d["theory"]: d.get("theory_spec", {}) for d in Label._get_collection().find(query, {"theory": 1, "theory_spec": 1})}
            with HDF5Writer(tmp, query=query, theory_specs=specs) as writer:
                for record in records:
                    writer.add(record)
                    n_frames += 1
                    n_atoms += len(record.numbers)
                    bar.advance()
        else:
            with open(tmp, "w") as handle:
                for record in records:
                    write_extxyz_record(handle, record)
                    n_frames += 1
                    n_atoms += len(record.numbers)
                    bar.advance()
        tmp.replace(out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    log.info("exported %d frames (%d atoms) to %s", n_frames, n_atoms, out)
    return ExportSummary(path=out, format=format, n_frames=n_frames, n_atoms=n_atoms)


class _progress:
    """A rich progress bar when asked for, otherwise nothing (library calls stay quiet)."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.progress = None
        if enabled:
            from rich.progress import Progress

            self.progress = Progress(transient=True)
            self.progress.start()
            self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
