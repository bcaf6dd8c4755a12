"""Melt/quench molecular dynamics driven by the current model.

Each start structure is heated from ``t_start`` to ``t_high``, held, and cooled to
``t_end`` (see :class:`~samplers.dynamics.MeltQuenchConfig`), under NVT Langevin (ASE's
``Langevin``, or the equivalent batched driver) or NPT (ASE's ``LangevinBAOAB`` with a
hydrostatic barostat). Frames every ``frame_interval`` steps; a trajectory stops at the
first frame that is unphysical or whose σ_F reaches ``hi``. With ``bias_depth`` > 0 the
dynamics run on the model plus the uncertainty bias of :mod:`samplers.bias`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError

from pipeline.atoms import check_atoms
from pipeline.errors import ConfigError, InvalidStructure
from samplers.batched_md import run_batched
from samplers.bias import BiasedEvaluator
from samplers.dynamics import (
    MeltQuenchConfig,
    Trajectory,
    TrajectoryRecorder,
    initial_momenta,
    stop_summary,
    trajectory_frames,
    trajectory_rng,
)
from samplers.frames import clean_copy
from samplers.model import as_calculator, as_evaluator

log = logging.getLogger(__name__)

SAMPLER = "melt-quench"


def _current_result(atoms: Atoms) -> dict:
    """Energy, forces and ensemble scores at the current positions (cached where possible)."""
    calc = atoms.calc
    atoms.get_forces()
    result = dict(calc.results)
    if result.get("force_deviation") is None:
        try:
            result["force_deviation"] = calc.get_property("force_deviation", atoms)
        except PropertyNotImplementedError:
            raise ConfigError(
                f"calculator {type(calc).__name__} gives no force_deviation: melt/quench needs an ensemble calculator"
            ) from None
        result.update({k: v for k, v in calc.results.items() if k not in result})
    return result


def _dynamics(atoms: Atoms, config: MeltQuenchConfig, rng: np.random.Generator):
    dt = config.timestep_fs * units.fs
    if config.ensemble == "npt":
        from ase.md.langevinbaoab import LangevinBAOAB

        if not atoms.pbc.all():
            raise ConfigError("npt melt/quench needs periodic structures; use ensemble 'nvt' for clusters")
        with warnings.catch_warnings():
            # the barostat mass heuristic from P_tau is what we want; ASE warns that it used it
            warnings.filterwarnings("ignore", message="Using heuristic P_mass")
            return LangevinBAOAB(
                atoms,
                dt,
                temperature_K=config.temperature(0),
                externalstress=-config.pressure_gpa * units.GPa,
                hydrostatic=True,
                T_tau=units.fs / config.friction_per_fs,
                P_tau=config.barostat_tau_fs * units.fs,
                rng=rng,
            )
    from ase.md.langevin import Langevin

    return Langevin(
        atoms,
        dt,
        temperature_K=config.temperature(0),
        friction=config.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )


def run_trajectory(
    calculator: Any,
    structure: Atoms,
    config: MeltQuenchConfig,
    seed: int,
    index: int = 0,
    *,
    sampler: str = SAMPLER,
    params: dict | None = None,
) -> Trajectory:
    """One melt/quench trajectory with ASE's integrators and an ASE calculator."""
    rng = trajectory_rng(seed, index)
    recorder = TrajectoryRecorder(config, sampler, seed, index, structure, "ase", params)
    atoms = clean_copy(structure)
    atoms.calc = as_calculator(calculator)
    atoms.set_momenta(initial_momenta(atoms.get_masses(), config.t_start, rng))
    try:
        dynamics = _dynamics(atoms, config, rng)
    except InvalidStructure as exc:
        recorder.fail(0, atoms, f"model refused the geometry: {exc}", atoms.get_temperature())
        return recorder.trajectory
    for step in range(config.total_steps + 1):
        if config.is_frame_step(step):
            try:
                result = _current_result(atoms)
            except InvalidStructure as exc:
                recorder.fail(step, atoms, f"model refused the geometry: {exc}", atoms.get_temperature())
                break
            if not recorder.observe(step, atoms, result, atoms.get_temperature()):
                break
        if step == config.total_steps:
            break
        dynamics.set_temperature(temperature_K=config.temperature(step))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # overflow in a blown-up geometry
                dynamics.step()
        except InvalidStructure as exc:
            recorder.fail(step + 1, atoms, f"model refused the geometry: {exc}", atoms.get_temperature())
            break
        if not (np.all(np.isfinite(atoms.positions)) and np.all(np.isfinite(atoms.get_momenta()))):
            recorder.fail(step + 1, atoms, "positions or momenta became NaN or infinite")
            break
        if not np.all(np.isfinite(atoms.cell.array)):
            recorder.fail(step + 1, atoms, "cell became NaN or infinite")
            break
    return recorder.trajectory


def run_melt_quench(
    model: Any, structures: Sequence[Atoms], config: MeltQuenchConfig, seed: int, *, first_index: int = 0
) -> list[Trajectory]:
    """Melt/quench every start structure; trajectory ``first_index + i`` starts from ``structures[i]``.

    ``model`` is an ensemble calculator or batch evaluator (see :mod:`samplers.model`).
    NVT runs go through the batched driver unless ``config.driver == 'ase'``; NPT always
    uses ASE's LangevinBAOAB, one trajectory after another.
    """
    if model is None:
        raise ConfigError("melt/quench needs a model (--model): the ensemble drives the dynamics and scores frames")
    for i, structure in enumerate(structures):
        check_atoms(structure, f"start structure {first_index + i}")
    params = config.model_dump()
    if config.bias_depth > 0:
        model = BiasedEvaluator(as_evaluator(model), config.bias_depth, config.bias_width)
    if config.ensemble == "nvt" and config.driver in ("auto", "batched"):
        trajectories = run_batched(
            model, structures, config, seed, first_index=first_index, sampler=SAMPLER, params=params
        )
    else:
        calculator = as_calculator(model)
        trajectories = [
            run_trajectory(calculator, s, config, seed, first_index + i, params=params)
            for i, s in enumerate(structures)
        ]
    log.info("melt/quench: %d trajectories, stops %s", len(trajectories), stop_summary(trajectories))
    return trajectories


def sample_melt_quench(model: Any, config: MeltQuenchConfig, seed: int, structures: Sequence[Atoms]) -> Iterator[Atoms]:
    """Frames of melt/quench runs from ``structures`` (stop frames too if ``config.include_stop_frames``)."""
    yield from trajectory_frames(run_melt_quench(model, structures, config, seed), config.include_stop_frames)
