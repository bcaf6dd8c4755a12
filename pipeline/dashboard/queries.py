"""What the dashboard reads, aggregated in the database into a small :class:`Snapshot`.

Every number shown comes from ``aggregate`` pipelines (``$match``, ``$unwind``,
``$group`` with ``$sum``) or from ``find`` with a projection on the ``generations``
collection (one small document per generation). Result sizes scale with
generations × elements (× samplers, failure reasons, distinct frame sizes), never with
the number of frames, so the page is as fast with a million labels as with ten once the
database has done its part.

Finished generations are not aggregated again on every refresh: their rows of every table
are stored once in a summary document (:mod:`pipeline.dashboard.summaries`, written by
the generation's report stage) and :func:`take_snapshot` adds them to a live aggregation
of what no summary covers (``$match`` on ``generation $nin`` the summarised numbers,
which MongoDB answers from the ``generation`` indexes; FerretDB v1 still scans, once
per collection, see :func:`scanned_tables`).

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
``$project``; nothing here uses them. Its SQLite backend also filters nothing through an
index, and its ``$group`` is linear in the groups: the snapshot therefore reads the
grouping fields once per collection there and counts in Python
(:func:`scanned_tables`, same numbers, tested against the pipelines on FerretDB).

Schema read from ``Generation`` documents
-----------------------------------------
Written by :mod:`flows.stages` (missing keys are shown as gaps, never as zeros)::

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
      probes:   {probe set name:                       # absent on a cold start (no model)
                 {"frames": int, "energy_mae_per_atom", "energy_rmse_per_atom": float,   # eV/atom
                  "force_mae", "force_rmse": float,    # eV/Å
                  "stress_mae": float | null,          # eV/Å³, null without stresses
                  "per_element": {element: {"force_mae", "energy_mae_per_atom": float,
                                            "n_atoms", "frames": int}},
                  "trained_on_labels": int,            # labels the scored model trained on
                  "model": str | null, "theory": str, "probe_set": str}}   # see pipeline.probes

``metrics.calibration`` and ``metrics.sigma_f_sample`` (and ``config``) are left out of
the generation listing and calibration points are read for the latest generations only.

Fields read from the other collections: ``labels``: generation, elements, source,
n_atoms, wall_time, info.device, info.scf_cycles; ``failures``: generation, elements,
reason ("<kind>: <detail>"); ``frames``: generation, source, selected_as. Labels per
sampler count ``labels.source`` (the frame's source, copied when the label is written);
labels from before that field existed have none and are counted as source None, shown
as "unknown" (a join with the frames would cost a lookup per label).
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
    for doc in db["generations"].find(
        {"number": {"$in": list(numbers)}}, {"number": 1, "metrics.calibration": 1, "_id": 0}
    ):
        points = ((doc.get("metrics") or {}).get("calibration")) or []
        out[doc["number"]] = [p for p in points if isinstance(p, dict)]
    return out


# ------------------------------------------------------------------------ tables

#: The reduced tables, each keyed by generation first (None: imported, outside any
#: generation). Per generation they are what a summary document stores.
TABLE_NAMES = (
    "labels_by_element",  # (generation, element) -> labels whose frame contains the element
    "failures_by_element",  # (generation, element) -> failures
    "labels_by_source",  # (generation, source) -> labels (source None: label written before sources were recorded)
    "failures_by_generation",  # generation -> failures
    "frames_by_source",  # (generation, source, selected_as) -> frames
    "dft_time",  # generation -> {"n": labels with a wall time, "wall_time": summed seconds}
    "scf_cycles",  # generation -> {"n": labels with SCF cycles, "cycles": summed cycles}
    "wall_time_by_size",  # (generation, n_atoms, device) -> {"n", "wall_time"}
    "failure_reasons",  # (generation, reason) -> failures
)


def _and(match: Optional[Mapping], extra: Mapping) -> Mapping:
    return {"$and": [dict(match), dict(extra)]} if match else dict(extra)


def live_tables(db: ReadOnlyDatabase, match: Optional[Mapping] = None, scan: Optional[bool] = None) -> dict[str, dict]:
    """Every table of :data:`TABLE_NAMES`, aggregated now over the documents ``match`` selects.

    ``match`` applies alike to labels, failures and frames (all three carry ``generation``).
    ``scan`` (default: on FerretDB v1) counts from one ``find`` per collection instead,
    see :func:`scanned_tables`.
    """
    if scan is None:
        scan = db.engine == FERRETDB_V1
    if scan:
        return scanned_tables(db, match or {})
    tables: dict[str, dict] = {}
    tables["labels_by_element"] = count_by_generation_and_element(db, "labels", match)
    tables["failures_by_element"] = count_by_generation_and_element(db, "failures", match)
    tables["labels_by_source"] = _single(
        group_sums(db, "labels", {"g": "$generation", "source": "$source"}, {"n": 1}, match), "n", flat=False
    )
    tables["failures_by_generation"] = _single(group_sums(db, "failures", {"g": "$generation"}, {"n": 1}, match), "n")
    tables["frames_by_source"] = _single(
        group_sums(db, "frames", {"g": "$generation", "source": "$source", "as": "$selected_as"}, {"n": 1}, match),
        "n",
        flat=False,
    )
    tables["dft_time"] = {
        key[0]: v
        for key, v in group_sums(
            db,
            "labels",
            {"g": "$generation"},
            {"n": 1, "wall_time": "$wall_time"},
            _and(match, {"wall_time": {"$gt": 0}}),
        ).items()
    }
    tables["scf_cycles"] = {
        key[0]: v
        for key, v in group_sums(
            db, "labels", {"g": "$generation"}, {"n": 1, "cycles": "$info.scf_cycles"},
            _and(match, {"info.scf_cycles": {"$gt": 0}}),
        ).items()
    }  # fmt: skip
    tables["wall_time_by_size"] = group_sums(
        db,
        "labels",
        {"g": "$generation", "n_atoms": "$n_atoms", "device": "$info.device"},
        {"n": 1, "wall_time": "$wall_time"},
        _and(match, {"wall_time": {"$gt": 0}}),
    )
    tables["failure_reasons"] = _single(
        group_sums(db, "failures", {"g": "$generation", "reason": "$reason"}, {"n": 1}, match), "n", flat=False
    )
    return tables


#: Fields :func:`scanned_tables` reads, per collection.
SCANNED_FIELDS = {
    "labels": {"generation": 1, "elements": 1, "source": 1, "n_atoms": 1, "wall_time": 1, "info.device": 1,
               "info.scf_cycles": 1, "_id": 0},
    "failures": {"generation": 1, "elements": 1, "reason": 1, "_id": 0},
    "frames": {"generation": 1, "source": 1, "selected_as": 1, "_id": 0},
}  # fmt: skip


def _positive(value) -> bool:
    """What ``{"$gt": 0}`` matches: a number above zero (booleans are not numbers to MongoDB)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def scanned_tables(db: ReadOnlyDatabase, match: Mapping) -> dict[str, dict]:
    """:func:`live_tables` from one ``find`` per collection, counted here (FerretDB v1).

    FerretDB v1 cannot use an index for ``match`` (its SQLite backend pushes down no
    filter on ``generation``), so each pipeline of :func:`live_tables` costs a scan of
    the collection, and it runs one pipeline per sum (twelve scans), each ``$group``
    looking its groups up linearly. Reading the grouping fields of the matched documents
    once per collection (the cursor is streamed, memory stays ~ the tables) and counting
    here gives the same numbers for three scans: 10x less database CPU at 10k labels.
    With summaries, what is matched is only what no summary covers.
    """
    tables: dict[str, dict] = {name: {} for name in TABLE_NAMES}

    def add(table: str, key, n: float = 1) -> None:
        tables[table][key] = tables[table].get(key, 0) + n

    def add_pair(table: str, key, name: str, value: float) -> None:
        row = tables[table].setdefault(key, {"n": 0, name: 0})
        row["n"] += 1
        row[name] += value

    for doc in db["labels"].find(match, SCANNED_FIELDS["labels"]):
        g, info = doc.get("generation"), doc.get("info") or {}
        for element in set(doc.get("elements") or ()):
            add("labels_by_element", (g, element))
        add("labels_by_source", (g, doc.get("source")))
        wall_time = doc.get("wall_time")
        if _positive(wall_time):
            add_pair("dft_time", g, "wall_time", wall_time)
            add_pair("wall_time_by_size", (g, doc.get("n_atoms"), info.get("device")), "wall_time", wall_time)
        if _positive(info.get("scf_cycles")):
            add_pair("scf_cycles", g, "cycles", info["scf_cycles"])
    for doc in db["failures"].find(match, SCANNED_FIELDS["failures"]):
        g = doc.get("generation")
        for element in set(doc.get("elements") or ()):
            add("failures_by_element", (g, element))
        add("failures_by_generation", g)
        add("failure_reasons", (g, doc.get("reason")))
    for doc in db["frames"].find(match, SCANNED_FIELDS["frames"]):
        add("frames_by_source", (doc.get("generation"), doc.get("source"), doc.get("selected_as")))
    return tables


def _generation_of(key) -> Optional[int]:
    return key[0] if isinstance(key, tuple) else key


def split_by_generation(tables: Mapping[str, Mapping]) -> dict[Optional[int], dict[str, dict]]:
    """``{generation: tables}`` holding each generation's rows of ``tables``."""
    out: dict[Optional[int], dict[str, dict]] = {}
    for name, table in tables.items():
        for key, value in table.items():
            part = out.setdefault(_generation_of(key), {n: {} for n in TABLE_NAMES})
            part[name][key] = value
    return out


def merge_tables(parts: list[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Row-wise sums of several table sets (counts add; ``{"n", "wall_time"...}`` add field by field)."""
    merged: dict[str, dict] = {name: {} for name in TABLE_NAMES}
    for part in parts:
        for name in TABLE_NAMES:
            target = merged[name]
            for key, value in (part.get(name) or {}).items():
                if isinstance(value, Mapping):
                    row = target.setdefault(key, dict.fromkeys(value, 0))
                    for field_name, number in value.items():
                        row[field_name] = row.get(field_name, 0) + number
                else:
                    target[key] = target.get(key, 0) + value
    return merged


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
    #: (generation, source) -> labels, source copied from the frame when the label was
    #: written (None for labels written before that field existed).
    labels_by_source: dict = field(default_factory=dict)
    #: (generation, source, selected_as) -> frames.
    frames_by_source: dict = field(default_factory=dict)
    #: generation -> {"n": labels with a wall time, "wall_time": summed seconds}.
    dft_time: dict = field(default_factory=dict)
    #: generation -> {"n": labels with SCF cycles recorded, "cycles": summed cycles}.
    scf_cycles: dict = field(default_factory=dict)
    #: (n_atoms, device) -> {"n": labels, "wall_time": summed seconds}, all generations.
    wall_time_by_size: dict = field(default_factory=dict)
    #: (generation, reason) -> failures.
    failure_reasons: dict = field(default_factory=dict)
    #: Generation documents (see the module docstring), by number.
    generations: list = field(default_factory=list)
    #: generation -> calibration points, for the latest CALIBRATION_GENERATIONS generations.
    calibration: dict = field(default_factory=dict)
    #: Completed generations read from summary documents instead of aggregated now.
    summarised: list = field(default_factory=list)
    #: Completed generations without a (current) summary, aggregated now.
    unsummarised_completed: list = field(default_factory=list)

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


def _mark_finished(generations: list[dict], number: int, now: datetime) -> None:
    """Show generation ``number`` as the flow is about to record it: completed, report included."""
    for doc in generations:
        if doc.get("number") == number:
            doc["status"] = "completed"
            doc.setdefault("finished_at", now)
            doc.pop("error", None)
            stages = dict(doc.get("stages") or {})
            report = dict(stages.get("report") or {})
            if report.get("status") != "completed":
                report["status"] = "completed"
                report.setdefault("finished_at", now.replace(tzinfo=None).isoformat())
            stages["report"] = report
            doc["stages"] = stages


def take_snapshot(
    db: ReadOnlyDatabase,
    calibration_generations: int = CALIBRATION_GENERATIONS,
    *,
    use_summaries: bool = True,
    finishing: Optional[int] = None,
) -> Snapshot:
    """Everything the dashboard shows: summaries of completed generations plus a live aggregation of the rest.

    Completed generations with a summary document (:mod:`pipeline.dashboard.summaries`)
    are read from it (about a hundred small documents for a hundred generations); the
    running generation, failed ones, imported labels and completed generations without
    a summary are aggregated now. ``use_summaries=False`` aggregates everything now
    (tests compare the two). ``finishing`` is the generation whose report stage is
    asking: it is shown as completed, as the flow marks it right after the report.
    """
    from pipeline.dashboard.summaries import read_summaries

    start = time.perf_counter()
    now = datetime.now(timezone.utc)
    snapshot = Snapshot(taken_at=now, seconds=0.0, engine=db.engine, database=db.name)
    snapshot.generations = generation_documents(db)
    if finishing is not None:
        _mark_finished(snapshot.generations, finishing, now)
    completed = sorted(
        g["number"] for g in snapshot.generations if g.get("status") == "completed" and g.get("number") is not None
    )
    summaries = read_summaries(db, completed) if use_summaries and completed else {}
    live_match = {"generation": {"$nin": sorted(summaries)}} if summaries else None
    tables = merge_tables([live_tables(db, live_match), *summaries.values()])
    snapshot.summarised = sorted(summaries)
    snapshot.unsummarised_completed = [g for g in completed if g not in summaries]
    for name in TABLE_NAMES:
        setattr(snapshot, name, tables[name])
    # Derived here rather than aggregated: one pipeline less over the labels.
    by_generation: dict = defaultdict(int)
    for (generation, _), n in snapshot.labels_by_source.items():
        by_generation[generation] += n
    snapshot.labels_by_generation = dict(by_generation)
    by_size: dict = {}
    for (_, n_atoms, device), values in tables["wall_time_by_size"].items():
        row = by_size.setdefault((n_atoms, device), {"n": 0, "wall_time": 0})
        row["n"] += values["n"]
        row["wall_time"] += values["wall_time"]
    snapshot.wall_time_by_size = by_size
    latest = [g["number"] for g in snapshot.generations if g.get("number") is not None][-calibration_generations:]
    snapshot.calibration = calibration_points(db, latest) if calibration_generations > 0 else {}
    snapshot.seconds = time.perf_counter() - start
    log.info(
        "dashboard snapshot of %s in %.2f s (%d generations from summaries, %d completed ones aggregated live)",
        db.name, snapshot.seconds, len(snapshot.summarised), len(snapshot.unsummarised_completed),
    )  # fmt: skip
    return snapshot


def _single(table: dict[Key, dict[str, float]], name: str, flat: bool = True) -> dict:
    """``{key: value}`` from a :func:`group_sums` table (one-field keys unwrapped when ``flat``)."""
    return {(key[0] if flat else key): int(values[name]) for key, values in table.items()}
