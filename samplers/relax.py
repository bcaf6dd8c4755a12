"""Geometry relaxation with the current model, many structures at once (batched FIRE).

Random structures are far from anything a simulation meets: bonds are stretched,
atoms crowd or sit alone. Relaxing them with the model walks them down to the model's
minima, and those minima (and the path to them) are where the model is wrong while it
is young: a minimum of a bad model is a structure the reference finds strained. Labelling
the uncertain frames of the path teaches the model the basin; the next generation's
relaxation ends closer to the reference minimum. This is the random-structure-search
way of active learning (relax with the model, label what it is unsure of), and it is
what lets melt/quench start from thermal basins instead of from random geometries.

The optimiser is FIRE (Bitzek et al., Phys. Rev. Lett. 97, 170201 (2006)) on the atomic
positions only (cells stay as they are: NPT dynamics explores volume). Every active
structure is advanced with one ``evaluate(list[Atoms])`` call per step, as
:class:`~samplers.batched_md.BatchedLangevin` does for MD. The frames, the stop rules
(σ_F ≥ ``hi``, unphysical geometry) and the records are the MD samplers' own
(:class:`~samplers.dynamics.TrajectoryRecorder`); a relaxation also stops when the
largest force falls below ``fmax`` ("converged").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from pydantic import Field

from pipeline.atoms import check_atoms
from samplers.dynamics import (
    StopRules,
    Trajectory,
    TrajectoryRecorder,
    evaluate_or_stop,
    stop_summary,
    trajectory_frames,
)
from samplers.frames import clean_copy, parent_hash
from samplers.model import as_evaluator, evaluate_options

log = logging.getLogger(__name__)

SAMPLER = "relax"


class RelaxConfig(StopRules):
    """FIRE relaxation of the positions with the model's mean forces."""

    fmax: float = Field(0.05, gt=0, description="converged when the largest atomic force is below this (eV/Å)")
    max_steps: int = Field(200, ge=1, le=100_000, description="FIRE steps at most")
    max_step: float = Field(0.2, gt=0, le=2.0, description="largest displacement of one atom in one step (Å)")
    dt_start: float = Field(0.1, gt=0, description="FIRE's initial time step (ASE units, unit masses)")
    dt_max: float = Field(1.0, gt=0, description="FIRE's largest time step")

    @property
    def total_steps(self) -> int:
        return self.max_steps


# FIRE's constants from the paper (N_min, f_inc, f_dec, α_start, f_α).
_N_MIN, _F_INC, _F_DEC, _ALPHA_START, _F_ALPHA = 5, 1.1, 0.5, 0.1, 0.99


class _Relaxation:
    """One structure under FIRE."""

    def __init__(self, atoms: Atoms, recorder: TrajectoryRecorder, dt: float):
        self.atoms = atoms
        self.recorder = recorder
        self.velocity = np.zeros_like(atoms.positions)
        self.dt = dt
        self.alpha = _ALPHA_START
        self.downhill_steps = 0
        self.result: dict | None = None

    def step(self, config: RelaxConfig) -> None:
        forces = self.result["forces"]
        power = float(np.vdot(forces, self.velocity))
        if power > 0:
            force_norm = np.linalg.norm(forces)
            if force_norm > 0:
                self.velocity = (1 - self.alpha) * self.velocity + (
                    self.alpha * np.linalg.norm(self.velocity) / force_norm
                ) * forces
            if self.downhill_steps > _N_MIN:
                self.dt = min(self.dt * _F_INC, config.dt_max)
                self.alpha *= _F_ALPHA
            self.downhill_steps += 1
        else:
            # uphill: stop, take smaller steps, and mix in the force direction again
            self.velocity[:] = 0.0
            self.dt *= _F_DEC
            self.alpha = _ALPHA_START
            self.downhill_steps = 0
        self.velocity += self.dt * forces
        displacement = self.dt * self.velocity
        largest = float(np.linalg.norm(displacement, axis=1).max()) if len(displacement) else 0.0
        if largest > config.max_step:
            displacement *= config.max_step / largest
        self.atoms.positions = self.atoms.positions + displacement


def relax_structures(
    model: Any,
    structures: Sequence[Atoms],
    config: RelaxConfig,
    seed: int = 0,
    *,
    first_index: int = 0,
    sampler: str = SAMPLER,
    params: dict | None = None,
    scores: bool = True,
) -> list[Trajectory]:
    """Relax every structure with ``model`` (a batch evaluator or ensemble calculator).

    Relaxation ``first_index + i`` starts from ``structures[i]``; each returned
    :class:`Trajectory` holds its frames (every ``frame_interval`` steps and the last),
    why it stopped, and its first bad frame. ``scores=False`` skips the ensemble
    deviation (no σ_F stop; for relaxations whose frames are not kept).
    """
    evaluator = as_evaluator(model)
    for i, structure in enumerate(structures):
        check_atoms(structure, f"structure {first_index + i} to relax")
    if not scores:
        config = config.model_copy(update={"hi": None})
    params = params if params is not None else config.model_dump()
    states = [
        _Relaxation(
            clean_copy(s),
            TrajectoryRecorder(config, sampler, seed, first_index + i, s, "batched-fire", params),
            config.dt_start,
        )
        for i, s in enumerate(structures)
    ]
    active = list(states)
    for step in range(config.max_steps + 1):
        frame_step = config.is_frame_step(step)
        active = _evaluate(evaluator, active, step, scores and frame_step)
        largest = {id(s): _largest_force(s.result["forces"]) for s in active}
        if scores and not frame_step:
            # a relaxation that converges between frames ends on a frame: score it
            done = [s for s in active if largest[id(s)] < config.fmax]
            if done:
                rescored = {id(s) for s in _evaluate(evaluator, done, step, True)}
                active = [s for s in active if largest[id(s)] >= config.fmax or id(s) in rescored]
        still = []
        for state in active:
            converged = largest[id(state)] < config.fmax
            if (frame_step or converged) and scores:
                if not state.recorder.observe(step, state.atoms, state.result, None):
                    continue
            if converged:
                state.recorder.converge(step, f"largest force {largest[id(state)]:.4g} eV/Å < fmax {config.fmax}")
                continue
            if step == config.max_steps:
                if not state.recorder.done:
                    state.recorder.complete(step, f"ran all {step} steps without reaching fmax {config.fmax}")
                continue
            state.step(config)
            still.append(state)
        active = still
        if not active:
            break
    if not scores:
        # the caller wants end points: the last geometry of each relaxation that stayed physical
        for state in states:
            broken = (
                state.recorder.trajectory.stop is not None and state.recorder.trajectory.stop.reason == "unphysical"
            )
            if not broken and state.recorder.problem(state.atoms) is None:
                state.recorder.trajectory.frames = [clean_copy(state.atoms)]
    trajectories = [state.recorder.trajectory for state in states]
    log.info("relax: %d structures, stops %s", len(trajectories), stop_summary(trajectories))
    return trajectories


def _largest_force(forces: np.ndarray) -> float:
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


def _evaluate(evaluator: Any, states: list[_Relaxation], step: int, scores: bool) -> list[_Relaxation]:
    """Model forces for ``states`` (one call); returns those that can go on."""
    running = []
    for state in states:
        if np.all(np.isfinite(state.atoms.positions)):
            running.append(state)
        else:
            state.recorder.fail(step, state.atoms, "positions became NaN or infinite")
    options = evaluate_options(evaluator, stress=False, scores=scores)
    return evaluate_or_stop(running, lambda frames: evaluator.evaluate(frames, **options), step)


def relaxed_end_points(model: Any, structures: Sequence[Atoms], config: RelaxConfig) -> list[Atoms]:
    """Where each structure's relaxation ends (the start itself when it turned unphysical).

    For starting MD in the model's basins: no ensemble deviation is computed and no
    frame is kept, so the relaxation costs one mean-force evaluation per step.
    """
    if not structures:
        return []
    trajectories = relax_structures(model, structures, config, scores=False)
    ends = []
    for structure, trajectory in zip(structures, trajectories):
        end = trajectory.frames[-1] if trajectory.frames else clean_copy(structure)
        end.info = dict(structure.info)
        # the relaxed start is never stored: what MD from it names as its parent is the
        # structure the relaxation began with (a stored frame or a random structure)
        end.info["frame_hash"] = parent_hash(structure)
        ends.append(end)
    return ends


def sample_relax(model: Any, config: RelaxConfig, seed: int, structures: Sequence[Atoms]) -> Iterator[Atoms]:
    """Frames of the relaxations of ``structures`` (their stop frames too if configured)."""
    yield from trajectory_frames(relax_structures(model, structures, config, seed), config.include_stop_frames)
