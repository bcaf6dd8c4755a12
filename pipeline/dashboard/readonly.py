"""A read-only handle on the store: the dashboard can find and aggregate, nothing else.

The wrapper exposes only reading methods of pymongo's ``Database``/``Collection`` and
refuses aggregation stages that write (``$out``, ``$merge``), so no code path of the
dashboard can change the data it shows, whatever its callbacks are asked to do.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

#: Aggregation stages that write to a collection.
WRITING_STAGES = frozenset({"$out", "$merge"})

#: Database engines whose aggregation differs from MongoDB's (see :mod:`pipeline.dashboard.queries`).
STANDARD = "standard"
FERRETDB_V1 = "ferretdb-v1"


class ReadOnlyCollection:
    """``find``/``find_one``/``aggregate``/``count_documents``/``distinct`` of one collection."""

    def __init__(self, collection):
        self._collection = collection

    @property
    def name(self) -> str:
        return self._collection.name

    def find(self, filter: Mapping | None = None, projection: Any = None, **kwargs):
        return self._collection.find(filter or {}, projection, **kwargs)

    def find_one(self, filter: Mapping | None = None, projection: Any = None, **kwargs):
        return self._collection.find_one(filter or {}, projection, **kwargs)

    def aggregate(self, pipeline: Iterable[Mapping], **kwargs):
        pipeline = list(pipeline)
        for stage in pipeline:
            writing = WRITING_STAGES.intersection(stage)
            if writing:
                raise PermissionError(f"the dashboard is read-only: aggregation stage {sorted(writing)[0]} refused")
        return self._collection.aggregate(pipeline, **kwargs)

    def count_documents(self, filter: Mapping | None = None, **kwargs) -> int:
        return self._collection.count_documents(filter or {}, **kwargs)

    def distinct(self, key: str, filter: Mapping | None = None):
        return self._collection.distinct(key, filter or {})


class ReadOnlyDatabase:
    """Collections by name (``db["labels"]``), each a :class:`ReadOnlyCollection`."""

    def __init__(self, database):
        self._database = database

    @classmethod
    def current(cls) -> "ReadOnlyDatabase":
        """The database mongoengine's default alias is connected to (``pipeline.store.connect``)."""
        import mongoengine as me

        return cls(me.get_db())

    @property
    def name(self) -> str:
        return self._database.name

    def __getitem__(self, name: str) -> ReadOnlyCollection:
        return ReadOnlyCollection(self._database[name])

    @cached_property
    def engine(self) -> str:
        """:data:`FERRETDB_V1` for FerretDB 1.x, else :data:`STANDARD` (MongoDB, the embedded store)."""
        try:
            info = self._database.command("buildInfo")
        except Exception:  # the embedded store does not implement buildInfo; it follows MongoDB
            return STANDARD
        version = str(info.get("ferretdbVersion") or "")
        if version.lstrip("v").split(".")[0] == "1":
            return FERRETDB_V1
        return STANDARD
