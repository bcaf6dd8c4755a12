"""Calibration of the ensemble's spread against the true error, and its use by selection."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from potential import build_ensemble
from potential.evaluation import (
    MIN_CALIBRATION_ATOMS,
    CalibrationData,
    calibrated_frames,
    fit_calibration,
    model_errors,
)

from .conftest import random_structure, small_config


def _data(rows: list[tuple[str, float, float]], frames: list[tuple[float, float]] = ()) -> CalibrationData:
    data = CalibrationData()
    for symbol, sigma, error in rows:
        data.symbols.append(symbol)
        data.sigma_atoms.append(sigma)
        data.error_atoms.append(error)
    for sigma, error in frames:
        data.sigma_frames.append(sigma)
        data.error_frames.append(error)
    return data


def test_the_fit_is_the_slope_of_the_error_over_the_spread_per_element():
    rng = np.random.default_rng(0)
    sigma_h, sigma_o = rng.uniform(0.01, 0.3, 40), rng.uniform(0.01, 0.3, 30)
    rows = [("H", s, 3.0 * s) for s in sigma_h] + [("O", s, 1.0 * s) for s in sigma_o]
    fit = fit_calibration(_data(rows, frames=[(0.01, 0.05), (0.02, 0.10)]))
    assert fit["per_element"]["H"] == {"force_scale": pytest.approx(3.0), "atoms": 40}
    assert fit["per_element"]["O"]["force_scale"] == pytest.approx(1.0)
    overall = (np.r_[sigma_h, sigma_o] * np.r_[3 * sigma_h, sigma_o]).sum() / (np.r_[sigma_h, sigma_o] ** 2).sum()
    assert fit["force_scale"] == pytest.approx(overall)
    assert fit["energy_scale"] == pytest.approx(5.0)
    assert fit["atoms"] == 70 and fit["frames"] == 2


def test_no_spread_gives_no_scale():
    fit = fit_calibration(_data([("H", 0.0, 0.2), ("H", 0.0, 0.1)]))
    assert fit["force_scale"] is None and fit["per_element"]["H"]["force_scale"] is None
    assert fit["energy_scale"] is None


def test_calibrated_frames_scale_each_atom_by_its_element():
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [0, 1.2, 0]])
    atoms.arrays["force_deviation"] = np.array([0.02, 0.05, 0.04])
    atoms.info.update(sigma_f=0.05, sigma_e=0.01)
    fit = {
        "force_scale": 2.0,
        "energy_scale": 4.0,
        "per_element": {
            "H": {"force_scale": 3.0, "atoms": MIN_CALIBRATION_ATOMS},
            "O": {"force_scale": 9.0, "atoms": 1},
        },
    }
    (scaled,) = calibrated_frames([atoms], fit)
    # H by its own scale; O, seen too rarely for its own, by the overall one.
    assert np.allclose(scaled.arrays["force_deviation"], [0.06, 0.15, 0.08])
    assert scaled.info["sigma_f"] == pytest.approx(0.15) and scaled.info["sigma_e"] == pytest.approx(0.04)
    assert atoms.info["sigma_f"] == 0.05 and atoms.arrays["force_deviation"][1] == 0.05  # the input is untouched
    assert calibrated_frames([atoms], None)[0] is atoms


def test_model_errors_fit_a_real_ensemble():
    model = build_ensemble(small_config(), n_members=3, seed=1)
    frames = []
    for seed in range(4):
        atoms = random_structure(6, pbc=False, seed=seed, elements=[1, 6, 8])
        rng = np.random.default_rng(seed)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(size=(6, 3)))
        frames.append(atoms)
    stats, _ = model_errors(model, frames)
    fit = stats.calibration_fit
    assert fit["atoms"] == 24 and fit["frames"] == 4
    assert fit["force_scale"] > 0 and np.isfinite(fit["force_scale"])
    assert set(fit["per_element"]) <= {"H", "C", "O"}
    assert stats.to_dict()["calibration_fit"] == fit


def test_a_calibrated_trust_window_selects_on_expected_error(embedded_store, tmp_path):
    """Generation 1 selects with generation 0's fit: raw σ_F below lo, expected error above it."""
    from flows import stages
    from flows.config import load_config
    from pipeline.documents import Generation
    from pipeline.frame_archive import pack_frames

    config = load_config(workdir=tmp_path, selection={"lo": 0.1, "hi": 2.0, "calibrated": True, "sentinel_count": 0})
    Generation(number=0, status="completed", metrics={"calibration_fit": {
        "force_scale": 3.0, "energy_scale": None, "per_element": {}, "atoms": 100, "frames": 10,
    }}).save()  # fmt: skip
    frames = []
    for seed in range(3):
        atoms = random_structure(5, pbc=False, seed=seed, elements=[1, 8])
        atoms.arrays["force_deviation"] = np.full(len(atoms), 0.05)  # accurate uncalibrated
        atoms.info["sigma_f"] = 0.05
        frames.append(atoms)
    generation = stages.start_generation(config, 1)
    generation.explored.put(pack_frames(frames), filename="explored.npz")
    generation.save()
    stages.select_stage(stages.StageContext(config, generation))
    generation.reload()
    assert generation.thresholds["calibrated_by"] == 0
    assert generation.counts["accurate"] == 0 and generation.counts["candidate"] == 3

    uncalibrated = config.model_copy(update={"selection": config.selection.model_copy(update={"calibrated": False})})
    other = stages.start_generation(uncalibrated, 2)
    other.explored.put(pack_frames(frames), filename="explored.npz")
    other.save()
    stages.select_stage(stages.StageContext(uncalibrated, other))
    other.reload()
    assert other.thresholds["calibrated_by"] is None and other.counts["accurate"] == 3
