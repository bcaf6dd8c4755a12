"""Any ASE calculator as a labeller: the ``ase`` kind (VASP, CP2K, Quantum ESPRESSO, ORCA, EMT...).

:class:`ASESettings` names a calculator class by import path
(``ase.calculators.vasp:Vasp``) with its keyword arguments, and a user-given ``theory``
name. The level-of-theory key hashes the theory name, the calculator path and the kwargs
that change the number (:func:`key_kwargs`: every kwarg except the execution-only ones
in :data:`NON_THEORY_KWARGS`, or exactly ``kwargs_in_key`` when given).

Each frame gets a fresh calculator. Calculators that write files (see
:func:`takes_directory`; ``uses_workdir``) run with ``directory=`` the frame's own working
directory, which :mod:`dft.runner` names ``<workdir>/<theory key>/<frame hash>``
(a temporary one when none is given): emptied before the run, removed after it unless
``keep_directories`` says otherwise. In-process calculators (EMT) get none.

A calculation the code reports as not converged is a ``DFTFailure(kind="unconverged")``,
never a label. Two rules decide, after the calculation:

1. the attribute rule: a calculator with a ``converged`` attribute that is ``False``
   (ASE's ``Vasp`` sets it from OUTCAR: EDIFF reached or not);
2. :data:`CONVERGENCE_CHECKS`, by class name (the class or any base class): output
   files ASE itself does not check.

An exception from the calculator is a ``DFTFailure(kind="error")`` with the reason. The
time limit is the runner's (the worker process is killed).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
from ase import Atoms
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from dft.results import DFTFailure, DFTResult, FrameReport, classify_exception, describe_exception, finite_label
from dft.settings import Dispersion, spec_key
from pipeline.atoms import check_atoms
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Bump when the meaning of a field in :meth:`ASESettings.theory_spec` changes.
ASE_SPEC_VERSION = 1

#: Keyword arguments (any nesting level, any case) that decide where and how a code runs,
#: what it writes, or how many iterations it may take, but not the converged number:
#: left out of the level-of-theory key by default.
NON_THEORY_KWARGS = frozenset(
    {
        # where and how: paths, commands, restarts, logging
        "directory", "label", "command", "txt", "profile", "restart", "ignore_bad_restart_file",
        "debug", "atoms", "pseudo_dir", "outdir", "prefix", "wfcdir", "scratch", "scratch_dir", "tmpdir",
        # parallelisation and memory
        "ncore", "npar", "kpar", "nsim", "lplane", "lscalu", "nprocs", "ntasks", "nthreads",
        "num_threads", "omp_num_threads", "parallel", "maxcore", "memory", "max_memory",
        # output only
        "lwave", "lcharg", "lvtot", "lvhar", "lelf", "lorbit", "nwrite", "verbosity", "disk_io",
        "print_level", "auto_write", "tprnfor", "tstress",
        # iteration caps: whether a run converges, not what a converged run gives
        "nelm", "max_scf", "electron_maxstep", "maxiter",
    }
)  # fmt: skip

#: Calculators that write files although neither a FileIOCalculator nor a
#: GenericFileIOCalculator, nor naming ``directory`` in their signature.
FILE_WRITING_CALCULATORS = frozenset({"Vasp", "CP2K"})

KeepDirectories = Literal["always", "failures", "never"]


# --- convergence checks ---------------------------------------------------------------------


def _output_mentions(path: Optional[Path], markers: tuple[str, ...]) -> Optional[str]:
    """The first line of ``path`` holding one of ``markers`` (None: none, or no file)."""
    if path is None or not path.is_file():
        return None
    with open(path, errors="replace") as handle:
        for line in handle:
            if any(marker in line for marker in markers):
                return " ".join(line.split())
    return None


def _template_output(calc, directory: Optional[Path]) -> Optional[Path]:
    name = getattr(getattr(calc, "template", None), "outputname", None)
    return Path(directory) / name if directory is not None and name else None


def _vasp_unconverged(calc, directory: Optional[Path]) -> Optional[str]:
    # ASE's Vasp sets .converged from OUTCAR after reading the results (EDIFF reached, and
    # the relaxation criterion when IBRION in 1..3 with NSW > 0).
    if getattr(calc, "converged", None) is False:
        return "VASP: electronic minimisation did not reach EDIFF (OUTCAR)"
    return None


def _espresso_unconverged(calc, directory: Optional[Path]) -> Optional[str]:
    line = _output_mentions(_template_output(calc, directory), ("convergence NOT achieved",))
    return f"Quantum ESPRESSO: {line}" if line else None


def _orca_unconverged(calc, directory: Optional[Path]) -> Optional[str]:
    # ASE's reader turns "Wavefunction not fully converged" into a NaN energy; the SCF
    # message names the cause.
    line = _output_mentions(_template_output(calc, directory), ("SCF NOT CONVERGED", "not fully converged"))
    return f"ORCA: {line}" if line else None


def _cp2k_unconverged(calc, directory: Optional[Path]) -> Optional[str]:
    label = getattr(calc, "label", None)
    path = Path(f"{label}.out") if label else None
    line = _output_mentions(path, ("SCF run NOT converged",))
    return f"CP2K: {line}" if line else None


#: Known convergence reports, by calculator class name (matched along the class's MRO):
#: ``check(calc, directory) -> reason or None``.
#:
#: ================  ==============================================================
#:  Vasp             ``calc.converged`` (ASE reads it from OUTCAR)
#:  Espresso         ``convergence NOT achieved`` in ``espresso.pwo``
#:  ORCA             ``SCF NOT CONVERGED`` / ``not fully converged`` in ``orca.out``
#:  CP2K             ``SCF run NOT converged`` in ``<label>.out``
#: ================  ==============================================================
CONVERGENCE_CHECKS: dict[str, Callable[[Any, Optional[Path]], Optional[str]]] = {
    "Vasp": _vasp_unconverged,
    "Espresso": _espresso_unconverged,
    "ORCA": _orca_unconverged,
    "CP2K": _cp2k_unconverged,
}


def _vasp_setup_problem(calc) -> Optional[str]:
    from ase.config import cfg

    # ASE warns that environment variables should move to its config file; both work.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            calc.make_command(calc.command)
        except Exception as exc:  # ASE's CalculatorSetupError names the variables
            return f"VASP has no command: {describe_exception(exc)}"
        if "VASP_PP_PATH" not in cfg:
            return "VASP needs VASP_PP_PATH: the folder holding potpaw_PBE/ (POTCAR files)"
    return None


#: What a code needs from this machine before its first run, by calculator class name
#: (``check(calc) -> problem or None``, run by :meth:`ASESettings.check` on the calculator it
#: builds). Codes configured through ASE's config file fail already when built.
SETUP_CHECKS: dict[str, Callable[[Any], Optional[str]]] = {"Vasp": _vasp_setup_problem}


def convergence_problem(calc, directory: Optional[Path]) -> Optional[str]:
    """Why the finished calculation of ``calc`` is not converged; None when it is (or is silent)."""
    for klass in type(calc).__mro__:
        check = CONVERGENCE_CHECKS.get(klass.__name__)
        if check is not None:
            reason = check(calc, directory)
            if reason:
                return reason
            break
    flag = getattr(calc, "converged", None)
    if flag is False:  # the attribute rule; a method named converged is not a flag
        return f"{type(calc).__name__} reports converged=False"
    return None


# --- the calculator class -------------------------------------------------------------------


def _normalise_path(value: str) -> str:
    value = str(value).strip()
    if ":" in value:
        module, _, name = value.partition(":")
    else:
        module, _, name = value.rpartition(".")
    module, name = module.strip(), name.strip()
    if not module or not name:
        raise ValueError(f"expected 'module:Class' (e.g. 'ase.calculators.emt:EMT'), got {value!r}")
    return f"{module}:{name}"


@lru_cache(maxsize=32)
def calculator_class(path: str) -> type:
    """The class named by ``module:Class``; :class:`ConfigError` when it cannot be had."""
    from ase.calculators.calculator import BaseCalculator

    module_name, _, class_name = _normalise_path(path).partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises on import
        raise ConfigError(
            f"calculator {path!r}: module {module_name} does not import: {describe_exception(exc)}"
        ) from None
    target: Any = module
    for part in class_name.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"calculator {path!r}: module {module_name} has no {class_name}")
    if not (inspect.isclass(target) and issubclass(target, BaseCalculator)):
        raise ConfigError(f"calculator {path!r}: {class_name} is not an ASE calculator class")
    return target


def takes_directory(cls: type) -> bool:
    """Whether ``cls`` writes files, and so gets ``directory=`` (a directory per frame)."""
    from ase.calculators.calculator import FileIOCalculator
    from ase.calculators.genericfileio import GenericFileIOCalculator

    if issubclass(cls, (FileIOCalculator, GenericFileIOCalculator)):
        return True
    if any(klass.__name__ in FILE_WRITING_CALCULATORS for klass in cls.__mro__):
        return True
    try:
        return "directory" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def unknown_kwargs(cls: type, kwargs: dict[str, Any]) -> list[str]:
    """Kwargs an in-process ASE calculator would silently store and never use.

    ASE's ``Calculator`` keeps any keyword in ``parameters`` (``EMT(asap_cutof=True)``
    runs, without the cutoff). For in-process ``Calculator`` subclasses that declare
    ``default_parameters``, a kwarg that is neither declared nor named by an
    ``__init__`` in the class's MRO is unknown. File-writing calculators pass arbitrary
    keywords on to their codes (VASP's INCAR, Gaussian's route), so they are left to
    reject their own.
    """
    from ase.calculators.calculator import Calculator

    declared = getattr(cls, "default_parameters", None) or {}
    if not issubclass(cls, Calculator) or takes_directory(cls) or not declared:
        return []
    named: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        with contextlib.suppress(TypeError, ValueError):
            named.update(
                p.name
                for p in inspect.signature(init).parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            )
    return [key for key in kwargs if key not in declared and key not in named]


def key_kwargs(kwargs: dict[str, Any], kwargs_in_key: Optional[list[str]] = None) -> dict[str, Any]:
    """The kwargs that enter the level-of-theory key (see :data:`NON_THEORY_KWARGS`)."""
    if kwargs_in_key is not None:
        return {name: kwargs[name] for name in sorted(kwargs_in_key) if name in kwargs}
    return _drop_execution_kwargs(kwargs)


def _drop_execution_kwargs(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _drop_execution_kwargs(item)
            for key, item in value.items()
            if str(key).lower() not in NON_THEORY_KWARGS
        }
    if isinstance(value, list):
        return [_drop_execution_kwargs(item) for item in value]
    return value


# --- settings and plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class ASEPlan:
    """One validated frame: its periodicity and elements."""

    pbc: tuple[bool, bool, bool]
    elements: tuple[str, ...]

    @property
    def periodic(self) -> bool:
        return all(self.pbc)


class ASESettings(BaseModel):
    """Single points with any ASE calculator, named by import path and keyword arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["ase"] = "ase"

    # --- level of theory ------------------------------------------------------------------
    calculator: str = Field(
        ..., description="The calculator class as 'module:Class', e.g. 'ase.calculators.vasp:Vasp'."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        # calculator_kwargs: the name of `selfplay label --calculator-kwargs`.
        validation_alias=AliasChoices("kwargs", "calculator_kwargs"),
        description="Keyword arguments of the calculator (JSON values: INCAR keys, ...).",
    )
    theory: Optional[str] = Field(
        None, description="Required: a name for this level of theory (e.g. 'PBE/PAW/520eV'); part of the key."
    )
    kwargs_in_key: Optional[list[str]] = Field(
        None,
        description="Exactly these top-level kwargs enter the key; None = all but the execution-only ones "
        "(NON_THEORY_KWARGS: paths, commands, parallelisation, output, iteration caps).",
    )
    dispersion: Optional[Dispersion] = Field(
        None, description="D3(BJ) or D4 added to energy, forces and stress (dft/dispersion.py)."
    )
    dispersion_functional: Optional[str] = Field(
        None, description="The functional whose damping parameters the dispersion uses; required with dispersion."
    )
    # --- execution (not part of the level of theory) ----------------------------------------
    time_limit: Optional[float] = Field(3600.0, gt=0, description="Wall-clock seconds per frame; None = no limit.")
    threads: Optional[int] = Field(
        None, ge=1, description="OMP_NUM_THREADS for the calculation (codes it starts inherit it); None = as is."
    )
    keep_directories: KeepDirectories = Field(
        "failures", description="Keep a frame's working directory 'always', only for 'failures', or 'never'."
    )
    min_covalent_ratio: float = Field(
        0.3, ge=0, le=1, description="Refuse frames with two atoms closer than this × the sum of covalent radii."
    )
    fresh_worker: Optional[bool] = Field(
        None,
        description="True: a new worker process per frame; False: one worker labels frame after frame; None: "
        "reuse it for in-process calculators (EMT, a Python potential), a new one for codes that write files.",
    )

    @field_validator("calculator")
    @classmethod
    def _calculator_path(cls, value: str) -> str:
        return _normalise_path(value)

    @field_validator("kwargs")
    @classmethod
    def _json_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            # Round-trip: tuples become lists, so the key sees what the store would.
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must be JSON values (numbers, strings, lists, mappings): {exc}") from None

    @field_validator("theory", "dispersion_functional")
    @classmethod
    def _strip(cls, value: Optional[str]) -> Optional[str]:
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _key_names_exist(self) -> "ASESettings":
        missing = [name for name in self.kwargs_in_key or () if name not in self.kwargs]
        if missing:
            raise ValueError(f"kwargs_in_key names {', '.join(missing)}, which kwargs does not set")
        return self

    # --- the labeller protocol ----------------------------------------------------------------
    @property
    def uses_workdir(self) -> bool:
        """Whether each frame needs a directory of its own: only calculators that write files."""
        try:
            return takes_directory(calculator_class(self.calculator))
        except ConfigError:  # check() reports it; a directory does no harm meanwhile
            return True

    @property
    def reuse_worker(self) -> bool:
        """Whether one worker process may label frame after frame (see :mod:`dft.runner`).

        An in-process calculator pays for a fresh worker (a Python start, ASE and the
        calculator's imports) far more than for its single point; one that runs a code
        in a directory of its own does not notice the start-up, and is kept apart.
        """
        if self.fresh_worker is not None:
            return not self.fresh_worker
        return not self.uses_workdir

    def theory_spec(self) -> dict[str, Any]:
        """The level of theory as a JSON-ready dict: what a label's number depends on."""
        if not self.theory:
            raise ConfigError(_THEORY_MISSING)
        spec: dict[str, Any] = {
            "spec_version": ASE_SPEC_VERSION,
            "method": "ase",
            "theory": self.theory,
            "calculator": self.calculator,
            "kwargs": key_kwargs(self.kwargs, self.kwargs_in_key),
        }
        if self.dispersion:  # only when set, like the other kinds
            from dft.dispersion import dispersion_spec

            spec["dispersion"] = dispersion_spec(self)
        return spec

    def theory_key(self) -> str:
        """Stable short hash of :meth:`theory_spec` (16 hex digits of SHA-256)."""
        return spec_key(self.theory_spec())

    def check(self) -> None:
        """Before any work: a theory name, a calculator that imports and takes its kwargs."""
        if not self.theory:
            raise ConfigError(_THEORY_MISSING)
        cls = calculator_class(self.calculator)
        unknown = unknown_kwargs(cls, self.kwargs)
        if unknown:
            known = ", ".join(sorted(cls.default_parameters)) or "none"
            raise ConfigError(
                f"calculator {self.calculator}: unknown kwargs {', '.join(unknown)} (its parameters: {known})"
            )
        implemented = getattr(cls, "implemented_properties", None)  # a property on GenericFileIO classes
        if isinstance(implemented, (list, tuple, set, frozenset)) and not {"energy", "forces"} <= set(implemented):
            raise ConfigError(f"calculator {self.calculator} does not compute energy and forces")
        with tempfile.TemporaryDirectory(prefix="selfplay-ase-check-") as scratch:
            try:
                calc = self._build(cls, Path(scratch) if takes_directory(cls) else None)
            except Exception as exc:
                raise ConfigError(
                    f"calculator {self.calculator} cannot be built with its kwargs: {describe_exception(exc)}"
                ) from None
            try:
                check = next((SETUP_CHECKS[k.__name__] for k in cls.__mro__ if k.__name__ in SETUP_CHECKS), None)
                problem = check(calc) if check else None
            finally:
                _close(calc)
            if problem:
                raise ConfigError(f"calculator {self.calculator}: {problem}")
        if self.dispersion:
            from dft.dispersion import check_dispersion

            check_dispersion(self)

    def plan(self, atoms: Atoms, name: str = "frame") -> ASEPlan:
        """Validate one frame (:class:`InvalidStructure`); a picklable :class:`ASEPlan`."""
        check_atoms(atoms, name, min_covalent_ratio=self.min_covalent_ratio or None)
        order = {symbol: z for symbol, z in zip(atoms.get_chemical_symbols(), atoms.numbers)}
        return ASEPlan(
            pbc=tuple(bool(p) for p in atoms.pbc),
            elements=tuple(sorted(order, key=order.get)),
        )

    def preload(self, plan: ASEPlan) -> None:
        """Import the calculator's module before the time limit starts."""
        calculator_class(self.calculator)

    def compute(
        self,
        atoms: Atoms,
        plan: Optional[ASEPlan] = None,
        *,
        on_attempt: Optional[Callable[[dict[str, Any]], None]] = None,
        name: str = "frame",
        workdir: Optional[Path] = None,
    ) -> DFTResult | DFTFailure:
        """One single point in this process: a result, or a failure that says why."""
        if plan is None:
            plan = self.plan(atoms, name)
        return compute_ase(atoms, self, plan, on_attempt=on_attempt, name=name, workdir=workdir)

    # --- helpers -------------------------------------------------------------------------------
    def _build(self, cls: type, directory: Optional[Path]):
        kwargs = copy.deepcopy(self.kwargs)  # calculators may keep and edit nested dicts
        if directory is not None:
            kwargs["directory"] = str(directory)
        return cls(**kwargs)


_THEORY_MISSING = (
    "backend 'ase' needs a theory name (theory: ..., --theory NAME), e.g. 'PBE/PAW/520eV': labels are stored under it"
)


# --- the single point ---------------------------------------------------------------------------


def compute_ase(
    atoms: Atoms,
    settings: ASESettings,
    plan: ASEPlan,
    *,
    on_attempt: Optional[Callable[[dict[str, Any]], None]] = None,
    name: str = "frame",
    workdir: Optional[Path] = None,
) -> DFTResult | DFTFailure:
    """Label one frame with the settings' calculator in this process; see the module docstring."""

    report = _ASEFrameReport(atoms, settings, plan, on_attempt)
    try:
        cls, calc = _build_calculator(settings, report, workdir)
    except Exception as exc:
        log.debug("%s: constructing the calculator failed\n%s", name, traceback.format_exc())
        return report.fail(
            classify_exception(exc), f"constructing {settings.calculator} failed: {describe_exception(exc)}"
        )
    calculated = _calculate(atoms, plan, settings, cls, calc, report, name)
    if isinstance(calculated, DFTFailure):
        return calculated
    return _ase_label(calculated, cls, report)


class _ASEFrameReport(FrameReport):
    """A frame's report and its working directory, which the frame's end keeps or removes."""

    def __init__(self, atoms: Atoms, settings: ASESettings, plan: ASEPlan, on_attempt):
        super().__init__(settings, on_attempt)
        self.keep_directories = settings.keep_directories
        self.directory: Optional[Path] = None
        self.info.update(
            {
                "backend": "ase",
                "calculator": settings.calculator,
                "natoms": len(atoms),
                "periodic": plan.periodic,
                "pbc": list(plan.pbc),
            }
        )
        charge = settings.kwargs.get("charge")
        if isinstance(charge, (int, float)) and not isinstance(charge, bool):
            self.info["charge"] = charge  # what the D4 dispersion model takes

    def _finish_directory(self, ok: bool) -> None:
        if self.directory is None:
            return
        if self.keep_directories == "always" or (self.keep_directories == "failures" and not ok):
            self.info["directory"] = str(self.directory)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def fail(self, kind: str, reason: str) -> DFTFailure:
        self._finish_directory(ok=False)
        return super().fail(kind, reason)

    def result(self, energy: float, forces: np.ndarray, stress: Optional[np.ndarray]) -> DFTResult:
        self._finish_directory(ok=True)
        return super().result(energy, forces, stress)


@dataclass
class _Calculated:
    """What the calculator returned for a frame."""

    plain_energy: float  # ASE's "energy": without the smearing entropy term
    forces: np.ndarray
    stress: Optional[np.ndarray]
    results: dict[str, Any]  # the calculator's whole results dict (free energy, moments...)


def _build_calculator(settings: ASESettings, report: _ASEFrameReport, workdir: Optional[Path]):
    """``(class, fresh instance)``; one that writes files gets the frame's emptied directory."""
    cls = calculator_class(settings.calculator)
    report.info["calculator_class"] = f"{cls.__module__}.{cls.__qualname__}"
    report.info["versions"] = code_versions(cls)
    if takes_directory(cls):
        if workdir is None:
            # mkdtemp, not TemporaryDirectory: a kept failure must outlive this call.
            report.directory = Path(tempfile.mkdtemp(prefix="selfplay-ase-"))
        else:
            report.directory = Path(workdir).resolve()
            # What a killed run of this frame left (a half-written VASP WAVECAR that
            # the next run would read) must not reach this one.
            _empty(report.directory)
    return cls, settings._build(cls, report.directory)


def _calculate(
    atoms: Atoms, plan: ASEPlan, settings: ASESettings, cls: type, calc, report: _ASEFrameReport, name: str
) -> _Calculated | DFTFailure:
    """The frame's one attempt, recorded; the calculator is closed after it. A failure
    where the calculator raised or says it did not converge."""

    record: dict[str, Any] = {"rung": "calculate", "calculator": cls.__name__}
    t0 = time.perf_counter()
    want_stress = plan.periodic and "stress" in (getattr(calc, "implemented_properties", None) or ("stress",))
    try:
        calculated = _properties(atoms, plan, cls, calc, want_stress, settings.threads, report.info)
        problem = convergence_problem(calc, report.directory)
        version = getattr(calc, "version", None)
        if isinstance(version, str):
            report.info["versions"]["code"] = version
    except Exception as exc:
        record.update(converged=False, error=describe_exception(exc), time_s=time.perf_counter() - t0)
        report.record(record)
        log.debug("%s: %s raised\n%s", name, cls.__name__, traceback.format_exc())
        _close(calc)
        return report.fail(classify_exception(exc), f"{cls.__name__} raised {describe_exception(exc)}")
    _close(calc)
    record.update(converged=problem is None, error=None, time_s=time.perf_counter() - t0)
    report.record(record)
    report.info["attempts"] = report.attempts
    report.info["calculate_time_s"] = record["time_s"]
    if problem is not None:
        return report.fail("unconverged", f"not converged: {problem}")
    return calculated


def _properties(
    atoms: Atoms, plan: ASEPlan, cls: type, calc, want_stress: bool, threads: Optional[int], info: dict[str, Any]
) -> _Calculated:
    """Energy, forces and (where wanted and given) stress of a copy of ``atoms``; why no stress, in ``info``."""
    from ase.calculators.calculator import PropertyNotImplementedError

    frame = atoms.copy()
    frame.calc = calc
    with _omp_threads(threads):
        plain_energy = calc.get_property("energy", frame)
        forces = np.array(calc.get_property("forces", frame), dtype=float).reshape(len(atoms), 3)
        stress = None
        if want_stress:
            try:
                stress = _voigt(calc.get_property("stress", frame))
            except PropertyNotImplementedError as exc:
                info["stress_note"] = f"stress not available: {describe_exception(exc)}"
        elif plan.periodic:
            info["stress_note"] = f"{cls.__name__} does not compute stress"
    results = dict(getattr(calc, "results", {}) or {})
    return _Calculated(plain_energy=plain_energy, forces=forces, stress=stress, results=results)


def _ase_label(calculated: _Calculated, cls: type, report: _ASEFrameReport) -> DFTResult | DFTFailure:
    """The label of a converged calculation, with the extras the calculator gave."""
    info, results, plain_energy = report.info, calculated.results, calculated.plain_energy
    # The label is the energy the forces are the derivative of: the free energy E - TS
    # where the code smears (VASP's TOTEN), else the energy.
    free_energy = results.get("free_energy")
    energy = float(plain_energy if free_energy is None else free_energy)
    info["energy_is_free_energy"] = free_energy is not None and energy != float(plain_energy)
    if info["energy_is_free_energy"]:
        info["energy_zero_smearing_ev"] = float(plain_energy)
    for extra in ("magmom", "magmoms", "dipole", "charges"):
        if results.get(extra) is not None:
            info[extra] = results[extra]
    if not finite_label(energy, calculated.forces, calculated.stress):
        return report.fail("error", f"{cls.__name__} returned a non-finite energy, forces or stress")
    return report.result(energy, calculated.forces, calculated.stress)


def _empty(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _voigt(stress: Any) -> np.ndarray:
    """ASE's Voigt stress (xx, yy, zz, yz, xz, xy) from a 6-vector or a 3×3 tensor."""
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (3, 3):
        return np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])
    return stress.reshape(6)


def code_versions(cls: type) -> dict[str, Optional[str]]:
    """ase, numpy, and the calculator's top-level package (where it is not ASE)."""
    import ase

    versions: dict[str, Optional[str]] = {"ase": ase.__version__, "numpy": np.__version__}
    top = cls.__module__.split(".")[0]
    if top != "ase":
        module = importlib.import_module(top)
        version = getattr(module, "__version__", None)
        if version is None:
            with contextlib.suppress(Exception):
                from importlib.metadata import version as dist_version

                version = dist_version(top)
        versions[top] = str(version) if version is not None else None
    return versions


@contextlib.contextmanager
def _omp_threads(threads: Optional[int]):
    """OMP_NUM_THREADS for the codes the calculator starts (None: leave as is)."""
    if threads is None:
        yield
        return
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def _close(calc) -> None:
    """End what the calculator started (CP2K's cp2k_shell); never costs a label."""
    close = getattr(calc, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.debug("closing %s failed\n%s", type(calc).__name__, traceback.format_exc())
