"""Counts over the store, aggregated in the database (never by loading documents).

Used by ``selfplay status``, the dashboard and the generation report.
"""

from __future__ import annotations

from collections import defaultdict

from pipeline.documents import Failure, Frame, Generation, Label


def _count_by(collection, key: str, match: dict | None = None, unwind: bool = False) -> dict:
    pipeline = [{"$match": match}] if match else []
    if unwind:
        pipeline.append({"$unwind": f"${key}"})
    pipeline.append({"$group": {"_id": f"${key}", "n": {"$sum": 1}}})
    return {row["_id"]: row["n"] for row in collection.aggregate(pipeline)}


def per_element_counts(match: dict | None = None) -> dict[str, dict[str, int]]:
    """element -> {"frames", "labels", "failures"}: documents containing that element."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"frames": 0, "labels": 0, "failures": 0})
    for name, document in (("frames", Frame), ("labels", Label), ("failures", Failure)):
        for element, n in _count_by(document._get_collection(), "elements", match, unwind=True).items():
            table[element][name] = n
    return dict(sorted(table.items()))


def per_generation_counts() -> dict[int | None, dict[str, int]]:
    """generation -> {"frames", "labels", "failures"} (None: imported / outside generations)."""
    table: dict = defaultdict(lambda: {"frames": 0, "labels": 0, "failures": 0})
    for name, document in (("frames", Frame), ("labels", Label), ("failures", Failure)):
        for generation, n in _count_by(document._get_collection(), "generation").items():
            table[generation][name] = n
    return dict(sorted(table.items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0)))


def dataset_summary() -> dict:
    generations = [
        {
            "number": g.number,
            "status": g.status,
            "counts": dict(g.counts or {}),
            "stages": {name: (state or {}).get("status", "pending") for name, state in (g.stages or {}).items()},
            "error": g.error,
        }
        for g in Generation.objects.only("number", "status", "counts", "stages", "error").order_by("number")
    ]
    return {
        "frames": Frame.objects.count(),
        "labels": Label.objects.count(),
        "failures": Failure.objects.count(),
        "theories": _count_by(Label._get_collection(), "theory"),
        "per_element": per_element_counts(),
        "per_generation": per_generation_counts(),
        "generations": generations,
    }
