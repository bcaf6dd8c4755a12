"""GFN-xTB single points through tblite: the ``xtb`` labeller kind.

GFN2-xTB, GFN1-xTB and IPEA1-xTB (tblite's three parametrisations, H..Rn) for molecules
and periodic cells, a thousand times cheaper than a DFT single point: the level of theory
to run the loop for dozens of generations on a laptop, or to pre-screen structures. The
SCF goes through a small rescue ladder (stronger mixing damping with more iterations, an
EEQ charge guess, a higher electronic temperature), every attempt recorded, exactly like
the PySCF kind; a frame that never converges is a ``DFTFailure(kind="unconverged")``.

Importing this module does not import tblite (``pip install -e '.[xtb]'``); the work
happens in :func:`compute_xtb`, normally inside a worker process of :mod:`dft.runner`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import Bohr, Hartree, kB
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dft.results import FrameReport, classify_exception, describe_exception, finite_label
from dft.settings import Dispersion, spec_key
from pipeline.errors import ConfigError, InvalidStructure

log = logging.getLogger(__name__)

#: Bump when the meaning of a field in :meth:`XTBSettings.theory_spec` changes.
XTB_SPEC_VERSION = 1

#: tblite's methods, by the names its Calculator takes.
METHODS = ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB")
#: Heaviest element the GFN parametrisations cover (Rn).
XTB_MAX_Z = 86

XTBRung = Literal["damping", "guess", "temperature"]
DEFAULT_XTB_LADDER: tuple[XTBRung, ...] = ("damping", "guess", "temperature")

#: The damping rung divides the Broyden mixing parameter by this (0.4 -> 0.2) and, since
#: damped mixing needs more cycles, multiplies the iteration limit by ITERATION_FACTOR
#: (an xTB cycle costs milliseconds). Both stay on for the later rungs.
DAMPING_DIVISOR = 2.0
ITERATION_FACTOR = 4
#: Broyden history of the rescue rungs. tblite keeps max_iter steps by default; over a
#: thousand iterations of an SCF far from converging that history both misleads the
#: mixer and costs more per cycle than the rest of the SCF (an NH3 cluster that did not
#: converge in 1000 cycles took 53 s; with 50 steps kept it converged in 0.02 s).
RESCUE_MIXER_MEMORY = 50
#: tblite's initial guesses, by its integer codes.
GUESS_CODES = {"sad": 0, "eeq": 1}

AttemptCallback = Callable[[dict[str, Any]], None]


def _method_name(value: str) -> str:
    """tblite's spelling of an xTB method given in any case, with or without "-xTB"."""
    key = str(value).strip().lower().removesuffix("-xtb")
    for method in METHODS:
        if method.lower().removesuffix("-xtb") == key:
            return method
    raise ValueError(f"unknown xTB method {value!r}; choose one of {', '.join(METHODS)}")


class XTBSettings(BaseModel):
    """Extended tight-binding single points with tblite (CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["xtb"] = "xtb"
    uses_workdir: ClassVar[bool] = False
    #: A worker process labels frame after frame: its start-up costs far more than an xTB
    #: single point, and tblite keeps no state between frames (a fresh Calculator each).
    reuse_worker: ClassVar[bool] = True

    # --- level of theory ------------------------------------------------------------------
    method: str = Field("GFN2-xTB", description="GFN2-xTB, GFN1-xTB or IPEA1-xTB (any case).")
    accuracy: float = Field(
        1.0, gt=0, le=1000, description="tblite's accuracy: scales SCF and integral thresholds (smaller = tighter)."
    )
    electronic_temperature: float = Field(
        300.0, gt=0, le=50000, description="Fermi smearing temperature in K (xtb's default 300 K)."
    )
    charge: int = Field(0, description="Net charge unless spin_policy='from_info' and atoms.info has 'charge'.")
    spin_policy: Literal["lowest", "from_info"] = Field(
        "lowest",
        description="'lowest': 0 or 1 unpaired electron by parity; 'from_info': atoms.info['charge'] and "
        "atoms.info['spin'] (= 2S = unpaired electrons), falling back to 'lowest'.",
    )
    rescue_temperature: float = Field(
        1000.0, gt=0, le=50000, description="Electronic temperature (K) of the last rescue rung, 'temperature'."
    )
    dispersion: Optional[Dispersion] = Field(None, description="Must stay None: GFN methods include dispersion.")
    # --- SCF convergence and the rescue ladder (not part of the level of theory) ------------
    max_iter: int = Field(250, ge=1, le=5000, description="SCF iterations of the first attempt.")
    mixer_damping: float = Field(0.4, gt=0, le=1, description="Broyden mixing parameter of the first attempt.")
    ladder: tuple[XTBRung, ...] = Field(
        DEFAULT_XTB_LADDER, description="Rescue rungs tried in order after the first SCF fails to converge."
    )
    # --- execution ------------------------------------------------------------------------
    time_limit: Optional[float] = Field(600.0, gt=0, description="Wall-clock seconds per frame; None = no limit.")
    threads: Optional[int] = Field(None, ge=1, description="OpenMP threads per frame; None = cores/workers in a batch.")
    min_covalent_ratio: float = Field(
        0.3, ge=0, le=1, description="Refuse frames with two atoms closer than this × the sum of covalent radii."
    )

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, value: Any) -> str:
        return _method_name(value)

    @field_validator("dispersion")
    @classmethod
    def _no_double_dispersion(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            raise ValueError(
                "GFN-xTB methods include their own dispersion (GFN2-xTB: D4, GFN1/IPEA1-xTB: D3); "
                "adding another would count it twice"
            )
        return value

    @model_validator(mode="after")
    def _ladder_unique(self) -> "XTBSettings":
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError(f"ladder has repeated rungs: {list(self.ladder)}")
        return self

    # --- the labeller protocol (dft/labeller.py) --------------------------------------------
    def theory_spec(self) -> dict[str, Any]:
        """What an xTB label's number depends on (JSON-ready)."""
        return {
            "spec_version": XTB_SPEC_VERSION,
            "code": "tblite",
            "method": self.method,
            "accuracy": self.accuracy,
            "electronic_temperature_k": self.electronic_temperature,
            "electronic_state": {"charge": self.charge, "spin_policy": self.spin_policy},
            "solvation": None,
            # The temperature rung changes the number (free energy at a higher temperature)
            # for the frames that need it, like the smearing rung of the PySCF kind.
            "rescue_temperature_k": self.rescue_temperature if "temperature" in self.ladder else None,
        }

    def theory_key(self) -> str:
        """Stable short hash of :meth:`theory_spec` (16 hex digits of SHA-256)."""
        return spec_key(self.theory_spec())

    def check(self) -> None:
        """Raise :class:`ConfigError` if tblite is not installed."""
        try:
            import tblite.interface  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"backend 'xtb' needs the tblite package (pip install -e '.[xtb]'): {exc}") from None

    def plan(self, atoms: Atoms, name: str = "frame") -> "XTBPlan":
        return plan_xtb_frame(atoms, self, name)

    def preload(self, plan: "XTBPlan") -> None:
        import tblite.interface  # noqa: F401

    def compute(
        self,
        atoms: Atoms,
        plan: "XTBPlan",
        *,
        on_attempt: Optional[AttemptCallback] = None,
        name: str = "frame",
        workdir=None,
    ):
        return compute_xtb(atoms, self, plan=plan, on_attempt=on_attempt, name=name)


@dataclass(frozen=True)
class XTBPlan:
    """What the xTB calculation of one frame will be."""

    periodic: bool
    charge: int
    uhf: int  # unpaired electrons, tblite's name for 2S
    spin_policy: str
    spin_source: str
    elements: tuple[str, ...]


def plan_xtb_frame(atoms: Atoms, settings: XTBSettings, name: str = "frame") -> XTBPlan:
    """Validate ``atoms`` for tblite and decide periodicity, charge and unpaired electrons.

    Raises :class:`InvalidStructure` for bad frames, elements beyond Rn, partial
    periodicity and impossible charge/spin.
    """
    from dft.validate import electronic_state, is_periodic
    from pipeline.atoms import check_atoms

    check_atoms(atoms, name, min_covalent_ratio=settings.min_covalent_ratio or None)
    periodic = is_periodic(atoms, name)
    # check_atoms stops at the project's heaviest element; this guards tblite's own range
    # should that limit ever be raised.
    beyond = sorted({int(z) for z in atoms.numbers if z > XTB_MAX_Z})
    if beyond:
        raise InvalidStructure(f"{name}: {settings.method} has no parameters for Z={beyond[0]} (tblite covers H..Rn)")
    elements = tuple(sorted(set(atoms.get_chemical_symbols()), key=lambda s: atomic_numbers[s]))
    # The same charge/spin rules as the PySCF kind; the parity of the all-electron count
    # is the parity of tblite's valence count (cores hold paired electrons).
    state = electronic_state(atoms, settings, name)
    return XTBPlan(
        periodic=periodic,
        charge=state.charge,
        uhf=state.spin,
        spin_policy=state.policy,
        spin_source=state.source,
        elements=elements,
    )


def ladder_rungs(settings: XTBSettings) -> list[str]:
    return ["initial", *settings.ladder]


def rung_parameters(rung: str, settings: XTBSettings) -> dict[str, Any]:
    """SCF parameters of one rung; the stabilisers of earlier rungs stay on (cumulative)."""
    rungs = ladder_rungs(settings)
    reached = rungs[: rungs.index(rung) + 1]
    damped = "damping" in reached
    return {
        "rung": rung,
        "electronic_temperature_k": (
            max(settings.rescue_temperature, settings.electronic_temperature)
            if rung == "temperature"
            else settings.electronic_temperature
        ),
        "mixer_damping": settings.mixer_damping / DAMPING_DIVISOR if damped else settings.mixer_damping,
        "max_iter": settings.max_iter * ITERATION_FACTOR if damped else settings.max_iter,
        # 0: tblite's default, a history as long as max_iter.
        "mixer_memory": RESCUE_MIXER_MEMORY if damped else 0,
        "guess": "eeq" if "guess" in reached else "sad",
    }


@contextlib.contextmanager
def _openmp_threads(threads: Optional[int]):
    """Run tblite with ``threads`` OpenMP threads in this process (None: leave as is)."""
    if threads is None:
        yield
        return
    try:
        libgomp = ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime tblite's wheel links
    except OSError:  # another runtime: OMP_NUM_THREADS of the worker process still applies
        yield
        return
    previous = libgomp.omp_get_max_threads()
    libgomp.omp_set_num_threads(threads)
    try:
        yield
    finally:
        libgomp.omp_set_num_threads(previous)


def _versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    import ase
    from tblite import library

    versions: dict[str, Optional[str]] = {"tblite_api": ".".join(str(p) for p in library.get_version())}
    for package in ("tblite", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["ase"] = ase.__version__
    return versions


def compute_xtb(
    atoms: Atoms,
    settings: XTBSettings,
    *,
    plan: Optional[XTBPlan] = None,
    on_attempt: Optional[AttemptCallback] = None,
    name: str = "frame",
) -> Any:
    """Label one frame in this process: a ``DFTResult`` or a ``DFTFailure``, never an exception."""
    with _openmp_threads(settings.threads):
        return _compute_xtb(atoms, settings, plan=plan, on_attempt=on_attempt, name=name)


def _compute_xtb(
    atoms: Atoms,
    settings: XTBSettings,
    *,
    plan: Optional[XTBPlan],
    on_attempt: Optional[AttemptCallback],
    name: str,
):

    report = FrameReport(settings, on_attempt)  # opened first: the wall time includes the planning
    if plan is None:
        plan = plan_xtb_frame(atoms, settings, name)
    report.info.update(
        {
            "code": "tblite",
            "method": settings.method,
            "accuracy": settings.accuracy,
            "device": "cpu",
            "natoms": len(atoms),
            "periodic": plan.periodic,
            "charge": plan.charge,
            "uhf": plan.uhf,
            "spin": plan.uhf,
            "multiplicity": plan.uhf + 1,
            "spin_policy": plan.spin_policy,
            "spin_source": plan.spin_source,
        }
    )
    try:
        calculator = _xtb_calculator(atoms, settings, plan, report.info)
    except Exception as exc:
        log.debug("%s: setting up the xTB calculator failed\n%s", name, traceback.format_exc())
        return report.fail(classify_exception(exc), f"setting up the xTB calculator failed: {describe_exception(exc)}")

    converged = _scf_ladder(calculator, settings, report, name)
    report.info["scf_time_s"] = report.elapsed()
    if converged is None:
        return _no_convergence(report)
    return _xtb_label(atoms, plan, report, *converged)


def _xtb_calculator(atoms: Atoms, settings: XTBSettings, plan: XTBPlan, info: dict[str, Any]):
    """tblite's Calculator for the frame; records the versions and threads in ``info``."""
    from tblite.interface import Calculator

    info["versions"] = _versions()
    calculator = Calculator(
        settings.method,
        np.asarray(atoms.numbers),
        np.asarray(atoms.positions) / Bohr,
        float(plan.charge),
        int(plan.uhf),
        atoms.cell.array / Bohr if plan.periodic else None,
        np.array([True, True, True]) if plan.periodic else None,
        color=False,
        logger=log.debug,  # tblite's own printout, off at verbosity 0 anyway
    )
    calculator.set("verbosity", 0)
    calculator.set("accuracy", settings.accuracy)
    with contextlib.suppress(Exception):
        info["threads"] = ctypes.CDLL("libgomp.so.1").omp_get_max_threads()
    return calculator


def _scf_ladder(calculator, settings: XTBSettings, report: FrameReport, name: str):
    """The rungs in order until one converges: ``(tblite's result, the rung's parameters)`` or None."""
    for rung in ladder_rungs(settings):
        parameters = rung_parameters(rung, settings)
        record, result = _scf_attempt(calculator, parameters, name)
        report.record(record)
        if result is not None:
            return result, parameters
    return None


def _scf_attempt(calculator, parameters: dict[str, Any], name: str) -> tuple[dict[str, Any], Any]:
    """One SCF with one rung's parameters: ``(its record, tblite's result or None if not converged)``."""

    record: dict[str, Any] = dict(parameters)
    converged = None
    t0 = time.perf_counter()
    try:
        calculator.set("temperature", parameters["electronic_temperature_k"] * kB / Hartree)
        calculator.set("mixer-damping", parameters["mixer_damping"])
        calculator.set("max-iter", parameters["max_iter"])
        calculator.set("mixer-memory", parameters["mixer_memory"])
        calculator.set("guess", GUESS_CODES[parameters["guess"]])
        result = calculator.singlepoint()
        energy = float(result.get("energy"))
        ok = bool(np.isfinite(energy))
        record.update(converged=ok, energy_ev=energy * Hartree if ok else None, error=None)
        if ok:
            converged = result
    except Exception as exc:  # tblite raises TBLiteRuntimeError("SCF not converged in N cycles")
        record.update(converged=False, energy_ev=None, error=describe_exception(exc))
        log.debug("%s: xTB rung %s: %s", name, parameters["rung"], describe_exception(exc))
    record["time_s"] = time.perf_counter() - t0
    return record, converged


def _no_convergence(report: FrameReport):
    """The failure after the last rung: "error" when every attempt raised something other
    than tblite's non-convergence (a broken input, not a hard SCF), else "unconverged"."""
    tried = ", ".join(a["rung"] for a in report.attempts)
    errors = [a["error"] for a in report.attempts if a.get("error")]
    if errors and not any("not converged" in e for e in errors):
        return report.fail("error", f"every xTB SCF attempt raised ({tried}); last: {errors[-1]}")
    return report.fail("unconverged", f"xTB SCF did not converge after {len(report.attempts)} attempts ({tried})")


def _xtb_label(atoms: Atoms, plan: XTBPlan, report: FrameReport, result, parameters: dict[str, Any]):
    """Energy, forces and stress in ASE units from a converged SCF, with charges and dipole."""

    info = report.info
    try:
        energy = float(result.get("energy")) * Hartree
        forces = -np.asarray(result.get("gradient"), dtype=float).reshape(len(atoms), 3) * Hartree / Bohr
        stress = None
        if plan.periodic:
            # tblite's "virial" is dE/dε (Hartree): (1/V) of it is ASE's stress.
            sigma = np.asarray(result.get("virial"), dtype=float).reshape(3, 3) * Hartree / atoms.get_volume()
            sigma = 0.5 * (sigma + sigma.T)
            stress = np.array([sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]])
    except Exception as exc:
        return report.fail(classify_exception(exc), f"reading the xTB result failed: {describe_exception(exc)}")
    if not finite_label(energy, forces, stress):
        return report.fail("error", "non-finite energy, forces or stress after a converged xTB SCF")

    info.update(
        converged=True,
        rung=parameters["rung"],
        electronic_temperature_k=parameters["electronic_temperature_k"],
        # The energy is tblite's Mermin free energy at that temperature: the quantity
        # whose negative gradient the forces are.
        energy_is_free_energy=True,
        attempts=report.attempts,
    )
    try:
        info["charges"] = np.asarray(result.get("charges"), dtype=float).tolist()
        if not plan.periodic:
            info["dipole_eA"] = (np.asarray(result.get("dipole"), dtype=float) * Bohr).tolist()
    except Exception as exc:  # extras must never cost a label
        info["analysis_note"] = f"charges/dipole not available: {describe_exception(exc)}"
    return report.result(energy, forces, stress)
