"""Snapshots of the labelled dataset: HDF5 and extended XYZ, streaming.

Both formats are readable without this project (h5py alone; ``ase.io.read``). Records
are streamed from the database in batches of columns (:class:`RecordBatch`), so exporting
a million frames never holds a million objects in memory. Frames come in frame order
(the order they were first stored), the labels of one frame by level of theory.

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

Every dataset is resizable, chunked to the size of the snapshot and deflate-compressed
(with the shuffle filter on multi-byte numbers): filters built into every HDF5 library,
so h5py alone reads the file (:class:`HDF5Writer`).

Root attributes: ``schema_version``, ``format`` = "selfplay-snapshot", ``units`` (JSON),
``theories`` (JSON list of level-of-theory keys), ``theory_specs`` (JSON), ``query``
(JSON), ``created_at``, ``selfplay_version``, ``n_frames``, ``n_atoms``.
"""

from __future__ import annotations

import itertools
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
from pipeline.errors import DataFileError, StoreError

log = logging.getLogger(__name__)

#: 2: the electronic state (magmoms per atom, multiplicity and smeared per frame).
SCHEMA_VERSION = 2
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
    #: The electronic state: per-atom spin moments, 2S+1, smeared free energy or not.
    magmoms: np.ndarray | None = None
    multiplicity: int | None = None
    smeared: bool = False

    def to_atoms(self) -> Atoms:
        atoms = Atoms(numbers=self.numbers.astype(int), positions=self.positions, cell=self.cell, pbc=self.pbc)
        results = {"energy": self.energy, "free_energy": self.energy, "forces": self.forces}
        if self.stress is not None:
            results["stress"] = self.stress
        if self.magmoms is not None:
            results["magmoms"] = self.magmoms
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(frame_hash=self.frame_hash, theory=self.theory, source=self.source, smeared=self.smeared)
        if self.generation is not None:
            atoms.info["generation"] = self.generation
        if self.multiplicity is not None:
            atoms.info["multiplicity"] = self.multiplicity
        return atoms


def label_query(
    *,
    generation: int | None = None,
    until_generation: int | None = None,
    elements: Iterable[str] | None = None,
    theories: Iterable[str] | None = None,
    smeared: bool | None = None,
) -> dict:
    """MongoDB filter on labels. ``elements``: frames made only of these elements;
    ``smeared``: only smeared (True) or only integer-occupation (False) labels."""
    query: dict = {}
    if smeared is not None:
        # Labels stored before the field existed are integer-occupation ones.
        query["smeared"] = True if smeared else {"$ne": True}
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


#: Fields the export reads; the rest (uncertainties, timings, info) stays on the server.
LABEL_FIELDS = {
    "frame": 1, "theory": 1, "theory_spec": 1, "energy": 1, "forces": 1, "stress": 1, "generation": 1,
    "magmoms": 1, "multiplicity": 1, "smeared": 1,
}
FRAME_FIELDS = {"hash": 1, "n_atoms": 1, "numbers": 1, "positions": 1, "cell": 1, "pbc": 1, "source": 1, "provenance": 1}

#: Join labels to frames by walking both collections in frame order when at least this
#: fraction of the frames is selected; sparser selections look their frames up by _id.
MERGE_JOIN_FRACTION = 0.25


@dataclass
class RecordBatch:
    """Many labelled frames as columns: per-atom arrays concatenated, one row per frame.

    This is what the HDF5 writer stores, dataset by dataset, so an export touches numpy
    once per batch instead of once per frame. Frame ``i`` owns atoms
    ``offsets[i]:offsets[i+1]``; ``generation`` is -1 and ``stress`` NaN where unset.
    """

    numbers: np.ndarray  # (N_atoms,) uint8
    positions: np.ndarray  # (N_atoms, 3)
    forces: np.ndarray  # (N_atoms, 3)
    offsets: np.ndarray  # (n + 1,) int64, starting at 0
    energy: np.ndarray  # (n,)
    cell: np.ndarray  # (n, 3, 3)
    pbc: np.ndarray  # (n, 3) bool
    stress: np.ndarray  # (n, 6), NaN rows where has_stress is False
    has_stress: np.ndarray  # (n,) bool
    frame_hash: list[str]
    theory: list[str]
    generation: np.ndarray  # (n,) int32, -1 = none
    source: list[str]
    provenance: list[dict]
    magmoms: np.ndarray  # (N_atoms,), NaN for frames whose label has none
    multiplicity: np.ndarray  # (n,) int16, -1 = not recorded
    smeared: np.ndarray  # (n,) bool
    theory_specs: dict[str, dict] = field(default_factory=dict)  # first spec seen per theory

    def __len__(self) -> int:
        return len(self.energy)

    @classmethod
    def from_pairs(cls, pairs: list[tuple[dict, dict]]) -> "RecordBatch":
        """Columns of ``(label document, frame document)`` pairs as the driver returns them."""
        n = len(pairs)
        labels = [label for label, _ in pairs]
        frames = [frame for _, frame in pairs]
        sizes = np.fromiter((f["n_atoms"] for f in frames), dtype=np.int64, count=n)
        forces = [label["forces"] for label in labels]
        positions = [f["positions"] for f in frames]
        numbers = [f["numbers"] for f in frames]
        for name, chunks, width in (("forces", forces, 24), ("positions", positions, 24), ("numbers", numbers, 1)):
            lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
            bad = np.flatnonzero(lengths != sizes * width)
            if bad.size:
                k = int(bad[0])
                raise StoreError(
                    f"label {labels[k]['_id']}: stored {name} hold {lengths[k] // width} atoms, the frame has {sizes[k]}"
                )
        stresses = [label.get("stress") for label in labels]
        has_stress = np.fromiter((s is not None for s in stresses), dtype=bool, count=n)
        stress = np.full((n, 6), np.nan)
        if has_stress.any():
            stress[has_stress] = arrays.unpack_many([s for s in stresses if s is not None], (6,))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        magmoms = np.full(int(offsets[-1]), np.nan)
        for k, label in enumerate(labels):
            packed = label.get("magmoms")
            if packed is not None:
                magmoms[offsets[k] : offsets[k + 1]] = arrays.unpack(packed, (int(sizes[k]),))
        specs: dict[str, dict] = {}
        for label in labels:
            if label["theory"] not in specs:
                specs[label["theory"]] = label.get("theory_spec") or {}
        return cls(
            numbers=arrays.unpack_many(numbers, (), arrays.NUMBERS),
            positions=arrays.unpack_many(positions, (3,)),
            forces=arrays.unpack_many(forces, (3,)),
            offsets=offsets,
            energy=np.fromiter((label["energy"] for label in labels), dtype=np.float64, count=n),
            cell=arrays.unpack_many([f["cell"] for f in frames], (3, 3)),
            pbc=np.array([f["pbc"] for f in frames], dtype=bool).reshape(n, 3),
            stress=stress,
            has_stress=has_stress,
            frame_hash=[f["hash"] for f in frames],
            theory=[label["theory"] for label in labels],
            generation=np.fromiter(
                (-1 if label.get("generation") is None else label["generation"] for label in labels),
                dtype=np.int32,
                count=n,
            ),
            source=[f.get("source") or "" for f in frames],
            provenance=[f.get("provenance") or {} for f in frames],
            magmoms=magmoms,
            multiplicity=np.fromiter(
                (-1 if label.get("multiplicity") is None else label["multiplicity"] for label in labels),
                dtype=np.int16,
                count=n,
            ),
            smeared=np.fromiter((bool(label.get("smeared")) for label in labels), dtype=bool, count=n),
            theory_specs=specs,
        )

    @classmethod
    def from_records(cls, records: list["Record"]) -> "RecordBatch":
        n = len(records)
        sizes = np.fromiter((len(r.numbers) for r in records), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        has_stress = np.fromiter((r.stress is not None for r in records), dtype=bool, count=n)
        stress = np.full((n, 6), np.nan)
        for k, r in enumerate(records):
            if r.stress is not None:
                stress[k] = r.stress
        empty3 = np.zeros((0, 3))
        return cls(
            numbers=np.concatenate([np.asarray(r.numbers, dtype=arrays.NUMBERS) for r in records] or [np.zeros(0, arrays.NUMBERS)]),
            positions=np.concatenate([np.asarray(r.positions, dtype=np.float64) for r in records] or [empty3]),
            forces=np.concatenate([np.asarray(r.forces, dtype=np.float64) for r in records] or [empty3]),
            offsets=offsets,
            energy=np.array([r.energy for r in records], dtype=np.float64),
            cell=np.array([r.cell for r in records], dtype=np.float64).reshape(n, 3, 3),
            pbc=np.array([r.pbc for r in records], dtype=bool).reshape(n, 3),
            stress=stress,
            has_stress=has_stress,
            frame_hash=[r.frame_hash for r in records],
            theory=[r.theory for r in records],
            generation=np.array([-1 if r.generation is None else r.generation for r in records], dtype=np.int32),
            source=[r.source for r in records],
            provenance=[r.provenance for r in records],
            magmoms=np.concatenate(
                [np.full(len(r.numbers), np.nan) if r.magmoms is None else np.asarray(r.magmoms, dtype=np.float64)
                 for r in records] or [np.zeros(0)]
            ),
            multiplicity=np.array([-1 if r.multiplicity is None else r.multiplicity for r in records], dtype=np.int16),
            smeared=np.array([r.smeared for r in records], dtype=bool),
        )

    def records(self) -> Iterator["Record"]:
        for k in range(len(self)):
            lo, hi = self.offsets[k], self.offsets[k + 1]
            yield Record(
                numbers=self.numbers[lo:hi],
                positions=self.positions[lo:hi],
                cell=self.cell[k],
                pbc=self.pbc[k],
                energy=float(self.energy[k]),
                forces=self.forces[lo:hi],
                stress=self.stress[k] if self.has_stress[k] else None,
                frame_hash=self.frame_hash[k],
                theory=self.theory[k],
                generation=None if self.generation[k] < 0 else int(self.generation[k]),
                source=self.source[k],
                provenance=self.provenance[k],
                **_state(self.magmoms[lo:hi], self.multiplicity[k], self.smeared[k]),
            )


def _state(magmoms: np.ndarray, multiplicity, smeared) -> dict:
    """Record fields of the electronic state from their column values (NaN/-1 = none)."""
    return {
        "magmoms": None if len(magmoms) == 0 or np.isnan(magmoms).all() else np.array(magmoms),
        "multiplicity": None if multiplicity < 0 else int(multiplicity),
        "smeared": bool(smeared),
    }


def iter_batches(
    query: dict | None = None, batch_size: int | None = None, *, selected: int | None = None
) -> Iterator[RecordBatch]:
    """Labelled frames matching ``query`` as :class:`RecordBatch` columns of ``batch_size``
    (default :data:`BATCH`, read when called).

    Order: by frame (insertion order of the frames), then by level of theory. Labels are
    joined to their frames without a query per batch when the selection is dense (see
    :data:`MERGE_JOIN_FRACTION`): both collections are read once, in frame order, and
    merged; servers without a usable index for ``$in`` (FerretDB's SQLite backend scans
    the whole collection for each such query) would otherwise read the frames once per
    batch. ``selected``: the number of matching labels, if the caller counted them already.
    """
    batch_size = BATCH if batch_size is None else batch_size
    pairs: list[tuple[dict, dict]] = []
    for pair in _joined(query or {}, batch_size, selected):
        pairs.append(pair)
        if len(pairs) >= batch_size:
            yield RecordBatch.from_pairs(pairs)
            pairs = []
    if pairs:
        yield RecordBatch.from_pairs(pairs)


def iter_records(query: dict | None = None, batch_size: int = BATCH) -> Iterator[Record]:
    """Labelled frames matching ``query`` one by one, in the order of :func:`iter_batches`."""
    for batch in iter_batches(query, batch_size):
        yield from batch.records()


def _joined(query: dict, batch_size: int, selected: int | None) -> Iterator[tuple[dict, dict]]:
    import pymongo.collection

    labels = Label._get_collection()
    frames = Frame._get_collection()
    server = isinstance(labels, pymongo.collection.Collection)
    if server:
        # A real server sorts with the unique (frame, theory) index; allowDiskUse keeps a
        # filtered export from hitting the 100 MB in-memory sort limit. Projections keep
        # uncertainties, timings and info on the server.
        options = {"allow_disk_use": True}
        label_fields, frame_fields = LABEL_FIELDS, FRAME_FIELDS
    else:
        # The embedded store sorts in memory, warns about allowDiskUse, and projects in
        # Python, which costs more than copying whole documents.
        options, label_fields, frame_fields = {}, None, None
    cursor = labels.find(query, label_fields, sort=[("frame", 1), ("theory", 1)], **options)
    try:
        if _dense(query, labels, frames, selected):
            frame_cursor = lambda lo: frames.find({"_id": {"$gte": lo}}, frame_fields, sort=[("_id", 1)])  # noqa: E731
            yield from _merge_join(cursor, frame_cursor, prefetch=server)
        else:
            yield from _lookup_join(cursor, frames, frame_fields, batch_size)
    finally:
        cursor.close()


def _dense(query: dict, labels, frames, selected: int | None) -> bool:
    if not query:
        return True
    n_frames = frames.estimated_document_count()
    if selected is None:
        selected = labels.count_documents(query)
    return selected >= MERGE_JOIN_FRACTION * n_frames


def _merge_join(label_cursor, open_frames, *, prefetch: bool) -> Iterator[tuple[dict, dict]]:
    """Labels sorted by frame merged with frames sorted by _id, both read once.

    With ``prefetch`` each cursor is drained by its own thread into a small bounded queue,
    so that the server works on both queries at once while we decode and write (the
    driver waits on sockets without the GIL); memory stays bounded by the queue depth.
    """
    first = next(label_cursor, None)
    if first is None:
        return
    frame_cursor = open_frames(first["frame"])
    labels_in = itertools.chain([first], label_cursor)
    frames_in: Iterator[dict] = frame_cursor
    readers = []
    if prefetch:
        readers = [_Prefetch(labels_in), _Prefetch(frame_cursor)]
        labels_in, frames_in = iter(readers[0]), iter(readers[1])
    try:
        frame = next(frames_in, None)
        for label in labels_in:
            target = label["frame"]
            while frame is not None and frame["_id"] < target:
                frame = next(frames_in, None)
            if frame is not None and frame["_id"] == target:
                yield label, frame
            else:
                log.warning("label %s points to a missing frame; skipped", label["_id"])
    finally:
        for reader in readers:
            reader.stop()
        frame_cursor.close()


class _Prefetch:
    """Iterate ``source`` in a daemon thread, handing over lists of documents through a
    bounded queue; exceptions are re-raised in the consumer."""

    CHUNK = 256
    DEPTH = 8

    def __init__(self, source: Iterator):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(self.DEPTH)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="export-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source) -> None:
        chunk: list = []
        try:
            for item in source:
                chunk.append(item)
                if len(chunk) >= self.CHUNK:
                    if not self._put(chunk):
                        return
                    chunk = []
            if chunk and not self._put(chunk):
                return
            self._put(None)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=30)


def _lookup_join(label_cursor, frames, frame_fields, batch_size: int) -> Iterator[tuple[dict, dict]]:
    def flush(batch):
        ids = list({b["frame"] for b in batch})
        by_id = {d["_id"]: d for d in frames.find({"_id": {"$in": ids}}, frame_fields)}
        for label in batch:
            frame = by_id.get(label["frame"])
            if frame is None:
                log.warning("label %s points to a missing frame; skipped", label["_id"])
                continue
            yield label, frame

    batch: list[dict] = []
    for label in label_cursor:
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


#: Uncompressed bytes per chunk of every dataset (fewer rows when the snapshot holds
#: fewer). Measured on 5000 frames (benchmarks/results/snapshot.md): 16 KiB chunks
#: compress 4 % worse, 64-256 KiB alike; reading one frame decompresses a whole chunk,
#: so random access slows with the chunk size; from 1 MiB (h5py's default chunk cache)
#: the chunk a batch leaves partly filled does not stay cached: it is written, then
#: written again elsewhere when the next batch fills it, and the file keeps both.
CHUNK_BYTES = 128 * 1024
#: Deflate level of every dataset. Levels 6 and 9 save 1-2 % more on the float columns
#: (the bulk of a snapshot) and take 1.2-5 times as long (benchmarks/results/snapshot.md).
#: Deflate and shuffle are built into every HDF5 library; lzf, smaller savings, is h5py's
#: own, and other filters need plugins.
GZIP_LEVEL = 1
#: Bytes one variable-length string takes in its dataset: a global-heap reference
#: (length, collection address, index). The characters live in the heap, unfiltered.
VLEN_REFERENCE_BYTES = 16
STRING = h5py.string_dtype()
#: File format of HDF5 1.10 (2016), lower and upper bound: its chunk indexes (extensible
#: arrays for resizable datasets) make a small dataset cost about 0.7 KiB of metadata
#: where the 1.8 format's B-trees cost 2.4 KiB (13 datasets: more than the data of a
#: 16-frame snapshot). Current h5py builds only against HDF5 1.10.4 or newer (its PyPI
#: page), so any recent h5py reads it; the upper bound keeps newer libraries from
#: writing objects that HDF5 1.10 cannot read.
LIBVER = ("v110", "v110")

#: Per-atom datasets, ``name: (shape of one row, dtype)``, filled from the
#: :class:`RecordBatch` attribute of the same name (rows of all frames concatenated).
ATOM_COLUMNS: dict[str, tuple[tuple[int, ...], object]] = {
    "numbers": ((), "u1"),
    "positions": ((3,), "<f8"),
    "forces": ((3,), "<f8"),
    "magmoms": ((), "<f8"),
}
#: Per-frame datasets, one row per frame (``offsets`` one more, starting with 0).
FRAME_COLUMNS: dict[str, tuple[tuple[int, ...], object]] = {
    "offsets": ((), "<i8"),
    "energy": ((), "<f8"),
    "cell": ((3, 3), "<f8"),
    "pbc": ((3,), "bool"),
    "stress": ((6,), "<f8"),
    "frame_hash": ((), "S64"),
    "theory": ((), "<i2"),
    "generation": ((), "<i4"),
    "source": ((), STRING),
    "provenance": ((), STRING),
    "multiplicity": ((), "<i2"),
    "smeared": ((), "bool"),
}


def chunk_rows(row_shape: tuple[int, ...], dtype, expected_rows: int, chunk_bytes: int) -> int:
    """Rows per chunk: about ``chunk_bytes`` uncompressed, at most ``expected_rows``, at least 1."""
    dtype = np.dtype(dtype)
    item = VLEN_REFERENCE_BYTES if dtype.kind == "O" else dtype.itemsize
    row_bytes = item * int(np.prod(row_shape, dtype=np.int64))
    return max(1, min(int(expected_rows), chunk_bytes // row_bytes))


class HDF5Writer:
    """Append records to a snapshot file batch by batch; ``close()`` writes the attributes.

    Datasets are resizable, chunked and deflate-compressed (with the shuffle filter on
    multi-byte numbers, which puts the bytes of equal significance together). A chunk
    holds about ``chunk_bytes`` (default :data:`CHUNK_BYTES`) but never more rows than
    the snapshot is expected to hold, so a small snapshot costs about what its numbers
    cost. The datasets are created with the first batch: ``expected_frames`` (e.g. the
    number of labels the export selects) and that batch's atoms per frame estimate the
    sizes; without it the first batch is taken for the whole snapshot. The estimate only
    shapes the chunks: any number of rows can be appended.
    """

    def __init__(
        self,
        path: Path,
        *,
        query: dict | None = None,
        theory_specs: dict | None = None,
        expected_frames: int | None = None,
        chunk_bytes: int | None = None,
    ):
        self.path = Path(path)
        self.file = h5py.File(self.path, "w", libver=LIBVER)
        self.theories: list[str] = []
        self.theory_specs = theory_specs or {}
        self.query = query or {}
        self.expected_frames = expected_frames
        self.chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self.n_frames = 0
        self.n_atoms = 0
        self._pending: list[Record] = []
        self._theory_index: dict[str, int] = {}

    def _create(self, n_frames: int, n_atoms: int) -> None:
        """All datasets, empty but for ``offsets = [0]``, chunked for the expected size
        (``n_frames`` frames of ``n_atoms`` atoms in all are about to be written)."""
        frames = max(n_frames, self.expected_frames or 0)
        atoms = max(n_atoms, round(n_atoms * frames / n_frames)) if n_frames else 0
        for columns, rows in ((ATOM_COLUMNS, atoms), (FRAME_COLUMNS, frames)):
            for name, (shape, dtype) in columns.items():
                dtype = np.dtype(dtype)
                expected = rows + 1 if name == "offsets" else rows
                self.file.create_dataset(
                    name,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=(chunk_rows(shape, dtype, expected, self.chunk_bytes), *shape),
                    compression="gzip",
                    compression_opts=GZIP_LEVEL,
                    # Shuffle makes the float columns 7-9 % smaller under deflate; on
                    # single bytes it does nothing, on fixed strings it costs a little.
                    shuffle=dtype.kind in "iuf" and dtype.itemsize > 1,
                )
        self._append("offsets", np.zeros(1, dtype="<i8"))

    def _append(self, name: str, values) -> None:
        dataset = self.file[name]
        start = dataset.shape[0]
        dataset.resize(start + len(values), axis=0)
        dataset[start:] = values

    def add(self, record: Record) -> None:
        self._pending.append(record)
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            records, self._pending = self._pending, []
            self.add_batch(RecordBatch.from_records(records))

    def add_batch(self, batch: RecordBatch) -> None:
        """Append a whole batch: one resize and one write per dataset."""
        self._flush()  # keep the order of frames given one by one before
        n = len(batch)
        if n == 0:
            return
        if "offsets" not in self.file:
            self._create(n, int(batch.offsets[-1]))
        for theory, spec in batch.theory_specs.items():
            self.theory_specs.setdefault(theory, spec)
        for theory in batch.theory:
            if theory not in self._theory_index:
                self._theory_index[theory] = len(self.theories)
                self.theories.append(theory)
        values = {name: getattr(batch, name) for name in ATOM_COLUMNS}
        values.update(
            offsets=self.n_atoms + batch.offsets[1:],
            energy=batch.energy,
            cell=batch.cell,
            pbc=batch.pbc,
            stress=batch.stress,
            frame_hash=np.array(batch.frame_hash, dtype="S64"),
            theory=np.array([self._theory_index[t] for t in batch.theory], dtype=np.int16),
            generation=batch.generation,
            source=np.array(batch.source, dtype=object),
            provenance=np.array([json.dumps(p, sort_keys=True, default=str) for p in batch.provenance], dtype=object),
            multiplicity=batch.multiplicity,
            smeared=batch.smeared,
        )
        for name in (*ATOM_COLUMNS, *FRAME_COLUMNS):  # a KeyError if a column has no values
            self._append(name, values[name])
        self.n_frames += n
        self.n_atoms += int(batch.offsets[-1])

    def close(self) -> None:
        from pipeline import __version__

        self._flush()
        if "offsets" not in self.file:  # nothing was added: the datasets exist all the same
            self._create(0, 0)
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
            # Snapshots of schema 1 have no electronic state.
            magmoms = f["magmoms"][a0:a1] if "magmoms" in f else np.full(a1 - a0, np.nan)
            multiplicity = f["multiplicity"][start:stop] if "multiplicity" in f else np.full(stop - start, -1)
            smeared = f["smeared"][start:stop] if "smeared" in f else np.zeros(stop - start, dtype=bool)
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
                    **_state(magmoms[lo:hi], multiplicity[k], smeared[k]),
                )
                yield record.to_atoms()


# --------------------------------------------------------------------------- extxyz


def _fmt(values: Iterable[float]) -> str:
    # 17 significant digits: every float64 reads back bit for bit.
    return " ".join(f"{v:.17g}" for v in np.asarray(values, dtype=np.float64).tolist())


def write_extxyz_record(handle, record: Record) -> None:
    n = len(record.numbers)
    header = []
    if record.pbc.any() or np.any(record.cell):
        header.append(f'Lattice="{_fmt(record.cell.ravel())}"')
    properties = "species:S:1:pos:R:3:forces:R:3" + (":magmoms:R:1" if record.magmoms is not None else "")
    header.append(f"Properties={properties}")
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
    if record.multiplicity is not None:
        header.append(f"multiplicity={record.multiplicity}")
    header.append(f"smeared={'T' if record.smeared else 'F'}")
    lines = [str(n), " ".join(header)]
    # Python floats (tolist) format several times faster than numpy scalars.
    symbols = [chemical_symbols[z] for z in record.numbers.tolist()]
    columns = [record.positions, record.forces]
    if record.magmoms is not None:
        columns.append(np.asarray(record.magmoms).reshape(n, 1))
    rows = np.hstack(columns).tolist()
    line = _ATOM_LINE if record.magmoms is None else _ATOM_LINE_MAGMOMS
    lines += [line % (symbol, *row) for symbol, row in zip(symbols, rows)]
    handle.write("\n".join(lines) + "\n")


_ATOM_LINE = "%s" + " %.17g" * 6
_ATOM_LINE_MAGMOMS = "%s" + " %.17g" * 7


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
    labels = Label._get_collection()
    # Counting costs a pass over the labels on servers without a usable index, so only
    # when the progress bar or the choice of join needs it.
    total = labels.count_documents(query) if (progress or query) else None
    tmp = out.with_name(out.name + ".partial")
    n_frames = n_atoms = 0
    bar = _progress(progress, total or 0, f"export {format}")
    try:
        batches = iter_batches(query, selected=total)
        if format == "hdf5":
            # The number of labels sizes the chunks; the estimate costs no pass over them.
            expected = total if total is not None else labels.estimated_document_count()
            with HDF5Writer(tmp, query=query, expected_frames=expected) as writer:
                for batch in batches:
                    writer.add_batch(batch)
                    n_frames += len(batch)
                    n_atoms += int(batch.offsets[-1])
                    bar.advance(len(batch))
        else:
            with open(tmp, "w") as handle:
                for batch in batches:
                    for record in batch.records():
                        write_extxyz_record(handle, record)
                    n_frames += len(batch)
                    n_atoms += int(batch.offsets[-1])
                    bar.advance(len(batch))
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
