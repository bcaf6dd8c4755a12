"""The one configuration model, validated at the edge.

Sources, highest precedence first: keyword arguments, environment variables
(``SELFPLAY_…``; nested fields with ``__``, e.g. ``SELFPLAY_SELECTION__LO=0.1``), then a
YAML file (``--config FILE`` or ``SELFPLAY_CONFIG``). Every validation problem becomes
a one-line :class:`~pipeline.errors.ConfigError` naming the field; the MongoDB URI is a
secret whose password never appears in logs, reprs or errors.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

# Section models live next to the code they configure; this module composes them.
from dft.labeller import LabellerSettings
from dft.settings import DFTSettings
from pipeline.errors import ConfigError, validation_message
from pipeline.selection import SelectionConfig
from pipeline.store import mask_uri
from potential.config import ModelConfig, TrainConfig
from samplers.dynamics import MeltQuenchConfig
from samplers.random_structures import RandomStructureConfig, RandomStructureParams
from samplers.relax import RelaxConfig
from samplers.substitution import SubstitutionConfig, SubstitutionParams

#: The YAML file of the configuration being loaded (:func:`load_config`), read by
#: pydantic-settings' own YAML source; per call, so that threads load apart.
_yaml_file: ContextVar[Optional[Path]] = ContextVar("selfplay_yaml_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomSampler(_Section):
    """Random multi-element cells and clusters (model-free; scored by the model when one exists)."""

    enabled: bool = True
    count: int = Field(16, ge=0, description="structures per generation")
    params: RandomStructureParams = Field(default_factory=RandomStructureParams)

    def build(self, elements: list[str]) -> RandomStructureConfig:
        return self.params.with_elements(elements)


class _StartedSampler(_Section):
    """A sampler that starts from structures: a share of stored labelled frames, the rest random."""

    from_database: float = Field(
        0.5, ge=0, le=1, description="share of starting structures drawn from labelled frames (rest: random)"
    )
    from_imported: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of those stored starts drawn first from imported frames (the structures the store "
        "was seeded with, selfplay db import), the rest from every labelled frame",
    )
    start: RandomStructureParams = Field(
        default_factory=RandomStructureParams, description="the random starting structures"
    )

    def build_start(self, elements: list[str]) -> RandomStructureConfig:
        return self.start.with_elements(elements)


class MeltQuenchSampler(_StartedSampler):
    """Heat, hold and cool with the current model, starting from random structures and stored frames."""

    enabled: bool = True
    trajectories: int = Field(8, ge=0, description="trajectories per generation")
    params: MeltQuenchConfig = Field(default_factory=MeltQuenchConfig)
    relax_starts: int = Field(
        0,
        ge=0,
        le=10_000,
        description="FIRE steps with the model on every start before heating, so that MD begins in the model's "
        "basin (0: heat the starts as drawn)",
    )

    def build(self) -> MeltQuenchConfig:
        return self.params

    def build_relax(self) -> RelaxConfig | None:
        if not self.relax_starts:
            return None
        return RelaxConfig(max_steps=self.relax_starts, hi=None, min_covalent_ratio=self.params.min_covalent_ratio)


class RelaxSampler(_StartedSampler):
    """Relax random structures and stored frames with the current model, keeping the path (off by default)."""

    enabled: bool = False
    count: int = Field(8, ge=0, description="relaxations per generation")
    params: RelaxConfig = Field(default_factory=RelaxConfig)


class SubstitutionSampler(_Section):
    """Element substitution in prototypes and stored frames."""

    enabled: bool = True
    count: int = Field(8, ge=0, description="substituted structures per generation")
    from_database: float = Field(0.5, ge=0, le=1, description="share of seeds drawn from labelled frames")
    params: SubstitutionParams = Field(default_factory=SubstitutionParams)

    def build(self, elements: list[str]) -> SubstitutionConfig:
        return self.params.with_elements(elements)


class ExploreConfig(_Section):
    random: RandomSampler = Field(default_factory=RandomSampler)
    melt_quench: MeltQuenchSampler = Field(default_factory=MeltQuenchSampler)
    relax: RelaxSampler = Field(default_factory=RelaxSampler)
    substitution: SubstitutionSampler = Field(default_factory=SubstitutionSampler)


class ResourcesConfig(_Section):
    device: str = Field("auto", pattern="^(auto|cpu|cuda|cuda:[0-9]+)$", description="model training/inference device")
    dft_workers: int = Field(1, ge=1, description="DFT single points at once (one process each)")
    dft_retries: int = Field(1, ge=0, description="Prefect retries of a DFT task that crashed (not of SCF failures)")
    task_runner: str = Field("threads", pattern="^(threads|dask)$", description="threads, or dask (prefect-dask)")
    dask_address: Optional[str] = Field(
        None, description="scheduler address for task_runner=dask; None = local cluster"
    )
    dask_workers: int = Field(2, ge=1, description="local Dask worker processes when no address is given")


class GenerationSettings(_Section):
    min_train_frames: int = Field(
        8, ge=1, description="fewer labelled frames than this: no training (cold start, model-free exploration)"
    )
    min_labelled_fraction: float = Field(
        0.5, ge=0, le=1, description="a generation completes if at least this share of its frames got labels"
    )
    training_theories: list[str] = Field(
        default_factory=list, description="other level-of-theory keys whose labels also train the model"
    )
    warm_start: bool = Field(
        True,
        description="start each generation's training from the last model's weights (false: from scratch, "
        "the ensemble's members drawn afresh every generation)",
    )
    export_hdf5: bool = Field(True, description="write a cumulative HDF5 snapshot after each generation")
    write_report: bool = Field(True, description="write the static HTML report after each generation")


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

    elements: list[str] = Field(default_factory=lambda: ["H", "C", "N", "O"], min_length=1)
    seed: int = Field(0, description="every random choice of a generation derives from (seed, generation)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainConfig = Field(default_factory=TrainConfig)
    explore: ExploreConfig = Field(default_factory=ExploreConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    # The labeller: PySCF DFT by default (`backend` absent), or `backend: xtb | ase` (dft/labeller.py).
    dft: LabellerSettings = Field(default_factory=DFTSettings)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @field_validator("elements")
    @classmethod
    def _check_elements(cls, value: list[str]) -> list[str]:
        from pipeline.atoms import symbols_to_numbers

        symbols_to_numbers(value)  # raises on unknown or unsupported symbols
        if len(set(value)) != len(value):
            raise ValueError("elements are listed twice")
        return value

    @model_validator(mode="after")
    def _check_samplers(self) -> "SelfplayConfig":
        explore = self.explore
        if not any(
            (
                explore.random.enabled and explore.random.count,
                explore.melt_quench.enabled and explore.melt_quench.trajectories,
                explore.relax.enabled and explore.relax.count,
                explore.substitution.enabled and explore.substitution.count,
            )
        ):
            raise ValueError("every sampler is disabled or has a zero count: nothing to explore")
        return self

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
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=_yaml_file.get())

    def uri(self) -> str | None:
        return None if self.mongodb_uri is None else self.mongodb_uri.get_secret_value()

    def public_dict(self) -> dict[str, Any]:
        """JSON-able settings with the URI masked, for provenance on Generation documents."""
        data = self.model_dump(mode="json")
        data["mongodb_uri"] = mask_uri(self.mongodb_uri)
        return data


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
    token = _yaml_file.set(Path(path) if data else None)
    try:
        return SelfplayConfig(**overrides)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source)) from None
    except (ValueError, TypeError) as exc:  # e.g. malformed JSON in a nested env variable
        raise ConfigError(f"{source}: {exc}") from None
    finally:
        _yaml_file.reset(token)
