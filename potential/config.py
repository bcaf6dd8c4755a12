"""Hyperparameters of the model and of its training (pydantic, ``extra="forbid"``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Architecture of one ensemble member (all members share it).

    Channel counts per rank are the "tensorial asset allocation" of TeaNet: many cheap
    scalar channels, fewer vector (3 components) and rank-2 tensor (9 components) ones.
    """

    model_config = ConfigDict(extra="forbid")

    cutoff: float = Field(5.0, gt=0.5, le=12.0, description="neighbour cutoff radius (Å)")
    scalar_channels: int = Field(32, ge=1, le=1024, description="C0: invariant channels per atom")
    vector_channels: int = Field(8, ge=1, le=256, description="C1: vector channels per atom")
    tensor_channels: int = Field(4, ge=1, le=128, description="C2: rank-2 tensor channels per atom")
    layers: int = Field(3, ge=1, le=32, description="message-passing layers (TeaNet used 16)")
    radial_basis: int = Field(8, ge=2, le=64, description="Bessel functions in the radial basis")
    radial_hidden: int = Field(16, ge=4, le=512, description="hidden width of the radial filter network")
    readout_hidden: int = Field(32, ge=4, le=512, description="hidden width of the per-atom energy readout")
    envelope_exponent: int = Field(6, ge=2, le=12, description="p of the polynomial cutoff envelope")
    recurrent_init: bool = Field(
        False, description="initialise every layer with the same weights (TeaNet's recurrent init); they train apart"
    )
    dtype: Literal["float32", "float64"] = "float32"


class TrainConfig(BaseModel):
    """How an ensemble is trained. Defaults train a small usable model on CPU in minutes."""

    model_config = ConfigDict(extra="forbid")

    ensemble_size: int = Field(4, ge=1, le=64)
    epochs: int = Field(60, ge=1)
    min_steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps at least: on a small training set the epochs are raised to reach them, "
        "and neither early stopping nor the choice of the best epoch starts before they are done (an early "
        "generation of a few dozen frames, validated on one or two, is otherwise stopped, or kept, long "
        "before it has learned them)",
    )
    batch_size: int = Field(4, ge=1, description="structures per mini-batch")
    learning_rate: float = Field(3e-3, gt=0)
    min_learning_rate_ratio: float = Field(0.02, ge=0, le=1, description="cosine schedule ends at lr x this")
    warmup_epochs: float = Field(1.0, ge=0)
    weight_decay: float = Field(1e-5, ge=0)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(10.0, gt=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(20, ge=1, description="epochs without validation improvement before stopping")
    energy_weight: float = Field(1.0, ge=0, description="weight of the (eV/atom)^2 energy loss")
    force_weight: float = Field(10.0, ge=0, description="weight of the (eV/Å)^2 force loss")
    stress_weight: float = Field(100.0, ge=0, description="weight of the (eV/Å^3)^2 stress loss, where labelled")
    bootstrap: bool = Field(True, description="each member sees its own bootstrap resample of the training set")
    seed: int = 0
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="wall-time budget of the epochs (set-up not counted); the epoch running then is cut short",
    )
    max_frames: int | None = Field(None, ge=1, description="use at most this many frames (random subset)")
    progress: bool = Field(True, description="show rich progress bars")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.energy_weight == 0 and self.force_weight == 0:
            raise ValueError("energy_weight and force_weight cannot both be zero")
        return self
