"""Shared pieces of the sampler configurations.

Every sampler has a pydantic model with ``extra="forbid"``, nested in the one root
configuration (flows/config.py); :func:`parse_config` builds one and turns the
first validation problem into a one-line :class:`~pipeline.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from pipeline.atoms import symbols_to_numbers
from pipeline.errors import ConfigError, SelfplayError, validation_message

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def check_elements(symbols: list[str]) -> list[str]:
    """Validated element set: non-empty, known symbols H..Bi, duplicates removed (order kept)."""
    if not symbols:
        raise ValueError("element set is empty; give at least one element (H..Bi)")
    symbols_to_numbers(symbols)  # raises InvalidStructure naming the bad symbol
    return list(dict.fromkeys(symbols))


def parse_config(cls: type[ConfigT], what: str | None = None, **values: Any) -> ConfigT:
    """``cls(**values)``, or a one-line ConfigError naming the field and the problem."""
    name = what or cls.__name__
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, name)) from None
    except SelfplayError as exc:
        raise ConfigError(f"{name}: {exc}") from None


class ElementSet(BaseModel):
    """The element set a sampler draws from; a sampler's configuration is its element-free
    parameters (what the root configuration nests) plus this (the run's elements)."""

    elements: list[str] = Field(description="elements that may appear in the structures (H..Bi)")

    @field_validator("elements")
    @classmethod
    def _elements(cls, value: list[str]) -> list[str]:
        return check_elements(value)
