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

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from pipeline.documents import Label
from pipeline.errors import DataFileError
from pipeline.jsonable import json_default

# The store's read path lives in pipeline.reads; these names stay importable from here.
from pipeline.reads import (  # noqa: F401
    BATCH,
    Record,
    RecordBatch,
    iter_batches,
    iter_labelled,
    iter_records,
    label_query,
    state_fields,
)

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
            provenance=np.array(
                [json.dumps(p, sort_keys=True, default=json_default) for p in batch.provenance], dtype=object
            ),
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
        attrs["theory_specs"] = json.dumps(
            {t: self.theory_specs.get(t, {}) for t in self.theories}, default=json_default
        )
        attrs["query"] = json.dumps(self.query, default=json_default)
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
                    **state_fields(magmoms[lo:hi], multiplicity[k], smeared[k]),
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
