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

from dft import backend, spin
from dft.results import DFTFailure, DFTResult, FrameReport, classify_exception, describe_exception, finite_label
from dft.settings import DFTSettings
from dft.validate import FramePlan, plan_frame
from pipeline.jsonable import jsonable

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


class _Abandoned(Exception):
    """A candidate state's SCF settled far above the best state found (see dft/spin.py)."""

    def __init__(self, energy: float, cycles: int):
        super().__init__(f"settled at {energy} Ha after {cycles} cycles")
        self.energy = energy
        self.cycles = cycles


class _CycleCounter:
    """SCF callback counting iterations (DIIS cycles or Newton macro iterations).

    With ``abandon_above`` (Hartree) it stops the SCF, by raising :class:`_Abandoned`, once
    the energy has settled above that line (PySCF and GPU4PySCF pass the kernel's locals).
    """

    def __init__(self, abandon_above: Optional[float] = None) -> None:
        self.count = 0
        self.abandon_above = abandon_above

    def __call__(self, envs) -> None:
        self.count += 1
        if self.abandon_above is None or self.count < spin.ABANDON_MIN_CYCLES:
            return
        energy, last = envs.get("e_tot"), envs.get("last_hf_e")
        try:
            energy, last = float(energy), float(last)
        except (TypeError, ValueError):
            return
        if np.isfinite(energy) and abs(energy - last) < spin.SETTLED_HARTREE and energy > self.abandon_above:
            raise _Abandoned(energy, self.count)


def ladder_rungs(settings: DFTSettings) -> list[str]:
    rungs = ["initial"]
    for rung in settings.ladder:
        # PySCF's second-order solver refuses smeared occupations; when everything is
        # smeared anyway, the smearing rung would repeat the first one.
        if settings.always_smear and rung in ("newton", "smearing"):
            continue
        rungs.append(rung)
    return rungs


def _smear(mf, settings: DFTSettings, fix_spin: bool):
    """Fractional occupations. ``fix_spin`` keeps N_alpha - N_beta = 2S (separate Fermi
    levels), so the recorded spin state stays the one computed; without it the moment is
    free (one Fermi level), as in VASP's ISPIN=2."""
    method = "fermi" if settings.smearing_method == "fermi" else "gaussian"
    return mf.smearing(sigma=settings.smearing_sigma_hartree, method=method, fix_spin=fix_spin)


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
        mf = _smear(mf, settings, fix_spin=plan.state.unrestricted)
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


class _Frame(FrameReport):
    """One frame's SCF work: what the ladder, the state search and the gradient share."""

    def __init__(
        self, atoms: Atoms, settings: DFTSettings, plan: FramePlan, name: str, on_attempt: Optional[AttemptCallback]
    ):
        super().__init__(settings, on_attempt)
        self.atoms, self.settings, self.plan, self.name = atoms, settings, plan, name
        self.device, device_note = backend.resolve_device(settings.device)
        self.info.update(
            {
                "device": self.device,
                "natoms": len(atoms),
                "periodic": plan.periodic,
                **{k: v for k, v in plan.state.as_dict().items() if k not in ("policy", "source", "search")},
                "spin_policy": plan.state.policy,
                "spin_source": plan.state.source,
            }
        )
        if device_note:
            self.info["device_note"] = device_note

    def set_up(self) -> None:
        self.info["versions"] = backend.code_versions(self.device)
        if self.device == "gpu":
            self.info["gpu_name"] = backend.gpu_name()
        from pyscf import lib

        self.info["threads"] = lib.num_threads()
        self.cpu_base, self.base, self.system = backend.build_mean_field(
            self.atoms, self.settings, self.plan, self.device
        )
        self.info["n_electrons_explicit"] = int(self.system.nelectron)
        if self.plan.periodic:
            self.info["kpts_mesh"] = list(backend.kpoint_mesh(self.atoms, self.settings))
            self.info["fft_mesh"] = [int(m) for m in self.system.mesh]

    def ladder(self, rungs: list[str]) -> tuple[Any, Optional[DFTFailure]]:
        """Run the rescue ladder on the plan's state: ``(converged mf or None, fatal failure)``."""
        best_energy, best_dm = np.inf, None
        for rung in rungs:
            t0 = time.perf_counter()
            attempt: dict[str, Any] = {"rung": rung}
            converged_mf = None
            try:
                mf, dm0, description = _prepare_rung(
                    rung, self.base, self.cpu_base, self.settings, self.plan, self.device, best_dm
                )
                attempt.update(description)
                counter = _CycleCounter()
                mf.callback = counter
                mf.kernel(dm0=dm0)
                energy, _, _ = _energy_of(mf)
                converged = bool(mf.converged) and bool(np.isfinite(energy))
                attempt.update(
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
                attempt.update(converged=False, cycles=None, energy_ev=None, error=describe_exception(exc))
                log.debug("%s: rung %s raised\n%s", self.name, rung, traceback.format_exc())
                if kind != "error":  # out of memory or a CUDA error: the next rung would repeat it
                    attempt["time_s"] = time.perf_counter() - t0
                    self.record(attempt)
                    return None, self.fail(kind, f"{rung} SCF: {describe_exception(exc)}")
            attempt["time_s"] = time.perf_counter() - t0
            self.record(attempt)
            if converged_mf is not None:
                return converged_mf, None
        return None, None

    def no_convergence(self) -> DFTFailure:
        tried = ", ".join(a["rung"] for a in self.attempts)
        errors = [a["error"] for a in self.attempts if a.get("error")]
        if errors and len(errors) == len(self.attempts):
            return self.fail("error", f"every SCF attempt raised ({tried}); last: {errors[-1]}")
        return self.fail("unconverged", f"SCF did not converge after {len(self.attempts)} attempts ({tried})")


def _compute_frame(
    atoms: Atoms,
    settings: DFTSettings,
    *,
    plan: Optional[FramePlan],
    on_attempt: Optional[AttemptCallback],
    name: str,
) -> DFTResult | DFTFailure:
    if plan is None:
        plan = plan_frame(atoms, settings, name)
    frame = _Frame(atoms, settings, plan, name, on_attempt)
    try:
        frame.set_up()
    except Exception as exc:
        log.debug("%s: setting up the SCF failed\n%s", name, traceback.format_exc())
        return frame.fail(classify_exception(exc), f"setting up the SCF failed: {describe_exception(exc)}")

    rungs = ladder_rungs(settings)
    if not plan.state.search:
        converged_mf, fatal = frame.ladder(rungs)
        if fatal is not None:
            return fatal
        if converged_mf is None:
            return frame.no_convergence()
        frame.info["scf_time_s"] = time.perf_counter() - frame.start
        last = frame.attempts[-1]
        return _finish(frame, converged_mf, state=None, rung=last["rung"], cycles=last.get("cycles"))

    # The lowest-state search. The lowest spin goes through the rescue ladder first, so
    # that the search's answer is never above what the closed-shell (or doublet) policy
    # labels; smearing, a different quantity, is the last resort after every state.
    integer_rungs = [r for r in rungs if r != "smearing"]
    converged_mf, fatal = frame.ladder(integer_rungs)
    if fatal is not None:
        return fatal
    solver = PySCFSolver(frame)
    reference = solver.reference(converged_mf, frame.attempts[-1] if frame.attempts else None)
    try:
        winner, state = search_lowest_state(frame, solver, reference)
    except Exception as exc:  # the search's own failures (e.g. CUDA errors) end the frame
        log.debug("%s: state search raised\n%s", name, traceback.format_exc())
        kind = classify_exception(exc)
        if kind != "error":
            return frame.fail(kind, f"state search: {describe_exception(exc)}")
        winner, state = (reference, None) if reference is not None else (None, None)
    if winner is None and "smearing" in rungs:
        smeared_mf, fatal = frame.ladder(["smearing"])
        if fatal is not None:
            return fatal
        if smeared_mf is not None:
            winner = solver.reference(smeared_mf, frame.attempts[-1])
            state = spin.state_summary(
                winner.candidate,
                solver.safe_moments(winner.mf),
                "no integer-occupation state converged: smeared",
                solver.candidates + [winner.candidate],
                plan.state.policy,
            )
    if winner is None:
        return frame.no_convergence()
    frame.info["scf_time_s"] = time.perf_counter() - frame.start
    return _finish(frame, winner.mf, state=state, rung=winner.rung, cycles=winner.candidate.cycles)


def search_lowest_state(frame: "_Frame", solver: "PySCFSolver", reference: Optional[spin.Solution]):
    """``(winning solution, recorded state)`` of the search behind spin_policy='auto'."""
    gap = backend.orbital_gap(reference.mf) if reference is not None else None
    wanted, decision = spin.needs_search(reference, gap, frame.settings.spin_search_gap)
    if reference is not None:
        solver.candidates.append(reference.candidate)
    if not wanted:
        moments = solver.safe_moments(reference.mf)
        return reference, spin.state_summary(
            reference.candidate, moments, decision, solver.candidates, frame.plan.state.policy
        )
    search = spin.StateSearch(
        frame.atoms,
        solver,
        reference_spin=frame.plan.state.spin,
        max_states=frame.settings.spin_max_states,
        abandon_ev=frame.settings.spin_abandon_ev,
    )
    if reference is not None:
        search.solutions.append(reference)
        search.spins_tried.add(reference.candidate.spin)
    winner = search.search(reference)
    if winner is None:
        return None, None
    moments = solver.safe_moments(winner.mf)
    return winner, spin.state_summary(
        winner.candidate, moments, f"searched: {decision}", solver.candidates, frame.plan.state.policy
    )


class PySCFSolver:
    """:class:`dft.spin.Solver` on PySCF/GPU4PySCF objects of one frame."""

    def __init__(self, frame: "_Frame"):
        self.frame = frame
        self.settings = frame.settings
        self.periodic = frame.plan.periodic
        self.smeared = frame.settings.always_smear
        self.n_electrons = int(frame.system.nelectron)
        self.candidates: list[spin.Candidate] = []
        self._ao_atoms: Optional[np.ndarray] = None
        self._overlap = None

    # -- solutions ----------------------------------------------------------------------
    def reference(self, mf, attempt: Optional[dict]) -> Optional[spin.Solution]:
        if mf is None:
            return None
        restricted = self.is_restricted(mf)
        energy, _, free = _energy_of(mf)
        candidate = spin.Candidate(
            name=f"2S={self.frame.plan.state.spin} {'RKS' if restricted else 'UKS'} (rung {attempt['rung']})"
            if attempt
            else "reference",
            spin=self.frame.plan.state.spin,
            restricted=restricted,
            guess=(attempt or {}).get("init_guess", "minao"),
            converged=True,
            energy_ev=float(energy) * Hartree,
            s2=self.spin_square(mf, restricted),
            cycles=(attempt or {}).get("cycles"),
            time_s=float((attempt or {}).get("time_s") or 0.0),
            smeared=free,
        )
        return spin.Solution(
            mf=mf, energy=float(energy), candidate=candidate, rung=(attempt or {}).get("rung", "initial")
        )

    def run(
        self,
        name: str,
        spin_2s: int,
        restricted: bool,
        dm0=None,
        guess: str = "minao",
        free_spin: bool = False,
        abandon_above: Optional[float] = None,
    ) -> Optional[spin.Solution]:
        t0 = time.perf_counter()
        frame = self.frame
        candidate = spin.Candidate(
            name=name,
            spin=spin_2s,
            restricted=restricted,
            guess=guess,
            converged=False,
            energy_ev=None,
            smeared=self.smeared,
        )
        solution = None
        try:
            _, mf, _ = backend.build_mean_field(
                frame.atoms,
                self.settings,
                frame.plan,
                frame.device,
                spin=spin_2s,
                unrestricted=not restricted,
                share_with=frame.cpu_base if frame.device == "cpu" else None,
            )
            if self.smeared:
                mf = _smear(mf, self.settings, fix_spin=not free_spin and not restricted)
            counter = _CycleCounter(abandon_above)
            mf.callback = counter
            mf.kernel(dm0=dm0)
            energy, _, _ = _energy_of(mf)
            candidate.converged = bool(mf.converged) and bool(np.isfinite(energy))
            candidate.energy_ev = float(energy) * Hartree if np.isfinite(energy) else None
            candidate.cycles = counter.count
            if free_spin:
                candidate.spin = int(round(abs(float(np.sum(self.spin_moments(mf))))))
            candidate.s2 = self.spin_square(mf, restricted) if candidate.converged else None
            solution = spin.Solution(mf=mf, energy=float(energy), candidate=candidate)
        except _Abandoned as stop:
            candidate.abandoned = True
            candidate.energy_ev = stop.energy * Hartree
            candidate.cycles = stop.cycles
            above = (stop.energy - abandon_above) * Hartree + (self.settings.spin_abandon_ev or 0.0)
            candidate.error = f"abandoned after {stop.cycles} cycles: settled {above:.2f} eV above the best state"
        except Exception as exc:
            kind = classify_exception(exc)
            candidate.error = describe_exception(exc)
            log.debug("%s: state %s raised\n%s", frame.name, name, traceback.format_exc())
            if kind != "error":
                raise
        candidate.time_s = time.perf_counter() - t0
        self.candidates.append(candidate)
        frame.record(
            {
                "rung": f"state: {name}",
                "converged": candidate.converged,
                "energy_ev": candidate.energy_ev,
                "cycles": candidate.cycles,
                "time_s": candidate.time_s,
                "error": candidate.error,
            }
        )
        return solution

    # -- analysis -----------------------------------------------------------------------
    def is_restricted(self, mf) -> bool:
        return _is_restricted(mf, self.periodic)

    def spin_square(self, mf, restricted: bool) -> Optional[float]:
        return _spin_square(mf, restricted)

    def stability(self, mf):
        if self.periodic or self.smeared:
            return None
        cpu = mf.to_cpu() if self.frame.device == "gpu" else mf
        if self.is_restricted(mf):
            # RKS → UKS first: it is the instability of broken bonds and radicals, and a
            # restricted solution that also has an internal one is left for the UKS.
            mo_i, mo_e, stable_i, stable_e = cpu.stability(internal=True, external=True, return_status=True)
            if not stable_e:
                return mo_e, "external"
            if not stable_i:
                return mo_i, "internal"
            return None
        mo_i, _, stable_i, _ = cpu.stability(internal=True, external=False, return_status=True)
        return None if stable_i else (mo_i, "internal")

    def density_from_orbitals(self, mf, mo_coeff, kind: str):
        occupations = backend.to_numpy(mf.mo_occ)
        if self.is_restricted(mf) and kind == "external":
            occupations = np.stack([occupations / 2, occupations / 2])
        if occupations.ndim == 1:
            mo = np.asarray(mo_coeff)
            dm = (mo * occupations) @ mo.conj().T
        else:
            dm = np.stack([(np.asarray(c) * o) @ np.asarray(c).conj().T for c, o in zip(mo_coeff, occupations)])
        return self.to_device(dm)

    def dm(self, mf):
        return backend.spin_densities(mf, self.is_restricted(mf))

    def spin_moments(self, mf) -> np.ndarray:
        alpha, beta = self.dm(mf)
        overlap = self.overlap(mf)
        return backend.atom_populations(alpha, overlap, self.frame.system) - backend.atom_populations(
            beta, overlap, self.frame.system
        )

    def safe_moments(self, mf) -> Optional[np.ndarray]:
        try:
            return self.spin_moments(mf)
        except Exception as exc:  # extras must never cost a label
            log.debug("%s: spin moments failed: %s", self.frame.name, exc)
            return None

    def to_device(self, dm):
        if self.frame.device == "gpu":
            import cupy

            return cupy.asarray(dm)
        return dm

    def ao_atoms(self) -> np.ndarray:
        if self._ao_atoms is None:
            self._ao_atoms = backend.ao_atom_indices(self.frame.system)
        return self._ao_atoms

    def overlap(self, mf=None):
        if self._overlap is None:
            self._overlap = backend.overlap_matrix(
                mf if mf is not None else self.frame.base, self.frame.system, self.periodic
            )
        return self._overlap

    def initial_density(self) -> np.ndarray:
        dm = np.asarray(self.frame.cpu_base.get_init_guess(key="minao"))
        # an unrestricted guess comes as (alpha, beta)
        return dm.sum(axis=0) if dm.ndim == (4 if self.periodic else 3) else dm

    def atom_populations(self, dm_total: np.ndarray) -> np.ndarray:
        return backend.atom_populations(np.asarray(dm_total), self.overlap(), self.frame.system)


def _finish(
    frame: "_Frame", converged_mf, *, state: Optional[dict], rung: str, cycles: Optional[int]
) -> DFTResult | DFTFailure:
    """Forces (and stress) of the chosen solution, its analysis, the result.

    ``rung`` and ``cycles`` say how the chosen solution was reached: a rescue-ladder rung,
    or "state search" for a state the search found.
    """
    info, plan, atoms, system = frame.info, frame.plan, frame.atoms, frame.system
    info["converged"] = True
    info["rung"] = rung
    info["scf_cycles"] = cycles
    info["attempts"] = frame.attempts
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
        if not plan.periodic and frame.settings.grid_response:
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
                info["stress_note"] = f"stress not available: {describe_exception(exc)}"
    except Exception as exc:
        log.debug("%s: gradient failed\n%s", frame.name, traceback.format_exc())
        return frame.fail(classify_exception(exc), f"forces failed after a converged SCF: {describe_exception(exc)}")
    info["gradient_time_s"] = time.perf_counter() - t_grad

    forces = -gradient * Hartree / Bohr
    if not finite_label(energy_ha, forces, stress):
        return frame.fail("error", "non-finite energy, forces or stress after a converged SCF")

    restricted = _is_restricted(final, plan.periodic)
    try:
        charges, moments = backend.mulliken_analysis(final, system, plan.periodic, restricted)
        info["mulliken_charges"] = charges.tolist()
        info["magnetic_moments"] = moments.tolist()
        if not plan.periodic:
            info["dipole_eA"] = backend.dipole_moment(final, system).tolist()
        gap = backend.orbital_gap(final)
        info["homo_lumo_gap_ev"] = gap * Hartree if gap is not None else None
    except Exception as exc:  # extras must never cost a label
        info["analysis_note"] = f"population analysis failed: {describe_exception(exc)}"
    if state is None:
        state = _fixed_state(frame, final, restricted, free)
    info["electronic_state"] = state
    # The state a label is in, at the top level where the store and exports look.
    info["spin"] = state["spin"]
    info["multiplicity"] = state["multiplicity"]
    info["unrestricted"] = not state["restricted"]
    info["wall_time_s"] = time.perf_counter() - frame.start
    if frame.device == "gpu":
        _free_gpu_memory()
    return DFTResult(
        energy=float(energy_ha) * Hartree,
        forces=forces,
        stress=stress,
        theory_key=frame.theory_key,
        info=jsonable(info),
    )


def _is_restricted(mf, periodic: bool) -> bool:
    occupations = mf.mo_occ
    occupations = np.asarray(
        [backend.to_numpy(o) for o in occupations] if isinstance(occupations, list) else backend.to_numpy(occupations)
    )
    return occupations.ndim == (2 if periodic else 1)


def _spin_square(mf, restricted: bool) -> Optional[float]:
    """⟨S²⟩ of a solution; None where the object cannot say (k-point UKS, some GPU classes)."""
    if restricted:
        return 0.0
    try:
        return float(mf.spin_square()[0])
    except Exception:
        return None


def _fixed_state(frame: "_Frame", mf, restricted: bool, smeared: bool) -> dict:
    """The recorded state of a frame computed in the one state its policy names."""
    state = frame.plan.state
    s2 = _spin_square(mf, restricted)
    candidate = spin.Candidate(
        name=f"2S={state.spin} {'RKS' if restricted else 'UKS'}",
        spin=state.spin,
        restricted=restricted,
        guess="minao",
        converged=True,
        energy_ev=None,
        s2=s2,
        smeared=smeared,
    )
    moments = np.asarray(frame.info["magnetic_moments"]) if "magnetic_moments" in frame.info else None
    return spin.state_summary(candidate, moments, f"fixed by spin_policy={state.policy!r}", [], state.policy)


def _free_gpu_memory() -> None:
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
