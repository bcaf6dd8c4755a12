"""Where new candidate frames come from: exploration driven by the current model.

* :func:`sample_random` — random multi-element cells and clusters (no overlapping atoms);
* :func:`run_melt_quench` / :func:`sample_melt_quench` — heat, hold, cool with the model,
  stopping each trajectory at its first uncertain or unphysical frame; NVT runs go
  through :class:`BatchedLangevin` (one model call per step for all trajectories);
* :func:`relax_structures` / :func:`sample_relax` — FIRE relaxation with the model, many
  structures per model call, stopping at convergence or the first uncertain frame;
* :func:`sample_substitution` — chemically similar or random element substitution in
  prototypes or database frames, optionally relaxed or run through MD.

Every frame carries ``info['provenance']`` (sampler, params, seed, parent, temperature,
step, ...) and, when a model scored it, ``arrays['force_deviation']`` and
``info['sigma_f']``. Same seed, same frames.
"""

from samplers.batched_md import BatchedLangevin, run_batched
from samplers.config import parse_config
from samplers.dynamics import MeltQuenchConfig, StopInfo, Trajectory, trajectory_frames
from samplers.frames import read_frames, write_frames
from samplers.melt_quench import run_melt_quench, run_trajectory, sample_melt_quench
from samplers.model import (
    CalculatorEvaluator,
    EvaluatorCalculator,
    ScoredCalculator,
    as_calculator,
    as_evaluator,
    score_frames,
)
from samplers.random_structures import RandomStructureConfig, random_structure, random_structures, sample_random
from samplers.relax import RelaxConfig, relax_structures, relaxed_end_points, sample_relax
from samplers.substitution import PROTOTYPES, SubstitutionConfig, prototype_structure, sample_substitution

__all__ = [
    "BatchedLangevin",
    "CalculatorEvaluator",
    "EvaluatorCalculator",
    "MeltQuenchConfig",
    "PROTOTYPES",
    "RandomStructureConfig",
    "RelaxConfig",
    "ScoredCalculator",
    "StopInfo",
    "SubstitutionConfig",
    "Trajectory",
    "as_calculator",
    "as_evaluator",
    "parse_config",
    "prototype_structure",
    "random_structure",
    "random_structures",
    "read_frames",
    "relax_structures",
    "relaxed_end_points",
    "run_batched",
    "run_melt_quench",
    "run_trajectory",
    "sample_melt_quench",
    "sample_random",
    "sample_relax",
    "sample_substitution",
    "score_frames",
    "trajectory_frames",
    "write_frames",
]
