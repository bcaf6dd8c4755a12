"""What the MD and relaxation samplers share: the melt/quench schedule, stop rules and trajectory records.

A trajectory is sampled every ``frame_interval`` steps (and at its last step). At each
sampled step the geometry is checked first (NaN, a pair closer than
``min_covalent_ratio`` x the sum of covalent radii, a cell that grew or shrank past
``max_volume_ratio``), then the ensemble's σ_F against the upper trust level ``hi``.
The first frame failing either stops the trajectory: the frames before it are kept,
the offending frame is kept aside as ``stop_frame``, and :class:`StopInfo` says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
from ase import Atoms, units
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ConfigError, InvalidStructure
from pipeline.selection import geometry_problem
from samplers.frames import make_frame, parent_hash, provenance

log = logging.getLogger(__name__)

STOP_REASONS = ("completed", "converged", "uncertain", "unphysical")


class StopRules(BaseModel):
    """What every sampled run (MD or relaxation) shares: how often it keeps a frame and
    when it stops. Subclasses say how many steps there are (``total_steps``)."""

    model_config = ConfigDict(extra="forbid")

    frame_interval: int = Field(10, ge=1, description="a frame every this many steps (and the last one)")
    hi: float | None = Field(
        0.5, gt=0, description="stop at the first frame with σ_F >= hi (eV/Å), normally selection's hi; None: never"
    )
    min_covalent_ratio: float = Field(0.5, ge=0, lt=2, description="unphysical below this x sum of covalent radii")
    include_stop_frames: bool = Field(
        True, description="also yield each run's first bad frame (tagged info['stop']) so selection counts it"
    )

    @property
    def total_steps(self) -> int:
        raise NotImplementedError

    def volume_limit(self) -> float | None:
        """Unphysical when the cell volume changes by this factor; None: no volume rule (fixed cell)."""
        return None

    def is_frame_step(self, step: int) -> bool:
        return step % self.frame_interval == 0 or step == self.total_steps

    def temperature(self, step: int) -> float | None:
        """Target temperature (K) at ``step``; None where there is none (a relaxation)."""
        return None

    def time_fs(self, step: int) -> float | None:
        """Simulated time (fs) at ``step``; None where there is none (a relaxation)."""
        return None


class MeltQuenchConfig(StopRules):
    """Heat from ``t_start`` to ``t_high``, hold, cool to ``t_end`` (linear ramps, K)."""

    t_start: float = Field(300.0, ge=0, le=20_000, description="initial velocities and start of the heating ramp (K)")
    t_high: float = Field(3000.0, ge=0, le=20_000, description="melt temperature (K)")
    t_end: float = Field(300.0, ge=0, le=20_000, description="end of the cooling ramp (K)")
    heat_steps: int = Field(200, ge=0)
    hold_steps: int = Field(200, ge=0)
    cool_steps: int = Field(400, ge=0)
    timestep_fs: float = Field(1.0, gt=0, le=10)
    friction_per_fs: float = Field(0.02, gt=0, le=10, description="Langevin friction (1/fs); 0.02 = 50 fs relaxation")
    ensemble: Literal["nvt", "npt"] = Field("nvt", description="npt: ASE LangevinBAOAB with a hydrostatic barostat")
    pressure_gpa: float = Field(0.0, ge=-50, le=1000, description="npt target pressure (GPa)")
    barostat_tau_fs: float = Field(500.0, gt=0, description="npt cell relaxation time (fs)")
    max_volume_ratio: float = Field(3.0, gt=1, description="unphysical when the cell volume changes by this factor")
    driver: Literal["auto", "batched", "ase"] = Field(
        "auto",
        description="batched: all trajectories through one model call per step (nvt only); auto picks it for nvt",
    )
    bias_depth: float = Field(
        0.0,
        ge=0,
        le=10,
        description="uncertainty bias depth A (eV/atom, samplers.bias): MD drawn towards where the ensemble's "
        "energies disagree; 0: plain MD on the model",
    )
    bias_width: float = Field(
        0.1,
        gt=0,
        le=10,
        description="uncertainty bias width B (eV/atom of the members' energy deviation): the bias pulls "
        "hardest where the deviation per atom is about B; match it to the ensemble's typical spread",
    )

    @model_validator(mode="after")
    def _check(self) -> "MeltQuenchConfig":
        if self.total_steps == 0:
            raise ValueError("heat_steps + hold_steps + cool_steps is zero: nothing to run")
        if self.driver == "batched" and self.ensemble == "npt":
            raise ValueError("the batched driver runs nvt only; use driver 'ase' (or 'auto') for npt")
        return self

    @property
    def total_steps(self) -> int:
        return self.heat_steps + self.hold_steps + self.cool_steps

    def temperature(self, step: int) -> float:
        """Target temperature (K) at ``step`` of the schedule."""
        if step <= self.heat_steps:
            if self.heat_steps == 0:
                return self.t_high
            return self.t_start + (self.t_high - self.t_start) * step / self.heat_steps
        step -= self.heat_steps
        if step <= self.hold_steps:
            return self.t_high
        step -= self.hold_steps
        if self.cool_steps == 0:
            return self.t_high
        return self.t_high + (self.t_end - self.t_high) * min(step, self.cool_steps) / self.cool_steps

    def time_fs(self, step: int) -> float:
        return step * self.timestep_fs

    def volume_limit(self) -> float:
        return self.max_volume_ratio


def trajectory_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of trajectory ``index``: independent of how trajectories are batched."""
    return np.random.default_rng([int(seed), int(index), 0x6D64])


def initial_momenta(masses: np.ndarray, temperature_k: float, rng: np.random.Generator) -> np.ndarray:
    """Maxwell-Boltzmann momenta at ``temperature_k`` with the centre-of-mass momentum removed."""
    masses = np.asarray(masses, dtype=np.float64)
    xi = rng.standard_normal((len(masses), 3))
    momenta = xi * np.sqrt(masses * units.kB * temperature_k)[:, None]
    return momenta - masses[:, None] * (momenta.sum(0) / masses.sum())


def kinetic_temperature(momenta: np.ndarray, masses: np.ndarray) -> float:
    """2 E_kin / (3 N k_B), as ``Atoms.get_temperature`` computes it without constraints."""
    kinetic = 0.5 * float((momenta**2 / np.asarray(masses)[:, None]).sum())
    return 2.0 * kinetic / (3.0 * len(masses) * units.kB)


@dataclass
class StopInfo:
    reason: str  # completed / uncertain / unphysical
    step: int
    detail: str
    sigma_f: float | None = None


@dataclass
class Trajectory:
    """One MD run or relaxation: kept frames, why it stopped, and the first bad frame if any."""

    index: int
    parent: str
    frames: list[Atoms] = field(default_factory=list)
    stop: StopInfo | None = None
    stop_frame: Atoms | None = None

    def report(self) -> dict[str, Any]:
        stop = self.stop
        return {
            "index": self.index,
            "parent": self.parent,
            "frames": len(self.frames),
            "stop": None
            if stop is None
            else {"reason": stop.reason, "step": stop.step, "detail": stop.detail, "sigma_f": stop.sigma_f},
        }


class TrajectoryRecorder:
    """Applies the stop rules to sampled steps and builds the frames of one trajectory."""

    def __init__(
        self,
        config: StopRules,
        sampler: str,
        seed: int,
        index: int,
        start: Atoms,
        driver: str,
        params: dict[str, Any] | None = None,
    ):
        self.config = config
        self.sampler = sampler
        self.seed = seed
        self.driver = driver
        self.params = params if params is not None else config.model_dump()
        self.initial_volume = abs(float(np.linalg.det(start.cell.array))) if start.pbc.all() else None
        self.trajectory = Trajectory(index=index, parent=parent_hash(start))

    @property
    def done(self) -> bool:
        return self.trajectory.stop is not None

    def _frame(self, atoms: Atoms, step: int, result: dict | None, kinetic: float | None) -> Atoms:
        record = provenance(
            self.sampler,
            self.params,
            self.seed,
            parent=self.trajectory.parent,
            temperature=self.config.temperature(step),
            step=step,
            trajectory=self.trajectory.index,
            time_fs=self.config.time_fs(step),
            driver=self.driver,
        )
        frame = make_frame(atoms, record, result, kinetic_temperature=kinetic)
        if frame.pbc.all():
            frame.wrap()
        return frame

    def _stop(self, reason: str, step: int, detail: str, frame: Atoms | None, sigma: float | None = None) -> None:
        self.trajectory.stop = StopInfo(reason, step, detail, sigma)
        if frame is not None and reason != "completed":
            frame.info["stop"] = {"reason": reason, "step": step, "detail": detail}
            self.trajectory.stop_frame = frame
        log.debug("trajectory %d stopped at step %d: %s (%s)", self.trajectory.index, step, reason, detail)

    def problem(self, atoms: Atoms) -> str | None:
        """Why the geometry is unphysical, or None."""
        problem = geometry_problem(atoms, self.config.min_covalent_ratio, max_volume_per_atom=None)
        limit = self.config.volume_limit()
        if problem is None and self.initial_volume and limit is not None:
            volume = abs(float(np.linalg.det(atoms.cell.array)))
            ratio = volume / self.initial_volume
            if not (1.0 / limit <= ratio <= limit):
                problem = f"cell volume changed by a factor {ratio:.2f} (limit {limit})"
        return problem

    def observe(self, step: int, atoms: Atoms, result: dict | None, kinetic: float | None) -> bool:
        """Record the sampled ``step``; False when the trajectory stops here."""
        problem = self.problem(atoms)
        if problem is not None:
            self._stop("unphysical", step, problem, self._frame(atoms, step, result, kinetic))
            return False
        if result is None or result.get("force_deviation") is None:
            raise ConfigError(f"the model gave no force_deviation: {self.sampler} needs an ensemble calculator")
        forces = result.get("forces")
        if forces is not None and not np.all(np.isfinite(forces)):
            self._stop("unphysical", step, "model forces are NaN or infinite", self._frame(atoms, step, None, kinetic))
            return False
        frame = self._frame(atoms, step, result, kinetic)
        sigma = float(frame.info["sigma_f"])
        if not np.isfinite(sigma):
            self._stop("unphysical", step, "force deviation is NaN", frame)
            return False
        if self.config.hi is not None and sigma >= self.config.hi:
            self._stop("uncertain", step, f"σ_F {sigma:.4g} eV/Å >= hi {self.config.hi}", frame, sigma)
            return False
        self.trajectory.frames.append(frame)
        if step >= self.config.total_steps:
            self._stop("completed", step, f"ran all {self.config.total_steps} steps", None, sigma)
        return True

    def converge(self, step: int, detail: str) -> None:
        """A relaxation reached its force threshold at ``step`` (already observed and kept)."""
        self._stop("converged", step, detail, None)

    def complete(self, step: int, detail: str) -> None:
        """The run used all its steps (for runs whose last step was not observed)."""
        self._stop("completed", step, detail, None)

    def fail(self, step: int, atoms: Atoms, detail: str, kinetic: float | None = None) -> None:
        """Stop as unphysical between sampled steps (NaN positions, model refused the geometry)."""
        self._stop("unphysical", step, detail, self._frame(atoms, step, None, kinetic))


def evaluate_or_stop(
    states: Sequence[Any],
    call: Callable[[list[Atoms]], list[dict]],
    step: int,
    kinetic: Optional[Callable[[Any], Any]] = None,
) -> list[Any]:
    """The model's results for the ``states`` (objects with ``atoms``, ``recorder`` and
    ``result``) from one ``call(list[Atoms])``; those that can go on, each with its result.

    The model refuses geometries it cannot represent (atoms on top of each other): the
    offenders are then found one by one and stopped as unphysical, with every state whose
    forces are not finite, and the rest go on. ``kinetic(state)`` gives the temperature a
    stop frame records (MD); None records none (relaxation).
    """
    if not states:
        return []
    try:
        results: list[Optional[dict]] = list(call([s.atoms for s in states]))
    except InvalidStructure:
        results = []
        for state in states:
            try:
                results.extend(call([state.atoms]))
            except InvalidStructure as exc:
                temperature = kinetic(state) if kinetic else None
                state.recorder.fail(step, state.atoms, f"model refused the geometry: {exc}", temperature)
                results.append(None)
    kept = []
    for state, result in zip(states, results):
        if result is None:
            continue
        if not np.all(np.isfinite(result["forces"])):
            temperature = kinetic(state) if kinetic else None
            state.recorder.fail(step, state.atoms, "model forces are NaN or infinite", temperature)
            continue
        state.result = result
        kept.append(state)
    return kept


def stop_summary(trajectories: list[Trajectory]) -> dict[str, int]:
    """How many trajectories stopped for each reason."""
    summary = dict.fromkeys(STOP_REASONS, 0)
    for trajectory in trajectories:
        if trajectory.stop is not None:
            summary[trajectory.stop.reason] += 1
    return summary


def trajectory_frames(trajectories: Sequence[Trajectory], include_stop_frames: bool = True) -> Iterator[Atoms]:
    """Kept frames of each trajectory, followed by its stop frame when asked."""
    for trajectory in trajectories:
        yield from trajectory.frames
        if include_stop_frames and trajectory.stop_frame is not None:
            yield trajectory.stop_frame


def reports_json(trajectories: list[Trajectory]) -> str:
    return json.dumps([t.report() for t in trajectories], indent=1)
