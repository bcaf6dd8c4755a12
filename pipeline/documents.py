"""MongoDB documents (mongoengine): what the dataset is made of.

``Frame``       a structure, unique by content hash, with where it came from.
``Label``       a DFT (or imported) energy/forces/stress of a frame at a level of theory;
                unique per (frame, theory).
``Failure``     a frame whose labelling failed at a level of theory, with the attempts.
``Generation``  one self-play loop: status of each stage, thresholds, ledger, metrics.
``ModelVersion`` a trained ensemble: weights in GridFS, hyperparameters, metrics, data seen.
``ProbeSet``    a fixed, labelled, held-out set of structures (its ``ProbeFrame`` documents,
                in their own collection) the models are scored on after every generation.

Arrays are raw little-endian bytes (see :mod:`pipeline.arrays`); element lists are
denormalised onto labels and failures so per-element counts are single-collection
aggregations.
"""

from __future__ import annotations

from datetime import datetime, timezone

import mongoengine as me
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from bson import ObjectId

from pipeline import arrays
from pipeline.errors import InvalidStructure
from pipeline.hashing import frame_hashes


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def hill_formula(numbers: np.ndarray) -> str:
    """Hill-order formula (C, H, then alphabetical; alphabetical without carbon)."""
    values, counts = np.unique(numbers, return_counts=True)
    return hill_formula_of_counts({chemical_symbols[z]: int(n) for z, n in zip(values, counts)})


def hill_formula_of_counts(count: dict[str, int]) -> str:
    """:func:`hill_formula` from a {symbol: count} mapping."""
    first = [k for k in ("C", "H") if k in count] if "C" in count else []
    order = first + sorted(k for k in count if k not in first)
    return "".join(f"{k}{count[k] if count[k] > 1 else ''}" for k in order)


#: Atomic number (0..127) -> element symbol ("" beyond the periodic table).
_SYMBOLS = np.array(chemical_symbols + [""] * (128 - len(chemical_symbols)), dtype=object)

#: How each optional field is stored (None: left out).
_STORED = {
    "sigma_f": float,
    "force_deviation": arrays.pack,
    "selected_as": str,
    "sigma_e": lambda v: None if np.isnan(v) else float(v),
}


def _per_frame(name: str, values, n: int) -> list:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise InvalidStructure(f"{len(values)} values of {name} for {n} frames")
    return values


def frame_documents(
    frames: list[Atoms],
    *,
    source: str,
    generation: int | None = None,
    provenance: list[dict | None] | None = None,
    sigma_f: list[float | None] | None = None,
    force_deviation: list[np.ndarray | None] | None = None,
    selected_as: list[str | None] | None = None,
    sigma_e: list[float | None] | None = None,
    now: datetime | None = None,
) -> list[dict]:
    """The stored documents of many frames at once: the one frame-document builder.

    Plain dicts ready for ``insert_many``, with a new ``_id`` and ``created_at``. The
    optional fields are lists with one value (or None) per frame; unset ones (None, and a
    NaN ``sigma_e``) are left out, as mongoengine does. Everything is computed for the
    whole batch at once: one concatenation, one quantisation for the content hashes
    (:func:`pipeline.hashing.frame_hashes`, which :func:`~pipeline.hashing.frame_hash`
    also uses), one element count; the loop over frames only slices.
    """
    n = len(frames)
    if n == 0:
        return []
    now = now or utcnow()
    provenance = _per_frame("provenance", provenance, n)
    given = {"sigma_f": sigma_f, "force_deviation": force_deviation, "selected_as": selected_as, "sigma_e": sigma_e}
    optional = {
        key: [None if v is None else _STORED[key](v) for v in _per_frame(key, values, n)]
        for key, values in given.items()
        if values is not None
    }

    docs, element_counts = structure_documents(frames)
    for i, (doc, present) in enumerate(zip(docs, element_counts)):
        doc.update(
            formula=hill_formula_of_counts(present), source=source, provenance=provenance[i] or {}, created_at=now
        )
        if generation is not None:  # unset optional fields are left out, as mongoengine does
            doc["generation"] = generation
        for key, values in optional.items():
            if values[i] is not None:
                doc[key] = values[i]
    return docs


def structure_documents(frames: list[Atoms]) -> tuple[list[dict], list[dict[str, int]]]:
    """The :class:`StoredStructure` fields of many frames (with a new ``_id``), and each
    frame's element counts; vectorised, for :func:`frame_documents` and the probe sets."""
    n = len(frames)
    if n == 0:
        return [], []
    numbers_per_frame = [np.asarray(a.numbers) for a in frames]
    sizes = np.fromiter((len(x) for x in numbers_per_frame), dtype=np.int64, count=n)
    if (sizes == 0).any():
        raise InvalidStructure(f"frame {int(np.argmax(sizes == 0))}: structure has no atoms")
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    numbers = np.concatenate(numbers_per_frame).astype(np.int64)
    if numbers.min() < 0 or numbers.max() >= 128:
        raise InvalidStructure(f"atomic number {int(numbers[(numbers < 0) | (numbers >= 128)][0])} is not an element")
    positions = np.concatenate([a.positions for a in frames]).astype(arrays.FLOAT, copy=False)
    cells = np.stack([a.cell.array for a in frames]).astype(arrays.FLOAT, copy=False)
    pbcs = np.stack([np.asarray(a.pbc, dtype=bool) for a in frames])

    numbers_u1 = numbers.astype(arrays.NUMBERS).tobytes()
    positions_bytes = np.ascontiguousarray(positions).tobytes()
    cells_bytes = np.ascontiguousarray(cells).tobytes()
    hashes = frame_hashes(numbers, positions, cells, pbcs, offsets)

    # Element counts of all frames in one bincount: rows are frames, columns atomic numbers.
    counts = np.bincount(np.repeat(np.arange(n), sizes) * 128 + numbers, minlength=n * 128).reshape(n, 128)
    rows, columns = np.nonzero(counts)
    row_starts = np.searchsorted(rows, np.arange(n + 1))
    column_counts = counts[rows, columns].tolist()
    column_symbols = _SYMBOLS[columns].tolist()

    docs, element_counts = [], []
    for i in range(n):
        a0, a1 = int(offsets[i]), int(offsets[i + 1])
        r0, r1 = row_starts[i], row_starts[i + 1]
        present = dict(zip(column_symbols[r0:r1], column_counts[r0:r1]))
        docs.append(
            {
                "_id": ObjectId(),
                "hash": hashes[i],
                "n_atoms": a1 - a0,
                "numbers": numbers_u1[a0:a1],
                "positions": positions_bytes[24 * a0 : 24 * a1],
                "cell": cells_bytes[72 * i : 72 * (i + 1)],
                "pbc": pbcs[i].tolist(),
                "elements": sorted(present),
            }
        )
        element_counts.append(present)
    return docs, element_counts


def frame_fields(
    atoms: Atoms,
    *,
    source: str,
    generation: int | None = None,
    provenance: dict | None = None,
    sigma_f: float | None = None,
    force_deviation: np.ndarray | None = None,
    selected_as: str | None = None,
    sigma_e: float | None = None,
) -> dict:
    """The stored fields of one frame (:func:`frame_documents` of a batch of one, without
    ``_id`` and ``created_at``; every field present, None where unset)."""
    doc = frame_documents(
        [atoms],
        source=source,
        generation=generation,
        provenance=[provenance],
        sigma_f=[sigma_f],
        force_deviation=[force_deviation],
        selected_as=[selected_as],
        sigma_e=[sigma_e],
    )[0]
    del doc["_id"], doc["created_at"]
    return {"generation": None, **dict.fromkeys(_STORED), **doc}


def stored_structure(document) -> Atoms:
    """``ase.Atoms`` of a stored structure (a Frame or ProbeFrame: n_atoms, numbers,
    positions, cell, pbc and hash), without its label."""
    n = document.n_atoms
    atoms = Atoms(
        numbers=arrays.unpack(document.numbers, (n,), arrays.NUMBERS).astype(int),
        positions=arrays.unpack(document.positions, (n, 3)),
        cell=arrays.unpack(document.cell, (3, 3)),
        pbc=list(document.pbc),
    )
    atoms.info["frame_hash"] = document.hash
    return atoms


def attach_label(atoms: Atoms, energy: float, forces, stress=None, magmoms=None) -> Atoms:
    """Put a label on ``atoms`` as ASE results (energy = free energy: force-consistent)."""
    results = {"energy": energy, "free_energy": energy, "forces": forces}
    if stress is not None:
        results["stress"] = stress
    if magmoms is not None:
        results["magmoms"] = magmoms
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


class StoredStructure(me.Document):
    """The fields of a stored structure (:func:`stored_structure` reads them back)."""

    meta = {"abstract": True}

    #: Content hash of numbers, positions, cell and pbc (pipeline.hashing).
    hash = me.StringField(required=True, max_length=64)
    n_atoms = me.IntField(required=True, min_value=1)
    numbers = me.BinaryField(required=True)
    positions = me.BinaryField(required=True)  # Å, (n_atoms, 3)
    cell = me.BinaryField(required=True)  # Å, rows are lattice vectors
    pbc = me.ListField(me.BooleanField(), required=True)
    elements = me.ListField(me.StringField(), required=True)


class Frame(StoredStructure):
    formula = me.StringField(required=True)
    #: Generation whose exploration produced the frame (None for imported frames).
    generation = me.IntField()
    #: Sampler name, "import", ... (provenance["sampler"] repeated for indexing).
    source = me.StringField(required=True)
    provenance = me.DictField()
    #: Largest per-atom ensemble force deviation when the frame was selected (eV/Å).
    sigma_f = me.FloatField()
    force_deviation = me.BinaryField()
    #: Ensemble energy deviation per atom when the frame was selected (eV/atom): std of
    #: the members' total energies / n_atoms.
    sigma_e = me.FloatField()
    #: "candidate" or "sentinel" for explored frames picked for labelling.
    selected_as = me.StringField()
    created_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "frames",
        "indexes": [
            {"fields": ["hash"], "unique": True},
            "elements",
            "generation",
            "source",
        ],
    }

    @classmethod
    def from_atoms(cls, atoms: Atoms, *, source: str, **fields) -> "Frame":
        return cls(**frame_fields(atoms, source=source, **fields))

    def to_atoms(self) -> Atoms:
        n = self.n_atoms
        atoms = stored_structure(self)
        if self.sigma_f is not None:
            atoms.info["sigma_f"] = self.sigma_f
        if self.sigma_e is not None:
            atoms.info["sigma_e"] = self.sigma_e
        if self.force_deviation is not None:
            atoms.arrays["force_deviation"] = arrays.unpack(self.force_deviation, (n,))
        return atoms


class Label(me.Document):
    frame = me.ReferenceField(Frame, required=True)
    frame_hash = me.StringField(required=True, max_length=64)
    #: Level-of-theory key (hash of the settings that change the number, or "import:<source>").
    theory = me.StringField(required=True)
    theory_spec = me.DictField()
    energy = me.FloatField(required=True)  # eV
    forces = me.BinaryField(required=True)  # eV/Å, (n_atoms, 3)
    stress = me.BinaryField()  # eV/Å³, Voigt order xx yy zz yz xz xy
    n_atoms = me.IntField(required=True)
    elements = me.ListField(me.StringField(), required=True)
    #: The frame's ``source`` (sampler or import), copied so that counts per sampler need
    #: no join with the frames collection.
    source = me.StringField()
    generation = me.IntField()
    #: Code versions, SCF iterations, convergence, device, spin/charge, the electronic
    #: state search (``info["electronic_state"]``), extras.
    info = me.DictField()
    #: The electronic state, where users filter on it: 2S+1, the Mulliken spin moment of
    #: each atom (electrons, float64), and whether the number is a smeared free energy
    #: (fractional occupations) rather than a ground-state energy.
    multiplicity = me.IntField()
    magmoms = me.BinaryField()
    smeared = me.BooleanField(default=False)
    wall_time = me.FloatField()  # s
    created_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "labels",
        "indexes": [
            {"fields": ["frame", "theory"], "unique": True},
            "frame_hash",
            "theory",
            "generation",
            "elements",
            "source",
        ],
    }

    @property
    def forces_array(self) -> np.ndarray:
        return arrays.unpack(self.forces, (self.n_atoms, 3))

    @property
    def stress_array(self) -> np.ndarray | None:
        return arrays.unpack(self.stress, (6,))

    @property
    def magmoms_array(self) -> np.ndarray | None:
        return arrays.unpack(self.magmoms, (self.n_atoms,))

    def to_atoms(self, frame: Frame | None = None) -> Atoms:
        """The labelled frame as ``ase.Atoms`` with a SinglePointCalculator."""
        atoms = (frame or self.frame).to_atoms()
        attach_label(atoms, self.energy, self.forces_array, self.stress_array, self.magmoms_array)
        atoms.info["theory"] = self.theory
        if self.multiplicity is not None:
            atoms.info["multiplicity"] = self.multiplicity
        atoms.info["smeared"] = bool(self.smeared)
        return atoms


class Failure(me.Document):
    frame = me.ReferenceField(Frame, required=True)
    frame_hash = me.StringField(required=True, max_length=64)
    theory = me.StringField(required=True)
    reason = me.StringField(required=True)
    attempts = me.ListField(me.DictField())
    elements = me.ListField(me.StringField())
    generation = me.IntField()
    created_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "failures",
        "indexes": [
            {"fields": ["frame", "theory"], "unique": True},
            "generation",
            "elements",
        ],
    }


STATUSES = ("pending", "running", "completed", "failed")


class Generation(me.Document):
    number = me.IntField(required=True, min_value=0)
    status = me.StringField(required=True, choices=STATUSES, default="pending")
    #: stage -> {"status", "started_at", "finished_at", "result": {...}}
    stages = me.DictField()
    thresholds = me.DictField()  # {"lo": ..., "hi": ...} in eV/Å
    counts = me.DictField()  # explored/accurate/candidate/failed/selected/labelled/dft_failed
    #: element -> {"explored", "accurate", "candidate", "failed", "selected", "labelled", "dft_failed"}
    ledger = me.DictField()
    metrics = me.DictField()
    config = me.DictField()
    theory = me.StringField()
    model_version = me.ReferenceField("ModelVersion")
    prefect_flow_run_id = me.StringField()
    #: The explore stage's frames (npz archive, see pipeline.frame_archive.pack_frames) for resuming.
    explored = me.FileField(collection_name="explored_frames")
    error = me.StringField()
    started_at = me.DateTimeField(default=utcnow)
    finished_at = me.DateTimeField()

    meta = {
        "collection": "generations",
        "indexes": [{"fields": ["number"], "unique": True}, "status"],
    }


class ModelVersion(me.Document):
    generation = me.IntField()
    name = me.StringField(required=True)
    #: Checkpoint archive (tar of the ensemble directory) in GridFS.
    weights = me.FileField(collection_name="model_weights")
    checkpoint_sha256 = me.StringField()
    hyperparameters = me.DictField()
    metrics = me.DictField()
    #: What it was trained on: theories, number of frames, per-element counts, warm start.
    trained_on = me.DictField()
    created_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "model_versions",
        "indexes": [{"fields": ["name"], "unique": True}, "generation"],
    }


class ProbeSet(me.Document):
    """A fixed, labelled, held-out set of structures the models are scored on after every
    generation (:mod:`pipeline.probes`). Its frames are :class:`ProbeFrame` documents, in
    their own collection: never trained on, selected from or exported with the dataset."""

    name = me.StringField(required=True, max_length=64)
    description = me.StringField(default="")
    #: Level-of-theory key of its labels; models are scored on it when they train on it.
    theory = me.StringField(required=True)
    theory_spec = me.DictField()
    n_frames = me.IntField(required=True, min_value=0)
    n_atoms = me.IntField(default=0)
    elements = me.ListField(me.StringField())
    #: Where the frames came from: [{"file", "frames"}], and whether selfplay labelled them.
    sources = me.ListField(me.DictField())
    labelled_here = me.BooleanField(default=False)
    #: False while its frames are being written: an interrupted add is never evaluated and
    #: is removed by ``selfplay probe remove``.
    complete = me.BooleanField(default=False)
    created_at = me.DateTimeField(default=utcnow)

    meta = {"collection": "probe_sets", "indexes": [{"fields": ["name"], "unique": True}]}


class ProbeFrame(StoredStructure):
    """One labelled structure of a :class:`ProbeSet` (arrays as in :class:`Frame`/:class:`Label`)."""

    probe_set = me.ReferenceField(ProbeSet, required=True)
    index = me.IntField(required=True, min_value=0)
    energy = me.FloatField(required=True)  # eV
    forces = me.BinaryField(required=True)  # eV/Å, (n_atoms, 3)
    stress = me.BinaryField()  # eV/Å³, Voigt order xx yy zz yz xz xy

    meta = {"collection": "probe_frames", "indexes": [{"fields": ["probe_set", "index"], "unique": True}]}

    def to_atoms(self) -> Atoms:
        """The frame as ``ase.Atoms`` with its label in a SinglePointCalculator."""
        n = self.n_atoms
        atoms = stored_structure(self)
        attach_label(atoms, self.energy, arrays.unpack(self.forces, (n, 3)), arrays.unpack(self.stress, (6,)))
        atoms.info["probe_index"] = self.index
        return atoms


ALL_DOCUMENTS = (Frame, Label, Failure, Generation, ModelVersion, ProbeSet, ProbeFrame)
