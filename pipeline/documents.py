"""MongoDB documents (mongoengine): what the dataset is made of.

``Frame``       a structure, unique by content hash, with where it came from.
``Label``       a DFT (or imported) energy/forces/stress of a frame at a level of theory;
                unique per (frame, theory).
``Failure``     a frame whose labelling failed at a level of theory, with the attempts.
``Generation``  one self-play loop: status of each stage, thresholds, ledger, metrics.
``ModelVersion`` a trained ensemble: weights in GridFS, hyperparameters, metrics, data seen.

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

from pipeline import arrays
from pipeline.hashing import frame_hash


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
    """The stored fields of a frame (plain values: also used for bulk inserts)."""
    numbers = np.asarray(atoms.numbers)
    return dict(
        hash=frame_hash(atoms),
        n_atoms=len(numbers),
        numbers=arrays.pack(numbers, arrays.NUMBERS),
        positions=arrays.pack(atoms.positions),
        cell=arrays.pack(atoms.cell.array),
        pbc=[bool(p) for p in atoms.pbc],
        elements=sorted(chemical_symbols[z] for z in set(numbers.tolist())),
        formula=hill_formula(numbers),
        generation=generation,
        source=source,
        provenance=provenance or {},
        sigma_f=None if sigma_f is None else float(sigma_f),
        force_deviation=None if force_deviation is None else arrays.pack(force_deviation),
        selected_as=selected_as,
        sigma_e=None if sigma_e is None or np.isnan(sigma_e) else float(sigma_e),
    )


class Frame(me.Document):
    hash = me.StringField(required=True, max_length=64)
    n_atoms = me.IntField(required=True, min_value=1)
    numbers = me.BinaryField(required=True)
    positions = me.BinaryField(required=True)
    cell = me.BinaryField(required=True)
    pbc = me.ListField(me.BooleanField(), required=True)
    elements = me.ListField(me.StringField(), required=True)
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
        atoms = Atoms(
            numbers=arrays.unpack(self.numbers, (n,), arrays.NUMBERS).astype(int),
            positions=arrays.unpack(self.positions, (n, 3)),
            cell=arrays.unpack(self.cell, (3, 3)),
            pbc=list(self.pbc),
        )
        atoms.info["frame_hash"] = self.hash
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
        results = {"energy": self.energy, "free_energy": self.energy, "forces": self.forces_array}
        if self.stress is not None:
            results["stress"] = self.stress_array
        if self.magmoms is not None:
            results["magmoms"] = self.magmoms_array
        atoms.calc = SinglePointCalculator(atoms, **results)
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
    #: The explore stage's frames (npz archive, see pipeline.generation.pack_frames) for resuming.
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


ALL_DOCUMENTS = (Frame, Label, Failure, Generation, ModelVersion)
