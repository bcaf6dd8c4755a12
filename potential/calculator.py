"""ASE calculator around an :class:`EnsemblePotential`."""

from __future__ import annotations

from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from potential.model import EnsemblePotential


class EnsembleCalculator(Calculator):
    """Energy, forces and stress of the ensemble mean, and its disagreement.

    ``results`` also holds ``force_deviation`` (per atom, eV/Å: σ_i = sqrt(mean_k
    |F_ik - F̄_i|²)), ``max_force_deviation`` (eV/Å), ``energy_deviation`` (eV, std of
    the members' energies), ``member_energies`` (K,) and ``descriptor`` (an invariant
    vector for diversity selection). Stress needs a fully periodic cell.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: EnsemblePotential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress needs a fully periodic cell")
        (result,) = self.potential.evaluate([self.atoms], stress=periodic)
        self.results = {
            "energy": result["energy"],
            "free_energy": result["energy"],
            "forces": result["forces"],
            "force_deviation": result["force_deviation"],
            "max_force_deviation": float(result["force_deviation"].max()),
            "energy_deviation": result["energy_deviation"],
            "member_energies": result["member_energies"],
            "descriptor": result["descriptor"],
        }
        if periodic:
            self.results["stress"] = result["stress"]


def load_calculator(path: str | Path, device: str | torch.device | None = None) -> EnsembleCalculator:
    """The ASE calculator of a saved ensemble (a directory written by ``save_ensemble``)."""
    from potential.checkpoint import load_ensemble

    return EnsembleCalculator(load_ensemble(path, device=device))


__all__ = ["EnsembleCalculator", "load_calculator"]
