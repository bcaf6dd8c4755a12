"""Uncertainty-biased dynamics: MD drawn towards where the ensemble's members disagree.

Hot MD on the model's own surface spends most of its steps where the model is already
sure of itself, and a frame the members agree on teaches the next model little. After
uncertainty-driven dynamics (Kulichenko et al., Nat. Comput. Sci. 3, 230 (2023)) and
hyperactive learning (van der Oord et al., npj Comput. Mater. 9, 168 (2023)), the
dynamics run on the model's energy plus a bias that is lower where the members'
energies disagree:

    E_bias = -n A (1 - exp(-s² / 2B²)),    s = σ_E / n,

with σ_E the standard deviation of the K members' total energies (eV), n the number of
atoms, A the depth and B the width (both eV/atom). The bias is bounded (never more than
nA below the model), so it cannot pull a run off to infinity, and its force is largest
where s is about B and fades where the members agree or disagree wildly; the temperature
still sets how far a run goes, the bias only tilts it towards the model's doubts. Its
force needs nothing beyond what the ensemble computes for σ_F anyway:

    ∇σ_E² = -(2/K) Σ_k (E_k - Ē) F_k.

:class:`BiasedEvaluator` wraps a batch evaluator that gives the members' energies and
forces (``potential.EnsemblePotential``). ``forces`` in its results are the biased ones
that drive the dynamics; ``model_forces`` and ``energy`` stay the model's own, which is
what frames keep (``samplers.frames.attach_scores``), so no bias reaches a stored frame.
The bias acts on the atoms only: under NPT the cell feels the model's stress alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from pipeline.errors import ConfigError
from samplers.model import evaluate_parameters


def uncertainty_bias(
    member_energies: np.ndarray, member_forces: np.ndarray, depth: float, width: float
) -> tuple[float, np.ndarray]:
    """(E_bias in eV, its force (n, 3) in eV/Å) for one structure (see the module docstring).

    ``member_energies`` (K,) in eV, ``member_forces`` (K, n, 3) in eV/Å, ``depth`` A and
    ``width`` B in eV/atom.
    """
    energies = np.asarray(member_energies, dtype=np.float64)
    forces = np.asarray(member_forces, dtype=np.float64)
    k, n = forces.shape[0], forces.shape[1]
    if energies.shape != (k,) or n == 0:
        raise ValueError(f"member energies {energies.shape} do not match member forces {forces.shape}")
    spread = energies - energies.mean()
    variance = float(np.mean(spread**2))
    gaussian = np.exp(-variance / (2.0 * n * n * width * width))
    energy = -n * depth * (1.0 - gaussian)
    # F = -dE/dR = n A g d(σ²)/dR / (2 n² B²), with dσ²/dR = -(2/K) Σ_k (E_k - Ē) F_k
    force = -(depth * gaussian / (n * width * width * k)) * np.einsum("k,kij->ij", spread, forces)
    return float(energy), force


class BiasedEvaluator:
    """A batch evaluator whose forces include the uncertainty bias (``depth``, ``width`` in eV/atom)."""

    def __init__(self, evaluator: Any, depth: float, width: float):
        if "members" not in evaluate_parameters(evaluator):
            raise ConfigError(
                f"uncertainty-biased MD needs the members' energies and forces, which {type(evaluator).__name__} "
                "does not give; drive it with the ensemble (potential.EnsemblePotential) or set bias_depth to 0"
            )
        self.evaluator = evaluator
        self.depth = float(depth)
        self.width = float(width)

    def evaluate(
        self, frames: Sequence[Atoms], *, stress: bool | None = None, scores: bool = True, **options: Any
    ) -> list[dict]:
        """The inner evaluator's results with biased ``forces``, the model's in ``model_forces``,
        and ``bias_energy`` (eV). ``scores`` (the MD drivers' hint that a step keeps no
        frame) is accepted and ignored: the bias needs the members on every step."""
        results = self.evaluator.evaluate(frames, stress=stress, members=True, **options)
        for result in results:
            energy, force = uncertainty_bias(result["member_energies"], result["member_forces"], self.depth, self.width)
            result["model_forces"] = result["forces"]
            result["forces"] = result["forces"] + force
            result["bias_energy"] = energy
            del result["member_forces"]
        return results
