"""Errors of an ensemble against labelled frames, and σ_F against the true error."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
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
    #: How far the ensemble's spread is from the true error (:func:`fit_calibration`).
    calibration_fit: Optional[dict] = None

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
            "calibration_fit": self.calibration_fit,
        }


def model_errors(
    model, labelled: list[Atoms], predictions: Optional[list[dict]] = None
) -> tuple[Optional[ErrorStats], list[dict]]:
    """Errors of ``model`` against labels, and per-frame calibration points (σ_F vs error).

    ``predictions`` are ``model.evaluate(labelled)`` when the caller has them already.
    """
    if model is None or not labelled:
        return None, []
    if predictions is None:
        predictions = model.evaluate(labelled)
    energy_errors, force_errors, stress_errors = [], [], []
    per_element: dict[str, list[float]] = defaultdict(list)
    element_energy: dict[str, list[float]] = defaultdict(list)
    calibration = []
    spread = CalibrationData()
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
        spread.add(symbols, prediction, error, energy_errors[-1])
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
        calibration_fit=fit_calibration(spread),
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


@dataclass
class CalibrationData:
    """Per-atom force spread σ_i against |ΔF_i|, per frame energy spread σ_E against |ΔE|/atom."""

    symbols: list = field(default_factory=list)
    sigma_atoms: list = field(default_factory=list)
    error_atoms: list = field(default_factory=list)
    sigma_frames: list = field(default_factory=list)
    error_frames: list = field(default_factory=list)

    def add(self, symbols: list[str], prediction: dict, force_error: np.ndarray, energy_error: float) -> None:
        self.symbols += list(symbols)
        self.sigma_atoms += np.asarray(prediction["force_deviation"], dtype=float).tolist()
        self.error_atoms += np.linalg.norm(force_error, axis=1).tolist()
        self.sigma_frames.append(float(prediction["energy_deviation"]) / len(symbols))
        self.error_frames.append(float(energy_error))


def _scale(sigma: np.ndarray, error: np.ndarray) -> Optional[float]:
    """The least-squares slope of error = s·σ through the origin, None without spread."""
    keep = np.isfinite(sigma) & np.isfinite(error)
    sigma, error = sigma[keep], error[keep]
    denominator = float((sigma**2).sum())
    return float((sigma * error).sum() / denominator) if denominator > 0 else None


#: Elements with fewer atoms than this in a fit use the all-element scale.
MIN_CALIBRATION_ATOMS = 10


def fit_calibration(data: CalibrationData) -> dict:
    """How many times the ensemble's spread the true error is, per element and overall.

    The force scale ``s`` is the least-squares slope of |ΔF_i| = s·σ_i through the origin
    over the atoms (of one element, or all); the energy scale likewise for |ΔE|/atom
    against σ_E. ``s`` times a spread is then the expected error (eV/Å, eV/atom), which
    is what a calibrated trust window compares with (:func:`calibrated_frames`).
    """
    symbols = np.asarray(data.symbols, dtype=object)
    sigma, error = np.asarray(data.sigma_atoms, dtype=float), np.asarray(data.error_atoms, dtype=float)
    per_element = {}
    for element in sorted(set(data.symbols)):
        mask = symbols == element
        per_element[element] = {"force_scale": _scale(sigma[mask], error[mask]), "atoms": int(mask.sum())}
    return {
        "force_scale": _scale(sigma, error),
        "energy_scale": _scale(np.asarray(data.sigma_frames, dtype=float), np.asarray(data.error_frames, dtype=float)),
        "atoms": len(data.symbols),
        "frames": len(data.sigma_frames),
        "per_element": per_element,
    }


def calibrated_frames(frames: list[Atoms], fit: Optional[dict]) -> list[Atoms]:
    """Copies of scored frames whose spreads are expected errors under ``fit``.

    Each atom's ``force_deviation`` is multiplied by its element's force scale (the overall
    scale for elements seen fewer than :data:`MIN_CALIBRATION_ATOMS` times), ``sigma_f`` is
    recomputed from them and ``sigma_e`` multiplied by the energy scale. Without a fit, or
    for frames without scores, the frames are returned unchanged.
    """
    if not fit or fit.get("force_scale") is None:
        return list(frames)
    overall = fit["force_scale"]
    scales = {
        element: row["force_scale"] if row.get("force_scale") and row["atoms"] >= MIN_CALIBRATION_ATOMS else overall
        for element, row in (fit.get("per_element") or {}).items()
    }
    energy_scale = fit.get("energy_scale")
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info = dict(atoms.info)
        deviation = atoms.arrays.get("force_deviation")
        if deviation is not None:
            factor = np.array([scales.get(symbol, overall) for symbol in atoms.get_chemical_symbols()])
            copy.arrays["force_deviation"] = np.asarray(deviation, dtype=float) * factor
            copy.info["sigma_f"] = float(copy.arrays["force_deviation"].max()) if len(atoms) else None
        elif atoms.info.get("sigma_f") is not None:
            copy.info["sigma_f"] = float(atoms.info["sigma_f"]) * overall
        if energy_scale is not None and atoms.info.get("sigma_e") is not None:
            copy.info["sigma_e"] = float(atoms.info["sigma_e"]) * energy_scale
        out.append(copy)
    return out
