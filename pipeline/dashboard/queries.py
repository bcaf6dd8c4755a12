"""What the dashboard reads, aggregated in the database into a small :class:`Snapshot`.

Every number shown comes from ``aggregate`` pipelines (``$match``, ``$unwind``,
``$group`` with ``$sum``) or from ``find`` with a projection on the ``generations``
collection (one small document per generation). Result sizes scale with
generations × elements (× samplers, failure reasons, distinct frame sizes), never with
the number of frames, so the page is as fast with a million labels as with ten once the
database has done its part.

Counting rule: a label (failure, frame) counts once for every distinct element of its
frame, as in the per-element ledger; "labelled" counts label documents, all levels of
theory together (imported labels have ``generation`` null and are shown as "imported").

FerretDB 1.x
------------
FerretDB v1 (the MongoDB-wire server the tests run against) evaluates pipelines itself
and differs from MongoDB in two ways that silently change results, so pipelines are
adapted when :attr:`ReadOnlyDatabase.engine` is ``ferretdb-v1``:

* ``$unwind`` keeps only ``_id`` and the unwound field, so counts per (generation,
  element) group by (generation, element set) instead and split the sets here;
* ``$group`` feeds documents to its first accumulator only, so each sum is its own
  pipeline.

It has no ``$min``/``$max``/``$avg``, no date operators and no expressions in
``$project``; nothing here uses them.

Schema read from ``Generation`` documents
-----------------------------------------
Written by :mod:`pipeline.generation` (missing keys are shown as gaps, never as zeros)::

    number: int                      status: "pending" | "running" | "completed" | "failed"
    started_at, finished_at: datetime   error: str   prefect_flow_run_id: str   theory: str
    thresholds: {"lo": float, "hi": float}                                  # σ_F window, eV/Å
    counts: {"explored", "accurate", "candidate", "failed", "unscored",
             "selected", "sentinel", "labelled", "dft_failed": int}
    ledger: {element: {same columns as counts: int}}
    stages: {"train" | "explore" | "select" | "label" | "report":
             {"status": str, "started_at", "finished_at": ISO-8601 str or datetime,
              "seconds": float}}                       # label seconds give labels per hour
    metrics:
      model:    {"frames": int,                        # candidates labelled this generation
                 "energy_mae_per_atom": float,         # eV/atom, this generation's ensemble
                 "force_mae": float,                   # eV/Å, over atoms and components
                 "per_element": {element: {"force_mae": float, "n_atoms": int}}}  | null
      sentinel: {same keys, on the sentinel frames (accurate frames labelled anyway)} | null
      calibration: [{"sigma_f": float,                 # ensemble max per-atom deviation, eV/Å
                     "force_error_max": float,         # max per-atom |F_model - F_DFT|, eV/Å
                     "selected_as": "candidate" | "sentinel"}, ...]   # one per labelled frame
      sigma_f_quantiles: {"q50": float, "q90": float, ...}              # of explored frames, eV/Å
                         # (no "." in keys: FerretDB rejects them; "0.5"-style keys are read too)

``metrics.calibration`` and ``metrics.sigma_f_sample`` (and ``config``) are left out of
the generation listing and calibration points are read for the latest generations only.

Fields read from the other collections: ``labels``: generation, elements, n_atoms,
wall_time, info.device, info.scf_cycles; ``failures``: generation, elements, reason
("<kind>: <detail>"); ``frames``: generation, source, selected_as.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from ase.data import atomic_numbers

from pipeline.dashboard.readonly import FERRETDB_V1, ReadOnlyDatabase

log = logging.getLogger(__name__)

#: Generation documents are listed without these (large or irrelevant to the dashboard).
GENERATION_EXCLUDED = {"config": 0, "metrics.calibration": 0, "metrics.sigma_f_sample": 0, "model_version": 0}

#: Calibration points are read for this many of the latest generations.
CALIBRATION_GENERATIONS = 20

Key = tuple


def element_order(symbol: str) -> tuple[int, str]:
    return atomic_numbers.get(symbol, 1000), symbol


# --------------------------------------------------------------------- pipelines


def group_sums(
    db: ReadOnlyDatabase,
    collection: str,
    key: Mapping[str, str],
    sums: Mapping[str, Any],
    match: Optional[Mapping] = None,
) -> dict[Key, dict[str, float]]:
    """``{(key values...): {name: sum}}`` grouping ``collection`` by the field paths in ``key``.

    ``sums`` maps output names to ``$sum`` arguments (``1`` counts, ``"$field"`` adds
    a field; non-numeric and missing values add nothing). Missing key fields read None.
    """
    names = list(key)
    group_id = {name: path for name, path in key.items()} if names else None
    if db.engine == FERRETDB_V1:
        accumulator_sets = [{name: {"$sum": value}} for name, value in sums.items()]
    else:
        accumulator_sets = [{name: {"$sum": value} for name, value in sums.items()}]
    table: dict[Key, dict[str, float]] = {}
    for accumulators in accumulator_sets:
        pipeline = ([{"$match": dict(match)}] if match else []) + [{"$group": {"_id": group_id, **accumulators}}]
        for row in db[collection].aggregate(pipeline):
            ident = row.get("_id") or {}
            values = table.setdefault(tuple(ident.get(name) for name in names), dict.fromkeys(sums, 0))
            for name in accumulators:
                values[name] = row.get(name) or 0
    return table


def count_by_generation_and_element(
    db: ReadOnlyDatabase, collection: str, match: Optional[Mapping] = None
) -> dict[tuple[Optional[int], str], int]:
    """``{(generation, element): documents}`` for a collection with ``generation`` and ``elements``."""
    prefix = [{"$match": dict(match)}] if match else []
    table: dict[tuple[Optional[int], str], int] = defaultdict(int)
    if db.engine == FERRETDB_V1:
        # $unwind would drop `generation`: group by element set, split the sets here.
        pipeline = prefix + [{"$group": {"_id": {"g": "$generation", "els": "$elements"}, "n": {"$sum": 1}}}]
        for row in db[collection].aggregate(pipeline):
            ident = row.get("_id") or {}
            for element in set(ident.get("els") or ()):
                table[(ident.get("g"), element)] += int(row["n"])
    else:
        pipeline = prefix + [
            {"$unwind": "$elements"},
            {"$group": {"_id": {"g": "$generation", "e": "$elements"}, "n": {"$sum": 1}}},
        ]
        for row in db[collection].aggregate(pipeline):
            ident = row["_id"]
            table[(ident.get("g"), ident["e"])] += int(row["n"])
    return dict(table)


def generation_documents(db: ReadOnlyDatabase) -> list[dict]:
    """Generation documents (without config, calibration, σ_F sample), by number."""
    docs = list(db["generations"].find({}, GENERATION_EXCLUDED))
    for doc in docs:
        doc.pop("_id", None)
    return sorted(docs, key=lambda d: d.get("number", -1))


def calibration_points(db: ReadOnlyDatabase, numbers: list[int]) -> dict[int, list[dict]]:
    """``{generation: metrics.calibration}`` for the given generation numbers."""
    if not numbers:
        return {}
    out = {}
    for doc in db["generations"].find({"number": {"$in": list(numbers)}}, {"number": 1, "metrics.calibration": 1, "_id": 0}):
        points = ((doc.get("metrics") or {}).get("calibration")) or []
        out[doc["number"]] = [p for p in points if isinstance(p, dict)]
    return out


# ---------------------------------------------------------------------- snapshot


@dataclass
class Snapshot:
    """Everything the dashboard shows, already reduced by the database."""

    taken_at: datetime
    seconds: float
    engine: str
    database: str
    #: (generation, element) -> labels / failures whose frame contains the element.
    labels_by_element: dict = field(default_factory=dict)
    failures_by_element: dict = field(default_factory=dict)
    #: generation -> labels / failures (None: imported, outside any generation).
    labels_by_generation: dict = field(default_factory=dict)
    failures_by_generation: dict = field(default_factory=dict)
    #: (generation, source, selected_as) -> frames.
    frames_by_source: dict = field(default_factory=dict)
    #: generation -> {"n": labels with a wall time, "wall_time": summed seconds}.
    dft_time: dict = field(default_factory=dict)
    #: generation -> {"n": labels with SCF cycles recorded, "cycles": summed cycles}.
    scf_cycles: dict = field(default_factory=dict)
    #: (n_atoms, device) -> {"n": labels, "wall_time": summed seconds}.
    wall_time_by_size: dict = field(default_factory=dict)
    #: (generation, reason) -> failures.
    failure_reasons: dict = field(default_factory=dict)
    #: Generation documents (see the module docstring), by number.
    generations: list = field(default_factory=list)
    #: generation -> calibration points, for the latest CALIBRATION_GENERATIONS generations.
    calibration: dict = field(default_factory=dict)

    # -- derived, all from the reduced tables above ---------------------------------

    @property
    def generation_numbers(self) -> list[int]:
        numbers = {g["number"] for g in self.generations if g.get("number") is not None}
        for table in (self.labels_by_generation, self.failures_by_generation):
            numbers.update(g for g in table if g is not None)
        numbers.update(g for g, _, _ in self.frames_by_source if g is not None)
        return sorted(numbers)

    @property
    def elements(self) -> list[str]:
        found = {e for _, e in self.labels_by_element} | {e for _, e in self.failures_by_element}
        for doc in self.generations:
            found.update((doc.get("ledger") or {}).keys())
        return sorted(found, key=element_order)

    @property
    def totals(self) -> dict[str, int]:
        return {
            "frames": int(sum(self.frames_by_source.values())),
            "labels": int(sum(self.labels_by_generation.values())),
            "failures": int(sum(self.failures_by_generation.values())),
            "imported_labels": int(self.labels_by_generation.get(None, 0)),
            "generations": len(self.generations),
        }

    def element_totals(
        self, which: str = "labels", first: Optional[int] = None, last: Optional[int] = None, imported: bool = True
    ) -> dict[str, int]:
        """element -> labels (or failures) of generations first..last (inclusive), plus imported ones."""
        table = self.labels_by_element if which == "labels" else self.failures_by_element
        out: dict[str, int] = defaultdict(int)
        for (generation, element), n in table.items():
            if generation is None:
                if imported:
                    out[element] += n
            elif (first is None or generation >= first) and (last is None or generation <= last):
                out[element] += n
        return {e: out[e] for e in sorted(out, key=element_order)}

    def generation(self, number: int) -> Optional[dict]:
        for doc in self.generations:
            if doc.get("number") == number:
                return doc
        return None


def take_snapshot(db: ReadOnlyDatabase, calibration_generations: int = CALIBRATION_GENERATIONS) -> Snapshot:
    """Run every aggregation the dashboard needs (a handful of pipelines per collection)."""
    start = time.perf_counter()
    snapshot = Snapshot(taken_at=datetime.now(timezone.utc), seconds=0.0, engine=db.engine, database=db.name)
    snapshot.labels_by_element = count_by_generation_and_element(db, "labels")
    snapshot.failures_by_element = count_by_generation_and_element(db, "failures")
    snapshot.labels_by_generation = _single(group_sums(db, "labels", {"g": "$generation"}, {"n": 1}), "n")
    snapshot.failures_by_generation = _single(group_sums(db, "failures", {"g": "$generation"}, {"n": 1}), "n")
    snapshot.frames_by_source = {
        key: int(v["n"])
        for key, v in group_sums(
            db, "frames", {"g": "$generation", "source": "$source", "as": "$selected_as"}, {"n": 1}
        ).items()
    }
    snapshot.dft_time = {
        key[0]: v
        for key, v in group_sums(
            db, "labels", {"g": "$generation"}, {"n": 1, "wall_time": "$wall_time"}, match={"wall_time": {"$gt": 0}}
        ).items()
    }
    snapshot.scf_cycles = {
        key[0]: {"n": v["n"], "cycles": v["cycles"]}
        for key, v in group_sums(
            db, "labels", {"g": "$generation"}, {"n": 1, "cycles": "$info.scf_cycles"}, match={"info.scf_cycles": {"$gt": 0}}
        ).items()
    }
    snapshot.wall_time_by_size = group_sums(
        db,
        "labels",
        {"n_atoms": "$n_atoms", "device": "$info.device"},
        {"n": 1, "wall_time": "$wall_time"},
        match={"wall_time": {"$gt": 0}},
    )
    snapshot.failure_reasons = _single(group_sums(db, "failures", {"g": "$generation", "reason": "$reason"}, {"n": 1}), "n", flat=False)
    snapshot.generations = generation_documents(db)
    latest = [g["number"] for g in snapshot.generations if g.get("number") is not None][-calibration_generations:]
    snapshot.calibration = calibration_points(db, latest) if calibration_generations > 0 else {}
    snapshot.seconds = time.perf_counter() - start
    log.info("dashboard snapshot of %s in %.2f s", db.name, snapshot.seconds)
    return snapshot


def _single(table: dict[Key, dict[str, float]], name: str, flat: bool = True) -> dict:
    """``{key: value}`` from a :func:`group_sums` table (one-field keys unwrapped when ``flat``)."""
    return {(key[0] if flat else key): int(values[name]) for key, values in table.items()}
