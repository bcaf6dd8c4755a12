"""The lowest electronic state of a frame: what ``spin_policy='auto'`` searches.

Self-play explores at high temperature, so the frames sent to DFT are full of broken
bonds, radicals, separated fragments and bare metal clusters. A closed-shell singlet is
the wrong state for most of them, by eV. The search below follows what the large
datasets do with VASP (``ISPIN=2`` from initial moments) and what quantum chemists do by
hand, in an order that keeps the cheap case cheap:

1. **Reference**: the lowest spin the electron count allows (2S = 0 restricted, or 2S = 1
   unrestricted), through the SCF rescue ladder of :mod:`dft.compute`.
2. **Cheap path**: a converged reference with integer occupations and a HOMO-LUMO gap of
   at least ``settings.spin_search_gap`` eV is accepted as it is. A triplet instability
   needs an exchange stabilisation larger than the gap, which for compact orbitals in
   semi-local DFT stays well below 3 eV; a closed-shell molecule near equilibrium (H2O:
   7 eV) therefore pays for one SCF.
3. **Stability** (molecules): internal, and RKS → UKS external for a restricted
   reference; an instability is followed to the lower solution (rotated orbitals as the
   guess of a new SCF), once more if that one is unstable again.
4. **Higher multiplicities**: 2S + 2 and 2S + 4, then upwards while the energy falls, up
   to the summed free-atom moments (parity-corrected); the ferromagnetic ceiling itself
   is tried too, with a descent from it when it is the lowest. At most
   ``settings.spin_max_states`` multiplicities per frame.
5. **Broken symmetry**: the lowest spin again, from a guess with antiparallel atomic
   moments (whole fragments against each other when the frame has several, else a
   balanced partition of the moments), built from the best high-spin density.

A candidate whose SCF energy has settled (changes by less than :data:`SETTLED_HARTREE`
per cycle, after :data:`ABANDON_MIN_CYCLES`) more than ``settings.spin_abandon_ev`` above
the best state found so far is abandoned: converging it would only confirm that it loses,
and the open-shell random clusters of self-play spend most of their search on such states.

The lowest converged energy wins (ties within :data:`TIE_HARTREE` go to the less spin-
contaminated, then lower, spin). Smeared frames (``always_smear``) follow VASP: the
non-magnetic solution, then free-spin unrestricted solutions from ferromagnetic and
antiparallel initial moments. Periodic cells have no stability analysis (PySCF offers it
for molecules); steps 4 and 5 cover their magnetic states.

Everything tried is recorded (:class:`Candidate`), and the winner's state is summarised
by :func:`state_summary`: multiplicity, ⟨S²⟩ and its contamination, Mulliken spin moments.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional, Protocol

import numpy as np
from ase import Atoms
from ase.data import ground_state_magnetic_moments
from ase.units import Hartree

from pipeline.atoms import bonded

log = logging.getLogger(__name__)

#: Energies closer than this (Hartree, 0.03 meV) are the same state found twice, e.g. a
#: UKS solution that collapsed onto the restricted one.
TIE_HARTREE = 1e-6
#: An atom carries a moment when its Mulliken spin population exceeds this (electrons).
MAGNETIC_ATOM = 0.5
#: Two atoms belong to the same fragment when closer than this × their covalent radii sum.
BOND_FACTOR = 1.25
#: ⟨S²⟩ − S(S+1) above which a solution counts as broken-symmetry (a singlet of two
#: antiparallel doublets has 1).
BROKEN_SYMMETRY_CONTAMINATION = 0.5
#: A stability eigenvector whose follow-up SCF does not lower the energy by more than this
#: (Hartree) is taken as converging back to the same solution.
FOLLOW_GAIN = 1e-7
#: A candidate's SCF energy counts as settled when one cycle changes it by less than this
#: (Hartree, 2.7 meV): from there a converging SCF lowers it by little more than the
#: last steps did, far less than the abandon margin.
SETTLED_HARTREE = 1e-4
#: Cycles an SCF runs before it may be abandoned (the first cycles of DIIS jump around).
ABANDON_MIN_CYCLES = 5


@dataclass
class Candidate:
    """One electronic state the search tried."""

    name: str
    spin: int  # 2S
    restricted: bool
    guess: str
    converged: bool
    energy_ev: Optional[float]
    s2: Optional[float] = None
    cycles: Optional[int] = None
    time_s: float = 0.0
    smeared: bool = False
    error: Optional[str] = None
    #: stopped early, settled far above the best state (``energy_ev`` is its last energy)
    abandoned: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Solution:
    """A finished SCF of one candidate: the object, its energy and how it was reached."""

    mf: Any
    energy: float  # Hartree (free energy when smeared)
    candidate: Candidate
    rung: str = "state search"  # the rescue-ladder rung that converged it, for the reference


class Solver(Protocol):
    """What the search needs from :mod:`dft.compute`: one SCF, its analysis, its density.

    ``run`` returns a :class:`Solution` whose candidate says whether it converged, or
    ``None`` when the SCF raised (the solver records that candidate itself).
    """

    n_electrons: int
    periodic: bool
    smeared: bool
    #: Every state tried, converged or not, in order (what the label records).
    candidates: list[Candidate]

    def run(
        self,
        name: str,
        spin: int,
        restricted: bool,
        dm0=None,
        guess: str = "minao",
        free_spin: bool = False,
        abandon_above: Optional[float] = None,
    ) -> Optional[Solution]:
        """One SCF; with ``abandon_above`` (Hartree) it stops once its energy settles above that."""

    def stability(self, mf) -> Optional[tuple[Any, str]]:
        """Orbitals of a lower solution and the kind of instability, or None when stable."""

    def density_from_orbitals(self, mf, mo_coeff, kind: str) -> Any: ...

    def dm(self, mf) -> tuple[np.ndarray, np.ndarray]:
        """The ``(alpha, beta)`` densities as numpy arrays."""

    def spin_moments(self, mf) -> np.ndarray:
        """Mulliken spin population of each atom (electrons)."""

    def to_device(self, dm) -> Any: ...

    def ao_atoms(self) -> np.ndarray: ...

    def atom_populations(self, dm_total: np.ndarray) -> np.ndarray:
        """Mulliken electron population of each atom for a spin-summed density."""

    def initial_density(self) -> np.ndarray:
        """The spin-summed initial guess of the frame (superposition of atoms), as numpy."""


# --- what the frame allows ---------------------------------------------------------------------


def free_atom_moments(numbers) -> np.ndarray:
    """Unpaired electrons of each free atom in its ground state (ASE's table)."""
    return np.array([float(ground_state_magnetic_moments[z]) for z in numbers])


def spin_ceiling(numbers, reference_spin: int, n_electrons: int) -> int:
    """Highest 2S the search goes to: the summed free-atom moments with the parity of the
    electron count, at least 2S + 4, never more than the electrons allow."""
    summed = int(round(free_atom_moments(numbers).sum()))
    if summed % 2 != reference_spin % 2:
        summed += 1
    return min(max(summed, reference_spin + 4), n_electrons)


def fragments(atoms: Atoms) -> np.ndarray:
    """Connected components of the bond graph (closer than BOND_FACTOR × radii sum)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    if n < 2:
        return np.zeros(n, dtype=int)
    i, j = np.nonzero(bonded(atoms, BOND_FACTOR))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def antiparallel_signs(atoms: Atoms, moments: np.ndarray) -> Optional[np.ndarray]:
    """±1 per atom that flips about half of the total moment; None if nothing to flip.

    With several magnetic fragments whole fragments are flipped (two O atoms far apart:
    one up, one down); within one fragment the atoms are split into two groups of equal
    summed moment (largest first, each to the lighter group), which for a bipartite
    cluster is the alternating arrangement.
    """
    magnitude = np.abs(moments)
    if int(np.sum(magnitude >= MAGNETIC_ATOM)) < 2:
        return None
    labels = fragments(atoms)
    units: list[np.ndarray] = []
    magnetic_fragments = [f for f in np.unique(labels) if magnitude[labels == f].sum() >= MAGNETIC_ATOM]
    if len(magnetic_fragments) >= 2:
        units = [np.flatnonzero(labels == f) for f in np.unique(labels)]
    else:
        units = [np.array([i]) for i in range(len(atoms))]
    weights = np.array([magnitude[u].sum() for u in units])
    signs = np.ones(len(atoms))
    up = down = 0.0
    for k in np.argsort(-weights, kind="stable"):
        if up <= down:
            up += weights[k]
        else:
            down += weights[k]
            signs[units[k]] = -1.0
    return signs


def moment_guess(dm_total: np.ndarray, ao_atom: np.ndarray, populations: np.ndarray, moments: np.ndarray):
    """``(dm_alpha, dm_beta)`` from a spin-summed density with the given atomic moments.

    Like VASP's MAGMOM: each atom's block of the density is split (1 ± m/N)/2 between the
    spins, where N is the atom's Mulliken population; blocks between atoms are split
    evenly. ``dm_total`` is (nao, nao), or (nk, nao, nao) at k-points.
    """
    dm_total = np.asarray(dm_total)
    fraction = np.zeros(len(ao_atom))
    for atom, (moment, population) in enumerate(zip(moments, populations)):
        if population > 1e-8:
            fraction[ao_atom == atom] = np.clip(moment / population, -1.0, 1.0)
    same_atom = ao_atom[:, None] == ao_atom[None, :]
    scale_alpha = np.where(same_atom, 0.5 * (1 + fraction)[:, None], 0.5)
    scale_beta = np.where(same_atom, 0.5 * (1 - fraction)[:, None], 0.5)
    return dm_total * scale_alpha, dm_total * scale_beta


# --- the search ---------------------------------------------------------------------------------


def needs_search(reference: Optional[Solution], gap_hartree: Optional[float], threshold_ev: float) -> tuple[bool, str]:
    """Whether the reference alone is the answer, and why (recorded on the label)."""
    if reference is None or not reference.candidate.converged:
        return True, "the lowest-spin SCF did not converge"
    if reference.candidate.smeared:
        return True, "fractional occupations (smeared)"
    if gap_hartree is None:
        return True, "no HOMO-LUMO gap"
    gap_ev = gap_hartree * Hartree
    if gap_ev >= threshold_ev:
        return False, f"HOMO-LUMO gap {gap_ev:.2f} eV >= {threshold_ev:g} eV: closed-shell fast path"
    return True, f"HOMO-LUMO gap {gap_ev:.2f} eV < {threshold_ev:g} eV"


class StateSearch:
    """Runs steps 3-5 of the module docstring around a finished reference."""

    def __init__(
        self,
        atoms: Atoms,
        solver: Solver,
        *,
        reference_spin: int,
        max_states: int,
        abandon_ev: Optional[float] = None,
    ):
        self.atoms = atoms
        self.solver = solver
        self.reference_spin = reference_spin
        self.max_states = max_states
        self.abandon_ev = abandon_ev
        self.solutions: list[Solution] = []  # the converged ones
        self.spins_tried: set[int] = set()

    # bookkeeping -------------------------------------------------------------------------
    def add(self, solution: Optional[Solution]) -> Optional[Solution]:
        if solution is not None and solution.candidate.converged:
            self.solutions.append(solution)
            return solution
        return None

    def best(self, spin: Optional[int] = None) -> Optional[Solution]:
        return lowest([s for s in self.solutions if spin is None or s.candidate.spin == spin])

    def energy(self, spin: int) -> float:
        best = self.best(spin)
        return best.energy if best is not None else np.inf

    def run(self, name: str, spin: int, restricted: bool, **kwargs) -> Optional[Solution]:
        self.spins_tried.add(spin)
        best = self.best()
        if self.abandon_ev is not None and best is not None:
            kwargs.setdefault("abandon_above", best.energy + self.abandon_ev / Hartree)
        return self.add(self.solver.run(name, spin, restricted, **kwargs))

    # the steps ---------------------------------------------------------------------------
    def search(self, reference: Optional[Solution]) -> Solution | None:
        solver = self.solver
        if solver.smeared:
            self.magnetic_smeared(reference)
            return self.best()
        if reference is not None and not solver.periodic:
            self.follow_instabilities(reference)
        self.higher_multiplicities()
        self.broken_symmetry()
        return self.best()

    def follow_instabilities(self, solution: Solution, depth: int = 2) -> None:
        current = solution
        for _ in range(depth):
            try:
                found = self.solver.stability(current.mf)
            except Exception as exc:  # the analysis is an extra: never lose the label to it
                log.debug("stability analysis failed: %s", exc)
                self.solver.candidates.append(_failed_candidate("stability", current.candidate, exc))
                return
            if found is None:
                return
            mo_coeff, kind = found
            restricted = current.candidate.restricted and kind == "internal"
            dm0 = self.solver.density_from_orbitals(current.mf, mo_coeff, kind)
            name = f"2S={current.candidate.spin} {'RKS' if restricted else 'UKS'} after {kind} instability"
            followed = self.run(name, current.candidate.spin, restricted, dm0=dm0, guess=f"{kind} stability vector")
            if followed is None or followed.energy > current.energy - FOLLOW_GAIN:
                return
            current = followed

    def higher_multiplicities(self) -> None:
        s0 = self.reference_spin
        n = self.solver.n_electrons
        ceiling = spin_ceiling(self.atoms.numbers, s0, n)
        budget = self.max_states - 1
        spin = s0 + 2
        while spin <= ceiling and budget > 0:
            self.run(f"2S={spin} UKS", spin, False)
            budget -= 1
            mandatory = spin <= s0 + 4
            if not mandatory and self.energy(spin) >= self.energy(spin - 2):
                break
            spin += 2
        if ceiling not in self.spins_tried and budget > 0:
            self.run(f"2S={ceiling} UKS (free-atom moments)", ceiling, False)
            budget -= 1
            spin = ceiling - 2
            while budget > 0 and spin not in self.spins_tried and self.best() is self.best(spin + 2):
                self.run(f"2S={spin} UKS", spin, False)
                budget -= 1
                spin -= 2

    def broken_symmetry(self) -> None:
        s0 = self.reference_spin
        high = [s for s in self.solutions if s.candidate.spin > s0]
        if not high or any(_broken_symmetry(s) for s in self.solutions if s.candidate.spin == s0):
            return  # nothing to flip, or the stability analysis already broke the symmetry
        source = lowest(high)
        try:
            moments = self.solver.spin_moments(source.mf)
        except Exception as exc:
            log.debug("spin moments of %s failed: %s", source.candidate.name, exc)
            return
        signs = antiparallel_signs(self.atoms, moments)
        if signs is None:
            return
        dm0 = self._guess(source.mf, np.abs(moments) * signs)
        self.run(
            f"2S={s0} UKS broken symmetry",
            s0,
            False,
            dm0=dm0,
            guess=f"antiparallel moments from {source.candidate.name}",
        )

    def _guess(self, mf, moments: np.ndarray):
        """Initial density on the device with ``moments`` on the atoms of ``mf``'s density
        (of the superposition of atomic densities when there is no solution to start from)."""
        if mf is None:
            total = self.solver.initial_density()
        else:
            dm_alpha, dm_beta = self.solver.dm(mf)
            total = dm_alpha + dm_beta
        guess = moment_guess(total, self.solver.ao_atoms(), self.solver.atom_populations(total), moments)
        return self.solver.to_device(np.stack(guess))

    def magnetic_smeared(self, reference: Optional[Solution]) -> None:
        """Smeared frames: free-spin UKS from ferromagnetic, then antiparallel moments."""
        moments = free_atom_moments(self.atoms.numbers)
        if moments.sum() < MAGNETIC_ATOM:
            return
        start = reference.mf if reference is not None else None
        self.run(
            "UKS free spin, ferromagnetic moments",
            self.reference_spin,
            False,
            dm0=self._guess(start, moments),
            guess="free-atom moments, parallel",
            free_spin=True,
        )
        signs = antiparallel_signs(self.atoms, moments)
        if signs is None:
            return
        # Tried even when the ferromagnetic start collapsed: an antiferromagnet (a
        # stretched H chain, NiO) has no ferromagnetic solution to fall into.
        self.run(
            "UKS free spin, antiparallel moments",
            self.reference_spin,
            False,
            dm0=self._guess(start, moments * signs),
            guess="free-atom moments, antiparallel",
            free_spin=True,
        )


def lowest(solutions: list[Solution]) -> Optional[Solution]:
    """The lowest-energy solution; among those within TIE_HARTREE of it (one state found
    twice), the least spin-contaminated, then a restricted one, then the lowest spin."""
    if not solutions:
        return None
    floor = min(s.energy for s in solutions)
    tied = [s for s in solutions if s.energy - floor <= TIE_HARTREE]
    return min(tied, key=_tie_break)


def _tie_break(solution: Solution):
    candidate = solution.candidate
    contamination = abs(candidate.s2 - _s2_exact(candidate.spin)) if candidate.s2 is not None else 0.0
    return (round(contamination, 3), not candidate.restricted, candidate.spin)


def _broken_symmetry(solution: Solution) -> bool:
    """An unrestricted solution whose ⟨S²⟩ exceeds S(S+1) by half an electron pair or more."""
    candidate = solution.candidate
    return (
        not candidate.restricted
        and candidate.s2 is not None
        and candidate.s2 - _s2_exact(candidate.spin) > BROKEN_SYMMETRY_CONTAMINATION
    )


def _s2_exact(spin: int) -> float:
    s = spin / 2
    return s * (s + 1)


def _failed_candidate(name: str, source: Candidate, exc: BaseException) -> Candidate:
    return Candidate(
        name=f"{name} of {source.name}",
        spin=source.spin,
        restricted=source.restricted,
        guess="-",
        converged=False,
        energy_ev=None,
        error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
    )


def state_summary(
    candidate: Candidate, moments: Optional[np.ndarray], decision: str, candidates: list[Candidate], policy: str
) -> dict[str, Any]:
    """The recorded electronic state of a label."""
    expected = _s2_exact(candidate.spin)
    return {
        "policy": policy,
        "spin": candidate.spin,
        "multiplicity": candidate.spin + 1,
        "restricted": candidate.restricted,
        "s2": candidate.s2,
        "s2_exact": expected,
        "spin_contamination": (candidate.s2 - expected) if candidate.s2 is not None else None,
        "magnetic_moments": moments.tolist() if moments is not None else None,
        "total_moment": float(np.sum(moments)) if moments is not None else None,
        "occupations": "smeared" if candidate.smeared else "integer",
        "winner": candidate.name,
        "search": decision,
        "candidates": [c.as_dict() for c in candidates],
    }
