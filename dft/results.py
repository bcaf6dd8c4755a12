"""What a single point returns: a label, or a failure that says why.

Both are plain dataclasses that pickle (they cross the process boundary of the time
limit) and whose ``info`` dicts are JSON-ready (they go into the store as they are).
:class:`FrameReport` is how every labeller kind builds them for one frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from ase import Atoms

from pipeline.jsonable import jsonable

#: Failure kinds: what a flow may want to count or retry differently.
FAILURE_KINDS = ("unconverged", "timeout", "error", "gpu_error", "out_of_memory", "invalid", "worker_died")


def theory_info(settings: Any) -> dict[str, Any]:
    """What every result and failure of a labeller kind records about its level of theory."""
    return {
        "theory_key": settings.theory_key(),
        "theory": settings.theory_spec(),
        "settings": settings.model_dump(mode="json"),
    }


@dataclass
class DFTResult:
    """A converged single point in ASE units.

    ``energy`` (eV) is the energy whose negative gradient is ``forces`` (eV/Å): with
    smearing that is the free energy ``E - σS``. ``stress`` (eV/Å³, Voigt order xx, yy,
    zz, yz, xz, xy, ASE's sign) is given for periodic cells when the backend provides it.
    """

    energy: float
    forces: np.ndarray
    stress: Optional[np.ndarray]
    theory_key: str
    info: dict[str, Any] = field(default_factory=dict)

    ok = True

    @property
    def magmoms(self) -> Optional[np.ndarray]:
        """Mulliken spin moment of each atom (electrons), when the labeller gives them."""
        moments = self.info.get("magnetic_moments")
        return None if moments is None else np.asarray(moments, dtype=float)

    @property
    def smeared(self) -> bool:
        """Whether ``energy`` is a free energy with fractional occupations."""
        return bool(self.info.get("smearing_used"))

    def state_fields(self) -> dict[str, Any]:
        """The electronic state as the store keeps it (``pipeline.store.add_label``)."""
        return {"magmoms": self.magmoms, "multiplicity": self.info.get("multiplicity"), "smeared": self.smeared}

    def to_atoms(self, atoms: Atoms) -> Atoms:
        """A copy of ``atoms`` carrying this result in a SinglePointCalculator."""
        from ase.calculators.singlepoint import SinglePointCalculator

        labelled = atoms.copy()
        labelled.calc = None
        results: dict[str, Any] = {"energy": self.energy, "forces": np.array(self.forces)}
        if self.stress is not None:
            results["stress"] = np.array(self.stress)
        if self.magmoms is not None:
            results["magmoms"] = self.magmoms
        labelled.calc = SinglePointCalculator(labelled, **results)
        return labelled


@dataclass
class DFTFailure:
    """A frame that could not be labelled, with the reason and every attempt made."""

    reason: str
    kind: str
    theory_key: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    ok = False

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {self.kind!r}")
        self.reason = " ".join(str(self.reason).split())


class FrameReport:
    """What a labeller kind records while it computes one frame, and the result or failure it ends in.

    Each attempt (one SCF rung, one calculator run) goes into ``attempts`` and, as it is
    made, to ``on_attempt``: the runner streams attempts to the parent process, so a
    frame killed at its time limit still says what it tried. ``info`` collects the
    provenance; the result or failure carries it, JSON-ready, with the wall time since
    the report was opened.
    """

    def __init__(self, settings: Any, on_attempt: Optional[Callable[[dict[str, Any]], None]]):
        self.start = time.perf_counter()
        self.theory_key: str = settings.theory_key()
        self.info: dict[str, Any] = theory_info(settings)
        self.attempts: list[dict[str, Any]] = []
        self.on_attempt = on_attempt

    def elapsed(self) -> float:
        """Seconds since the report was opened."""
        return time.perf_counter() - self.start

    def record(self, attempt: dict[str, Any]) -> None:
        self.attempts.append(attempt)
        if self.on_attempt:
            self.on_attempt(jsonable(attempt))

    def fail(self, kind: str, reason: str) -> DFTFailure:
        self.info["wall_time_s"] = self.elapsed()
        return DFTFailure(
            reason=reason,
            kind=kind,
            theory_key=self.theory_key,
            attempts=jsonable(self.attempts),
            info=jsonable(self.info),
        )

    def result(self, energy: float, forces: np.ndarray, stress: Optional[np.ndarray]) -> DFTResult:
        self.info["wall_time_s"] = self.elapsed()
        return DFTResult(
            energy=energy, forces=forces, stress=stress, theory_key=self.theory_key, info=jsonable(self.info)
        )


def finite_label(energy: float, forces: np.ndarray, stress: Optional[np.ndarray]) -> bool:
    """Whether energy, forces and (where given) stress are all finite: a number worth storing."""
    return bool(np.isfinite(energy) and np.all(np.isfinite(forces)) and (stress is None or np.all(np.isfinite(stress))))


def classify_exception(exc: BaseException) -> str:
    """Failure kind of an exception raised inside an SCF or gradient."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if isinstance(exc, MemoryError) or "OutOfMemory" in name:
        return "out_of_memory"
    if module.startswith(("cupy", "cupy_backends", "cuda")) or "CUDA" in name or "CUBLAS" in str(exc)[:200]:
        return "gpu_error"
    return "error"


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line, the message cut at 300 characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
