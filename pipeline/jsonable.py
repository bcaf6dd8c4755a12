"""The one JSON sanitiser: numpy values, paths and sets as plain JSON types.

Used for everything that goes into the store or a JSON file: provenance, SCF records,
stage results. :func:`store_safe` also rewrites dict keys that MongoDB refuses as
field names (``.`` anywhere, ``$`` in front).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import numpy as np


def json_default(value: Any) -> Any:
    """``default=`` for :func:`json.dumps`: numpy, paths and sets; anything else as ``str``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples, sets and paths turned into plain Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.generic, PurePath, set, frozenset)):
        return jsonable(json_default(value))
    return value


def store_safe(value: Any) -> Any:
    """:func:`jsonable`, with dict keys that are valid field names on every MongoDB server."""
    return _safe_keys(jsonable(value))


def _safe_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).replace(".", "_").lstrip("$"): _safe_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe_keys(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json_default(value)
