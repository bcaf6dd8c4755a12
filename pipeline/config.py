"""The one configuration model, validated at the edge.

Sources, highest precedence first: keyword arguments, environment variables
(``SELFPLAY_…``; nested fields with ``__``, e.g. ``SELFPLAY_SELECTION__LO=0.1``), then a
YAML file (``--config FILE`` or ``SELFPLAY_CONFIG``). Every validation problem becomes
a one-line :class:`~pipeline.errors.ConfigError` naming the field; the MongoDB URI is a
secret whose password never appears in logs, reprs or errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.errors import ConfigError


def mask_uri(uri: str | SecretStr | None) -> str:
    """The URI with its password replaced by ``***`` (for logs and error messages)."""
    if uri is None:
        return "embedded"
    if isinstance(uri, SecretStr):
        uri = uri.get_secret_value()
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.password is None and "@" not in parts.netloc:
        return uri
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


class _YamlSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by :attr:`SelfplayConfig._yaml_path`."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class SelfplayConfig(BaseSettings):
    """Everything a generation needs. Sections are added by the packages they configure."""

    model_config = SettingsConfigDict(
        env_prefix="SELFPLAY_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    mongodb_uri: SecretStr | None = Field(
        default=None, description="mongodb:// or mongodb+srv:// URI; unset means the embedded in-process store"
    )
    database: str = Field(default="selfplay", min_length=1, description="database name when the URI names none")
    db_timeout_ms: int = Field(default=5000, gt=0, description="server selection / connect timeout")
    workdir: Path = Field(default=Path("selfplay-out"), description="models, reports and exports land here")

    _yaml_data: ClassVar[dict[str, Any]] = {}

    @field_validator("mongodb_uri")
    @classmethod
    def _check_uri(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() in ("", "embedded"):
            return None
        raw = value.get_secret_value()
        if not raw.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(f"must start with mongodb:// or mongodb+srv:// (got {mask_uri(raw)!r})")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings, _YamlSource(settings_cls, cls._yaml_data)

    def uri(self) -> str | None:
        return None if self.mongodb_uri is None else self.mongodb_uri.get_secret_value()

    def public_dict(self) -> dict[str, Any]:
        """JSON-able settings with the URI masked, for provenance on Generation documents."""
        data = self.model_dump(mode="json")
        data["mongodb_uri"] = mask_uri(self.mongodb_uri)
        return data


def _format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    value = first.get("input")
    shown = ""
    if first["type"] != "extra_forbidden" and not isinstance(value, (dict, list)) and "uri" not in field:
        shown = f" (got {value!r})"
    more = len(error.errors()) - 1
    tail = f"; and {more} more problem{'s' if more > 1 else ''}" if more else ""
    return f"{source}: field '{field}': {message}{shown}{tail}"


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def load_config(path: Path | str | None = None, **overrides: Any) -> SelfplayConfig:
    """Build and validate the configuration; raises :class:`ConfigError` in one line."""
    if path is None and os.environ.get("SELFPLAY_CONFIG"):
        path = os.environ["SELFPLAY_CONFIG"]
    data = read_config_file(Path(path)) if path is not None else {}
    source = f"config {path}" if path is not None else "config"
    SelfplayConfig._yaml_data = data
    try:
        return SelfplayConfig(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except (ValueError, TypeError) as exc:  # e.g. malformed JSON in a nested env variable
        raise ConfigError(f"{source}: {exc}") from None
    finally:
        SelfplayConfig._yaml_data = {}
