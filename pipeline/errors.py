"""Errors that reach users as one line.

Every entry point (CLI, flow, public function) raises a subclass of :class:`SelfplayError`
for problems the user can fix; the CLI prints ``error: <message>`` and exits non-zero.
Messages name the offending thing (field, file, element, frame) and never carry
credentials.
"""

from __future__ import annotations

from typing import Callable


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


#: Fields whose value is never shown in a message (it may hold a password).
SECRET_FIELD_HINTS = ("uri", "password", "secret", "token")


def first_validation_problem(error) -> tuple[str, str]:
    """``(dotted field path, message)`` of the first problem of a pydantic ValidationError.

    Turns pydantic's wording into ours: "unknown field" for extra fields, no
    "Value error, " prefix. Messages for users come from :func:`validation_message`.
    """
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return field, "unknown field"
    return field, first["msg"].removeprefix("Value error, ")


def validation_message(
    error,
    source: str = "",
    *,
    dotted: bool = False,
    rename: Callable[[str], str] | None = None,
) -> str:
    """The one line a pydantic ValidationError becomes: the one place that formats them.

    ``{source}: field '{field}': {message} (got {value!r}); and N more problems``, where
    the value is shown unless the field is unknown, the value is a mapping or list, or the
    field may hold a secret (:data:`SECRET_FIELD_HINTS`). With ``dotted`` the field path
    follows the source after a dot (``dft.xtb.basis: unknown field``); ``rename`` maps the
    dotted field path to the name the user typed (a command-line option, say), shown as
    ``{name}: {message}``. Without a field (a model-level check) the message follows the
    source directly.
    """
    problems = error.errors()
    first = problems[0]
    field, message = first_validation_problem(error)
    value = first.get("input")
    shown = ""
    secret = any(hint in field.lower() for hint in SECRET_FIELD_HINTS)
    if first["type"] != "extra_forbidden" and not isinstance(value, (dict, list)) and not secret:
        shown = f" (got {value!r})"
    more = len(problems) - 1
    tail = f"; and {more} more problem{'s' if more > 1 else ''}" if more else ""
    if rename is not None:
        where = [source, rename(field)]
    elif dotted:
        where = [".".join(part for part in (source, field) if part)]
    else:
        where = [source, f"field '{field}'" if field else ""]
    prefix = "".join(f"{part}: " for part in where if part)
    return f"{prefix}{message}{shown}{tail}"
