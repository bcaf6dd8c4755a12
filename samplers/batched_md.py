"""Many Langevin trajectories at once, one batched model call per MD step.

Exploration runs thousands of short trajectories; evaluating them one by one wastes the
model's batching (one neighbour list build and one forward/backward pass for the whole
batch). :class:`BatchedLangevin` advances N independent structures with one
``evaluate(list[Atoms])`` call per step, dropping trajectories from the batch as they
stop.

The integrator is ASE's :class:`ase.md.langevin.Langevin` (Vanden-Eijnden & Ciccotti,
Chem. Phys. Lett. 429, 310 (2006), Eq. 23) with ``fixcm=False``, written out in numpy
with the same coefficients, the same order of random draws (ξ then η per step, from a
per-trajectory generator) and the same initial Maxwell-Boltzmann momenta as the ASE
driver in :mod:`samplers.melt_quench`, so both drivers give the same trajectory for the
same seed (to floating-point roundoff of the model).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units

from samplers.dynamics import (
    MeltQuenchConfig,
    Trajectory,
    TrajectoryRecorder,
    evaluate_or_stop,
    initial_momenta,
    kinetic_temperature,
    trajectory_rng,
)
from samplers.frames import clean_copy
from samplers.model import as_evaluator, evaluate_options

log = logging.getLogger(__name__)


def langevin_coefficients(dt: float, friction: float, temperature_k: float, masses: np.ndarray) -> tuple:
    """(c1, c2, c3, c4, c5) of ASE's Langevin propagator; c3-c5 per atom, shape (n, 1)."""
    sigma = np.sqrt(2 * units.kB * temperature_k * friction / masses)
    c1 = dt / 2.0 - dt * dt * friction / 8.0
    c2 = dt * friction / 2 - dt * dt * friction * friction / 8.0
    c3 = np.sqrt(dt) * sigma / 2.0 - dt**1.5 * friction * sigma / 8.0
    c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
    c4 = friction / 2.0 * c5
    return c1, c2, c3, c4, c5


class _State:
    """One trajectory in the batch."""

    def __init__(self, atoms: Atoms, rng: np.random.Generator, recorder: TrajectoryRecorder, temperature_k: float):
        self.atoms = atoms
        self.rng = rng
        self.recorder = recorder
        self.masses = atoms.get_masses()[:, None]  # (n, 1)
        self.momenta = initial_momenta(self.masses[:, 0], temperature_k, rng)
        self.result: dict | None = None
        self.rnd_pos = self.rnd_vel = None

    @property
    def kinetic_temperature(self) -> float:
        return kinetic_temperature(self.momenta, self.masses[:, 0])


class BatchedLangevin:
    """Advance many structures through the melt/quench schedule together (NVT).

    ``model`` is a batch evaluator (``evaluate(list[Atoms]) -> list[dict]``) or an ASE
    calculator (then evaluated structure by structure). Trajectory ``first_index + i``
    draws its random numbers from ``trajectory_rng(seed, first_index + i)``.
    ``evaluate_kwargs`` go to every ``evaluate`` call (e.g. ``max_edges`` of
    ``EnsemblePotential.evaluate``, which splits a big batch into several model calls).
    """

    def __init__(
        self,
        model: Any,
        structures: Sequence[Atoms],
        config: MeltQuenchConfig,
        seed: int,
        *,
        first_index: int = 0,
        sampler: str = "melt-quench",
        params: dict | None = None,
        evaluate_kwargs: dict | None = None,
    ):
        self.evaluator = as_evaluator(model)
        #: passed to every evaluate() call, e.g. {"max_edges": ...} to bound the model's memory
        self.evaluate_kwargs = dict(evaluate_kwargs or {})
        self.config = config
        self.seed = seed
        params = params if params is not None else config.model_dump()
        self.states = []
        for offset, structure in enumerate(structures):
            index = first_index + offset
            rng = trajectory_rng(seed, index)
            recorder = TrajectoryRecorder(config, sampler, seed, index, structure, "batched", params)
            self.states.append(_State(clean_copy(structure), rng, recorder, config.t_start))
        self.model_calls = 0
        self.frames_scored = 0

    def _evaluate(self, states: list[_State], step: int) -> list[_State]:
        """Forces (and scores) for ``states``; returns those still running."""
        running = []
        for state in states:
            if not (np.all(np.isfinite(state.atoms.positions)) and np.all(np.isfinite(state.momenta))):
                state.recorder.fail(step, state.atoms, "positions or momenta became NaN or infinite")
            else:
                running.append(state)
        if not running:
            return running
        scores = self.config.is_frame_step(step)
        return evaluate_or_stop(
            running, lambda frames: self._call(frames, scores), step, lambda state: state.kinetic_temperature
        )

    def _call(self, frames: list[Atoms], scores: bool) -> list[dict]:
        self.model_calls += 1
        self.frames_scored += len(frames)
        # NVT: the virial would be wasted work; between frames the deviation too
        kwargs = dict(self.evaluate_kwargs, **evaluate_options(self.evaluator, stress=False, scores=scores))
        return self.evaluator.evaluate(frames, **kwargs)

    def run(self) -> list[Trajectory]:
        cfg = self.config
        dt = cfg.timestep_fs * units.fs
        friction = cfg.friction_per_fs / units.fs
        active = self._evaluate(list(self.states), 0)
        for step in range(cfg.total_steps + 1):
            if cfg.is_frame_step(step):
                active = [s for s in active if s.recorder.observe(step, s.atoms, s.result, s.kinetic_temperature)]
            if step == cfg.total_steps or not active:
                break
            temperature = cfg.temperature(step)
            for state in active:
                c1, c2, c3, c4, c5 = langevin_coefficients(dt, friction, temperature, state.masses)
                n = len(state.atoms)
                v = state.momenta / state.masses
                xi = state.rng.standard_normal(size=(n, 3))
                eta = state.rng.standard_normal(size=(n, 3))
                state.rnd_pos = c5 * eta
                state.rnd_vel = c3 * xi - c4 * eta
                v += c1 * state.result["forces"] / state.masses - c2 * v + state.rnd_vel
                x = state.atoms.positions.copy()
                state.atoms.positions = x + dt * v + state.rnd_pos
                # as ASE does after the position update (where RATTLE would act)
                state.velocity = (state.atoms.positions - x - state.rnd_pos) / dt
                state.coefficients = (c1, c2)
            active = self._evaluate(active, step + 1)
            for state in active:
                c1, c2 = state.coefficients
                v = state.velocity
                v += c1 * state.result["forces"] / state.masses - c2 * v + state.rnd_vel
                state.momenta = v * state.masses
        return [state.recorder.trajectory for state in self.states]


def run_batched(
    model: Any, structures: Sequence[Atoms], config: MeltQuenchConfig, seed: int, *, first_index: int = 0, **kwargs
) -> list[Trajectory]:
    """Run all ``structures`` through the schedule with :class:`BatchedLangevin`."""
    return BatchedLangevin(model, structures, config, seed, first_index=first_index, **kwargs).run()
