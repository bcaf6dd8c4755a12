"""The machine-learned potential: a TeaNet-style equivariant ensemble, its training and
an ASE calculator.

Public API (stable names, used by samplers, flows and the CLI)::

    build_ensemble(config, n_members=4, seed=0, device=None) -> EnsemblePotential
    EnsemblePotential.evaluate(frames, stress=None) -> list[dict]
    EnsembleCalculator(potential)            # ASE calculator
    load_calculator(path, device=None) -> EnsembleCalculator
    save_ensemble(ensemble, dir) / load_ensemble(dir, device=None)
    train_ensemble(frames, TrainConfig, out_dir, model_config=..., warm_start=..., device=...)
    read_frames(path) -> list[ase.Atoms]     # extxyz or HDF5 export
"""

import importlib

# Lazy exports: `import potential.config` (pure pydantic, used by the configuration and
# the CLI) must not pull in torch.
_EXPORTS = {
    "EnsembleCalculator": "potential.calculator",
    "load_calculator": "potential.calculator",
    "load_ensemble": "potential.checkpoint",
    "save_ensemble": "potential.checkpoint",
    "ModelConfig": "potential.config",
    "TrainConfig": "potential.config",
    "read_frames": "potential.data",
    "EnsemblePotential": "potential.model",
    "build_ensemble": "potential.model",
    "EpochMetrics": "potential.train",
    "TrainResult": "potential.train",
    "train_ensemble": "potential.train",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'potential' has no attribute {name!r}")


__all__ = [
    "EnsembleCalculator",
    "EnsemblePotential",
    "EpochMetrics",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "build_ensemble",
    "load_calculator",
    "load_ensemble",
    "read_frames",
    "save_ensemble",
    "train_ensemble",
]
