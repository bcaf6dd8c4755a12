"""Errors of an ensemble against labelled frames, and σ_F against the true error."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import numpy as np
from ase import Atoms

from pipeline.arrays import voigt


@dataclass
class ErrorStats:
    frames: int
    energy_mae_per_atom: float
    force_mae: float
    force_rmse: float
    #: element -> {"force_mae", "n_atoms", "energy_mae_per_atom" (over the frames containing
    #: the element), "frames"}
    per_element: dict
    energy_rmse_per_atom: Optional[float] = None
    #: Mean absolute error over the Voigt components (eV/Å³) of the frames whose label and
    #: prediction both have a stress; None when none has.
    stress_mae: Optional[float] = None
    stress_frames: int = 0

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "energy_mae_per_atom": self.energy_mae_per_atom,
            "energy_rmse_per_atom": self.energy_rmse_per_atom,
            "force_mae": self.force_mae,
            "force_rmse": self.force_rmse,
            "stress_mae": self.stress_mae,
            "stress_frames": self.stress_frames,
            "per_element": self.per_element,
        }


def model_errors(model, labelled: list[Atoms]) -> tuple[Optional[ErrorStats], list[dict]]:
    """Errors of ``model`` against labels, and per-frame calibration points (σ_F vs error)."""
    if model is None or not labelled:
        return None, []
    predictions = model.evaluate(labelled)
    energy_errors, force_errors, stress_errors = [], [], []
    per_element: dict[str, list[float]] = defaultdict(list)
    element_energy: dict[str, list[float]] = defaultdict(list)
    calibration = []
    for atoms, prediction in zip(labelled, predictions):
        forces = atoms.get_forces()
        error = np.asarray(prediction["forces"]) - forces
        norms = np.abs(error)
        energy_errors.append(abs(float(prediction["energy"]) - atoms.get_potential_energy()) / len(atoms))
        force_errors.append(norms.ravel())
        symbols = atoms.get_chemical_symbols()
        for symbol, row in zip(symbols, norms):
            per_element[symbol].extend(row.tolist())
        for symbol in set(symbols):
            element_energy[symbol].append(energy_errors[-1])
        stress_error = _stress_error(atoms, prediction)
        if stress_error is not None:
            stress_errors.append(stress_error)
        calibration.append(_calibration_point(atoms, prediction, error, energy_errors[-1]))
    all_forces = np.concatenate(force_errors)
    energies = np.asarray(energy_errors)
    stats = ErrorStats(
        frames=len(labelled),
        energy_mae_per_atom=float(energies.mean()),
        energy_rmse_per_atom=float(np.sqrt((energies**2).mean())),
        force_mae=float(all_forces.mean()),
        force_rmse=float(np.sqrt((all_forces**2).mean())),
        stress_mae=float(np.concatenate(stress_errors).mean()) if stress_errors else None,
        stress_frames=len(stress_errors),
        per_element={
            el: {
                "force_mae": float(np.mean(v)),
                "n_atoms": len(v) // 3,
                "energy_mae_per_atom": float(np.mean(element_energy[el])),
                "frames": len(element_energy[el]),
            }
            for el, v in sorted(per_element.items())
        },
    )
    return stats, calibration


def _stress_error(atoms: Atoms, prediction: dict) -> Optional[np.ndarray]:
    """|Δσ| per Voigt component where the label and the prediction both have a stress."""
    label = (getattr(atoms.calc, "results", None) or {}).get("stress")
    predicted = prediction.get("stress")
    if label is None or predicted is None:
        return None
    label, predicted = voigt(label), voigt(predicted)
    if label.shape != (6,) or predicted.shape != (6,):
        return None
    return np.abs(predicted - label)


def _calibration_point(atoms: Atoms, prediction: dict, error: np.ndarray, energy_error: float) -> dict:
    deviation = np.asarray(prediction["force_deviation"])
    return {
        "sigma_f": float(deviation.max()),
        "sigma_e": float(prediction["energy_deviation"]) / len(atoms),
        "energy_error_per_atom": energy_error,
        "force_error_max": float(np.linalg.norm(error, axis=1).max()),
        "force_rmse": float(np.sqrt((error**2).mean())),
        "selected_as": atoms.info.get("selected_as"),
        "n_atoms": len(atoms),
    }
