"""The store's read path: labelled frames as records, column batches or ``ase.Atoms``.

Labels are joined to their frames on the server side in frame order (the order frames
were first stored), the labels of one frame by level of theory. Dense selections walk
both collections side by side; sparse ones look their frames up by ``_id``. Nothing
here holds more than one batch in memory, so a million frames stream.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from pipeline import arrays
from pipeline.atoms import symbols_to_numbers
from pipeline.documents import Frame, Label, attach_label
from pipeline.errors import DataFileError, StoreError

log = logging.getLogger(__name__)

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
        attach_label(atoms, self.energy, self.forces, self.stress, self.magmoms)
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
    "frame": 1,
    "theory": 1,
    "theory_spec": 1,
    "energy": 1,
    "forces": 1,
    "stress": 1,
    "generation": 1,
    "magmoms": 1,
    "multiplicity": 1,
    "smeared": 1,
}
FRAME_FIELDS = {
    "hash": 1,
    "n_atoms": 1,
    "numbers": 1,
    "positions": 1,
    "cell": 1,
    "pbc": 1,
    "source": 1,
    "provenance": 1,
}

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
            numbers=np.concatenate(
                [np.asarray(r.numbers, dtype=arrays.NUMBERS) for r in records] or [np.zeros(0, arrays.NUMBERS)]
            ),
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
                [
                    np.full(len(r.numbers), np.nan) if r.magmoms is None else np.asarray(r.magmoms, dtype=np.float64)
                    for r in records
                ]
                or [np.zeros(0)]
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
                **state_fields(self.magmoms[lo:hi], self.multiplicity[k], self.smeared[k]),
            )


def state_fields(magmoms: np.ndarray, multiplicity, smeared) -> dict:
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
