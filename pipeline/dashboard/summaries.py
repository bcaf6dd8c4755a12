"""Per-generation summary documents: what the dashboard would aggregate, stored once.

A finished generation's labels, failures and frames do not change, so its rows of every
dashboard table (:data:`~pipeline.dashboard.queries.TABLE_NAMES`: counts per element,
per sampler, DFT time, failure reasons...) are aggregated once, when the generation's
report stage runs (:func:`flows.stages.report_stage` calls
:func:`write_generation_summary`), and kept in the ``dashboard_summaries`` collection,
one small document per generation (``_id`` = generation number, so no index is needed).
The dashboard then reads ~100 documents for 100 completed generations instead of
aggregating every label on every refresh, and aggregates live only what no summary
covers: the running or failed generations, imported labels (no generation) and
completed generations without a summary.

A summary is used only while its generation's status is ``completed`` and its
``schema`` is :data:`SCHEMA`; anything else falls back to the live aggregation, so a
missing or outdated summary costs time, never correctness. Old data (written before
summaries existed) gets them from :func:`write_summaries` (``selfplay db summarise``),
which aggregates all completed generations in one pass and splits the result.

The numbers are those of :func:`~pipeline.dashboard.queries.live_tables` by
construction: a summary *is* its output restricted to one generation, stored as rows::

    {"_id": 7, "generation": 7, "schema": 1, "computed_at": datetime,
     "tables": {"labels_by_element": [{"k": ["Cu"], "v": 12}, ...],
                "dft_time": [{"k": [], "v": {"n": 12, "wall_time": 301.5}}], ...}}

(keys are values, never field names: element symbols and failure reasons may contain
characters that field names cannot).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Iterable, Mapping, Optional

from pipeline.dashboard.queries import TABLE_NAMES, live_tables, split_by_generation
from pipeline.dashboard.readonly import ReadOnlyDatabase

log = logging.getLogger(__name__)

COLLECTION = "dashboard_summaries"
#: Bumped whenever the tables change meaning; summaries of another schema are ignored.
SCHEMA = 1


def encode(tables: Mapping[str, Mapping], generation: int) -> dict:
    """One generation's tables as a summary document's ``tables`` (generation left out of the keys)."""
    out = {}
    for name in TABLE_NAMES:
        rows = []
        for key, value in (tables.get(name) or {}).items():
            rest = list(key[1:]) if isinstance(key, tuple) else []
            rows.append({"k": rest, "v": dict(value) if isinstance(value, Mapping) else int(value)})
        out[name] = rows
    return out


def decode(encoded: Mapping[str, list], generation: int) -> dict[str, dict]:
    """Inverse of :func:`encode`: tables keyed as :func:`~pipeline.dashboard.queries.live_tables` keys them."""
    tables: dict[str, dict] = {}
    for name in TABLE_NAMES:
        table = {}
        for row in encoded.get(name) or []:
            rest = tuple(row.get("k") or ())
            key = (generation, *rest) if rest else generation
            value = row.get("v")
            table[key] = dict(value) if isinstance(value, Mapping) else int(value or 0)
        tables[name] = table
    return tables


def read_summaries(db: ReadOnlyDatabase, numbers: Iterable[int]) -> dict[int, dict[str, dict]]:
    """``{generation: tables}`` for those of ``numbers`` that have a summary of the current schema."""
    numbers = sorted(set(numbers))
    if not numbers:
        return {}
    out = {}
    for doc in db[COLLECTION].find({"_id": {"$in": numbers}}):
        if doc.get("schema") != SCHEMA or not isinstance(doc.get("tables"), Mapping):
            continue
        out[int(doc["_id"])] = decode(doc["tables"], int(doc["_id"]))
    return out


def _summary_document(number: int, tables: Mapping[str, Mapping], now: datetime) -> dict:
    return {"_id": number, "generation": number, "schema": SCHEMA, "computed_at": now, "tables": encode(tables, number)}


def write_summaries(database=None, numbers: Optional[Iterable[int]] = None) -> list[int]:
    """Aggregate and store the summaries of ``numbers`` (default: every completed generation).

    ``database`` is a writable pymongo ``Database`` (default: mongoengine's connection).
    One aggregation pass covers all the generations asked for; each gets a document,
    an empty one when it has no labels, failures or frames. Returns the numbers written.
    """
    if database is None:
        import mongoengine as me

        database = me.get_db()
    reader = ReadOnlyDatabase(database)
    if numbers is None:
        numbers = [d["number"] for d in database["generations"].find({"status": "completed"}, {"number": 1, "_id": 0})]
    numbers = sorted({int(n) for n in numbers})
    if not numbers:
        return []
    parts = split_by_generation(live_tables(reader, {"generation": {"$in": numbers}}))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    collection = database[COLLECTION]
    for number in numbers:
        document = _summary_document(number, parts.get(number) or {}, now)
        collection.replace_one({"_id": number}, document, upsert=True)
    log.info("dashboard summaries written for %d generation(s)", len(numbers))
    return numbers


def write_generation_summary(number: int, database=None) -> None:
    """The summary of one generation, written by its report stage (its labels are final by then)."""
    write_summaries(database, [number])


def missing_summaries(database=None) -> list[int]:
    """Completed generations without a summary of the current schema."""
    if database is None:
        import mongoengine as me

        database = me.get_db()
    completed = {d["number"] for d in database["generations"].find({"status": "completed"}, {"number": 1, "_id": 0})}
    have = {d["_id"] for d in database[COLLECTION].find({"schema": SCHEMA}, {"_id": 1})}
    return sorted(completed - have)
