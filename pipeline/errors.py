"""Errors that reach users as one line.

Every entry point (CLI, flow, public function) raises a subclass of :class:`SelfplayError`
for problems the user can fix; the CLI prints ``error: <message>`` and exits non-zero.
Messages name the offending thing (field, file, element, frame) and never carry
credentials.
"""

from __future__ import annotations


class SelfplayError(Exception):
    """Base class: a problem with a clear one-line explanation."""

    exit_code = 2

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class ConfigError(SelfplayError):
    """A configuration file or value is malformed or out of range."""


class InvalidStructure(SelfplayError, ValueError):
    """A frame cannot be used: unknown element, NaN coordinates, overlapping atoms, ..."""


class StoreError(SelfplayError):
    """The database refused an operation or holds inconsistent data."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, or rejected our credentials."""

    exit_code = 3


class PrefectUnavailable(SelfplayError):
    """No Prefect API to run a flow on: the temporary server did not start."""

    exit_code = 3


class DataFileError(SelfplayError):
    """A data file (import, export, training data) is unreadable or inconsistent."""


def first_validation_problem(error) -> tuple[str, str]:
    """``(dotted field path, message)`` of the first problem of a pydantic ValidationError.

    The one place that turns pydantic's wording into ours: "unknown field" for extra
    fields, no "Value error, " prefix.
    """
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return field, "unknown field"
    return field, first["msg"].removeprefix("Value error, ")
