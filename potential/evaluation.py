"""Errors of an ensemble against labelled frames, and σ_F against the true error."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ase import Atoms


@dataclass
class ErrorStats:
    frames: int
    energy_mae_per_atom: float
    force_mae: float
    force_rmse: float
    per_element: dict

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "energy_mae_per_atom": self.energy_mae_per_atom,
            "force_mae": self.force_mae,
            "force_rmse": self.force_rmse,
            "per_element": self.per_element,
        }


def model_errors(model, labelled: list[Atoms]) -> tuple[Optional[ErrorStats], list[dict]]:
    """Errors of ``model`` against labels, and per-frame calibration points (σ_F vs error)."""
    if model is None or not labelled:
        return None, []
    predictions = model.evaluate(labelled)
    energy_errors, force_errors = [], []
    per_element: dict[str, list[float]] = defaultdict(list)
    calibration = []
    for atoms, prediction in zip(labelled, predictions):
        forces = atoms.get_forces()
        error = np.asarray(prediction["forces"]) - forces
        norms = np.abs(error)
        energy_errors.append(abs(float(prediction["energy"]) - atoms.get_potential_energy()) / len(atoms))
        force_errors.append(norms.ravel())
        for symbol, row in zip(atoms.get_chemical_symbols(), norms):
            per_element[symbol].extend(row.tolist())
        deviation = np.asarray(prediction["force_deviation"])
        calibration.append(
            {
                "sigma_f": float(deviation.max()),
                "sigma_e": float(prediction["energy_deviation"]) / len(atoms),
                "energy_error_per_atom": energy_errors[-1],
                "force_error_max": float(np.linalg.norm(error, axis=1).max()),
                "force_rmse": float(np.sqrt((error**2).mean())),
                "selected_as": atoms.info.get("selected_as"),
                "n_atoms": len(atoms),
            }
        )
    all_forces = np.concatenate(force_errors)
    stats = ErrorStats(
        frames=len(labelled),
        energy_mae_per_atom=float(np.mean(energy_errors)),
        force_mae=float(all_forces.mean()),
        force_rmse=float(np.sqrt((all_forces**2).mean())),
        per_element={el: {"force_mae": float(np.mean(v)), "n_atoms": len(v) // 3} for el, v in sorted(per_element.items())},
    )
    return stats, calibration
