"""One frame, in this process: the SCF rescue ladder, then forces (and stress).

:func:`compute_frame` never raises for a frame that was valid on input: every problem
after validation (non-convergence, a linear-algebra error, CUDA out of memory) becomes a
:class:`~dft.results.DFTFailure` that lists what was tried. It has no time limit of its
own; :mod:`dft.runner` runs it in a child process and kills that on time out.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable, Optional

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from dft import backend
from dft.results import DFTFailure, DFTResult
from dft.settings import DFTSettings
from dft.validate import FramePlan, plan_frame

log = logging.getLogger(__name__)

AttemptCallback = Callable[[dict[str, Any]], None]

#: Stabilisers of the damping rung (kept on for the later DIIS rungs): Fock damping for
#: the first cycles, and a virtual-orbital level shift (Hartree) that does not change the
#: converged energy.
DAMPING_FACTOR = 0.5
DAMPING_DIIS_START = 8
LEVEL_SHIFT = 0.25
#: Initial guess of the "guess" rung: superposition of spherically averaged atomic
#: densities, computed on the CPU for both devices.
ALTERNATIVE_GUESS = "atom"


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into plain Python (for the store and JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def classify_exception(exc: BaseException) -> str:
    """Failure kind of an exception raised inside an SCF or gradient."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if isinstance(exc, MemoryError) or "OutOfMemory" in name:
        return "out_of_memory"
    if module.startswith(("cupy", "cupy_backends", "cuda")) or "CUDA" in name or "CUBLAS" in str(exc)[:200]:
        return "gpu_error"
    return "error"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class _CycleCounter:
    """SCF callback counting iterations (DIIS cycles or Newton macro iterations)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, envs) -> None:
        self.count += 1


def ladder_rungs(settings: DFTSettings) -> list[str]:
    rungs = ["initial"]
    for rung in settings.ladder:
        # PySCF's second-order solver refuses smeared occupations; when everything is
        # smeared anyway, the smearing rung would repeat the first one.
        if settings.always_smear and rung in ("newton", "smearing"):
            continue
        rungs.append(rung)
    return rungs


def _smear(mf, settings: DFTSettings, plan: FramePlan):
    method = "fermi" if settings.smearing_method == "fermi" else "gaussian"
    # fix_spin keeps N_alpha - N_beta = 2S (separate Fermi levels), so the recorded spin
    # state stays the one computed.
    return mf.smearing(sigma=settings.smearing_sigma_hartree, method=method, fix_spin=plan.state.unrestricted)


def _prepare_rung(
    rung: str,
    base,
    cpu_base,
    settings: DFTSettings,
    plan: FramePlan,
    device: str,
    best_dm,
):
    """``(mf, dm0, description)`` for one rung; ``base`` is never modified."""
    mf = base.copy()  # shallow: shares grids and density-fitting tensors between rungs
    dm0 = None
    description: dict[str, Any] = {
        "rung": rung,
        "solver": "diis",
        "init_guess": "minao",
        "damp": 0.0,
        "level_shift": 0.0,
        "smearing": None,
    }
    ladder = ladder_rungs(settings)
    stabilised = "damping" in ladder and ladder.index(rung) >= ladder.index("damping") and rung != "newton"
    if stabilised:
        mf.damp = DAMPING_FACTOR
        mf.diis_start_cycle = DAMPING_DIIS_START
        description["damp"] = DAMPING_FACTOR
        if rung != "smearing":
            mf.level_shift = LEVEL_SHIFT
            description["level_shift"] = LEVEL_SHIFT
    if rung == "guess" or (rung == "newton" and best_dm is None):
        dm0 = cpu_base.get_init_guess(key=ALTERNATIVE_GUESS)
        if device == "gpu":
            import cupy

            dm0 = cupy.asarray(dm0)
        description["init_guess"] = ALTERNATIVE_GUESS
    if rung == "newton":
        if best_dm is not None:
            dm0 = best_dm
            description["init_guess"] = "lowest-energy density of the previous rungs"
        mf = mf.newton()
        description["solver"] = "newton"
    if rung == "smearing" or settings.always_smear:
        mf = _smear(mf, settings, plan)
        description["smearing"] = {"method": settings.smearing_method, "sigma_ev": settings.smearing_sigma}
    return mf, dm0, description


def _energy_of(mf) -> tuple[float, Optional[float], bool]:
    """``(energy, entropy, free)``: the free energy ``E - σS`` when smeared, else ``e_tot``."""
    e_tot = float(mf.e_tot)
    sigma = getattr(mf, "sigma", None)
    if sigma:
        entropy = getattr(mf, "entropy", None)
        e_free = getattr(mf, "e_free", None)
        if e_free is None and entropy is not None:
            e_free = e_tot - float(sigma) * float(entropy)
        if e_free is not None:
            return float(e_free), (float(entropy) if entropy is not None else None), True
    return e_tot, None, False


def _unwrap_newton(mf):
    if "SecondOrder" in type(mf).__name__:
        for name in ("undo_soscf", "undo_newton"):
            if hasattr(mf, name):
                return getattr(mf, name)()
    return mf


def compute_frame(
    atoms: Atoms,
    settings: DFTSettings,
    *,
    plan: Optional[FramePlan] = None,
    on_attempt: Optional[AttemptCallback] = None,
    name: str = "frame",
) -> DFTResult | DFTFailure:
    """Label one frame in this process; see the module docstring."""
    if settings.threads is None:
        return _compute_frame(atoms, settings, plan=plan, on_attempt=on_attempt, name=name)
    from pyscf import lib

    previous = lib.num_threads()
    lib.num_threads(settings.threads)
    try:
        return _compute_frame(atoms, settings, plan=plan, on_attempt=on_attempt, name=name)
    finally:
        lib.num_threads(previous)


def _compute_frame(
    atoms: Atoms,
    settings: DFTSettings,
    *,
    plan: Optional[FramePlan],
    on_attempt: Optional[AttemptCallback],
    name: str,
) -> DFTResult | DFTFailure:
    start = time.perf_counter()
    if plan is None:
        plan = plan_frame(atoms, settings, name)
    theory_key = settings.theory_key()
    device, device_note = backend.resolve_device(settings.device)
    info: dict[str, Any] = {
        "theory_key": theory_key,
        "theory": settings.theory_spec(),
        "settings": settings.model_dump(mode="json"),
        "device": device,
        "natoms": len(atoms),
        "periodic": plan.periodic,
        **{f"{k}": v for k, v in plan.state.as_dict().items() if k != "policy" and k != "source"},
        "spin_policy": plan.state.policy,
        "spin_source": plan.state.source,
    }
    if device_note:
        info["device_note"] = device_note
    attempts: list[dict[str, Any]] = []

    def fail(kind: str, reason: str) -> DFTFailure:
        info["wall_time_s"] = time.perf_counter() - start
        return DFTFailure(
            reason=reason, kind=kind, theory_key=theory_key, attempts=jsonable(attempts), info=jsonable(info)
        )

    try:
        info["versions"] = backend.code_versions(device)
        if device == "gpu":
            info["gpu_name"] = backend.gpu_name()
        from pyscf import lib

        info["threads"] = lib.num_threads()
        cpu_base, base, system = backend.build_mean_field(atoms, settings, plan, device)
        info["n_electrons_explicit"] = int(system.nelectron)
        if plan.periodic:
            info["kpts_mesh"] = list(backend.kpoint_mesh(atoms, settings))
            info["fft_mesh"] = [int(m) for m in system.mesh]
    except Exception as exc:
        log.debug("%s: setting up the SCF failed\n%s", name, traceback.format_exc())
        return fail(classify_exception(exc), f"setting up the SCF failed: {_describe(exc)}")

    converged_mf = None
    best_energy, best_dm = np.inf, None
    for rung in ladder_rungs(settings):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"rung": rung}
        try:
            mf, dm0, description = _prepare_rung(rung, base, cpu_base, settings, plan, device, best_dm)
            record.update(description)
            counter = _CycleCounter()
            mf.callback = counter
            mf.kernel(dm0=dm0)
            energy, _, _ = _energy_of(mf)
            converged = bool(mf.converged) and bool(np.isfinite(energy))
            record.update(
                converged=converged,
                cycles=counter.count or getattr(mf, "cycles", None),
                energy_ev=float(energy) * Hartree if np.isfinite(energy) else None,
                error=None,
            )
            if converged:
                converged_mf = mf
            elif np.isfinite(energy) and energy < best_energy and rung != "smearing":
                best_energy, best_dm = energy, mf.make_rdm1()
        except Exception as exc:
            kind = classify_exception(exc)
            record.update(converged=False, cycles=None, energy_ev=None, error=_describe(exc))
            log.debug("%s: rung %s raised\n%s", name, rung, traceback.format_exc())
            if kind != "error":  # out of memory or a CUDA error: the next rung would repeat it
                record["time_s"] = time.perf_counter() - t0
                attempts.append(record)
                if on_attempt:
                    on_attempt(jsonable(record))
                return fail(kind, f"{rung} SCF: {_describe(exc)}")
        record["time_s"] = time.perf_counter() - t0
        attempts.append(record)
        if on_attempt:
            on_attempt(jsonable(record))
        if converged_mf is not None:
            break
    info["scf_time_s"] = time.perf_counter() - start
    if converged_mf is None:
        tried = ", ".join(a["rung"] for a in attempts)
        errors = [a["error"] for a in attempts if a.get("error")]
        if errors and len(errors) == len(attempts):
            return fail("error", f"every SCF attempt raised ({tried}); last: {errors[-1]}")
        return fail("unconverged", f"SCF did not converge after {len(attempts)} attempts ({tried})")

    info["converged"] = True
    info["rung"] = attempts[-1]["rung"]
    info["scf_cycles"] = attempts[-1]["cycles"]
    info["attempts"] = attempts
    energy_ha, entropy, free = _energy_of(converged_mf)
    info["smearing_used"] = free
    info["e_tot_ev"] = float(converged_mf.e_tot) * Hartree
    if free:
        info["entropy"] = entropy
        info["energy_is_free_energy"] = True

    t_grad = time.perf_counter()
    try:
        final = _unwrap_newton(converged_mf)
        gradient_method = final.nuc_grad_method()
        if not plan.periodic and settings.grid_response:
            gradient_method.grid_response = True
        gradient = backend.to_numpy(gradient_method.kernel()).reshape(len(atoms), 3)
        stress = None
        if plan.periodic:
            try:
                sigma = backend.to_numpy(gradient_method.get_stress()).reshape(3, 3)
                sigma = 0.5 * (sigma + sigma.T) * Hartree / Bohr**3
                stress = np.array(
                    [sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]], dtype=float
                )
            except (NotImplementedError, AssertionError, AttributeError) as exc:
                info["stress_note"] = f"stress not available: {_describe(exc)}"
    except Exception as exc:
        log.debug("%s: gradient failed\n%s", name, traceback.format_exc())
        return fail(classify_exception(exc), f"forces failed after a converged SCF: {_describe(exc)}")
    info["gradient_time_s"] = time.perf_counter() - t_grad

    forces = -gradient * Hartree / Bohr
    if not (np.all(np.isfinite(forces)) and np.isfinite(energy_ha) and (stress is None or np.all(np.isfinite(stress)))):
        return fail("error", "non-finite energy, forces or stress after a converged SCF")

    try:
        info["mulliken_charges"] = backend.mulliken_charges(final, system, plan.periodic).tolist()
        if not plan.periodic:
            info["dipole_eA"] = backend.dipole_moment(final, system).tolist()
        gap = backend.orbital_gap(final)
        info["homo_lumo_gap_ev"] = gap * Hartree if gap is not None else None
    except Exception as exc:  # extras must never cost a label
        info["analysis_note"] = f"population analysis failed: {_describe(exc)}"
    info["wall_time_s"] = time.perf_counter() - start
    if device == "gpu":
        _free_gpu_memory()
    return DFTResult(
        energy=float(energy_ha) * Hartree, forces=forces, stress=stress, theory_key=theory_key, info=jsonable(info)
    )


def _free_gpu_memory() -> None:
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
