"""Uncertainty-biased melt/quench (samplers.bias): the bias force is the gradient of the
bias energy, frames keep the model's own numbers, and the runs go where the members
disagree."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from pipeline.errors import ConfigError
from samplers.bias import BiasedEvaluator, uncertainty_bias
from samplers.dynamics import MeltQuenchConfig
from samplers.melt_quench import run_melt_quench
from tests.samplers.conftest import TINY


def float64_ensemble(seed: int = 3):
    from potential import ModelConfig, build_ensemble

    # energy_scale 5: members that disagree by eV, so that the bias has a real gradient
    return build_ensemble(ModelConfig(**TINY, dtype="float64"), 3, seed, device="cpu", energy_scale=5.0)


def water_pair() -> Atoms:
    atoms = Atoms(
        "OH2OH2",
        positions=[
            [0.0, 0.0, 0.0],
            [0.96, 0.0, 0.0],
            [-0.24, 0.93, 0.0],
            [2.9, 0.1, 0.2],
            [3.4, 0.8, 0.5],
            [3.3, -0.7, 0.4],
        ],
    )
    return atoms


def schedule(**fields) -> MeltQuenchConfig:
    """A short melt/quench schedule at 0.5 fs with no σ_F stop; ``fields`` override."""
    return MeltQuenchConfig(**{"timestep_fs": 0.5, "hi": None, "heat_steps": 0, "cool_steps": 0, **fields})


def bias_energy(ensemble, atoms: Atoms, depth: float, width: float) -> float:
    (result,) = ensemble.evaluate([atoms], members=True)
    return uncertainty_bias(result["member_energies"], result["member_forces"], depth, width)[0]


def test_bias_force_is_minus_the_gradient_of_the_bias_energy():
    ensemble = float64_ensemble()
    atoms = water_pair()
    (result,) = ensemble.evaluate([atoms], members=True)
    assert result["member_forces"].shape == (3, len(atoms), 3)
    # the members' mean force is the ensemble's force
    assert np.allclose(result["member_forces"].mean(0), result["forces"], atol=1e-12)
    spread = float(np.std(result["member_energies"])) / len(atoms)
    assert spread > 1e-3, "the members must disagree for the test to mean anything"
    depth, width = 0.3, spread  # at s = B the bias is steepest
    energy, force = uncertainty_bias(result["member_energies"], result["member_forces"], depth, width)
    assert -len(atoms) * depth < energy < 0
    assert np.abs(force).max() > 1e-3
    step = 1e-4
    numeric = np.zeros_like(force)
    for i in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, c] += step
            minus.positions[i, c] -= step
            numeric[i, c] = -(bias_energy(ensemble, plus, depth, width) - bias_energy(ensemble, minus, depth, width))
            numeric[i, c] /= 2 * step
    assert np.allclose(force, numeric, atol=1e-6 + 1e-5 * np.abs(force).max())
    # a translation moves nothing: the bias force has no net component
    assert np.allclose(force.sum(0), 0.0, atol=1e-9)


def test_bias_vanishes_where_the_members_agree_and_is_bounded_where_they_do_not():
    forces = np.random.default_rng(0).normal(size=(4, 5, 3))
    energy, force = uncertainty_bias(np.full(4, -12.5), forces, depth=0.2, width=0.05)
    assert energy == 0.0 and np.array_equal(force, np.zeros((5, 3)))
    energy, force = uncertainty_bias(np.array([-1e3, 1e3, -1e3, 1e3]), forces, depth=0.2, width=0.05)
    assert energy == pytest.approx(-5 * 0.2) and np.allclose(force, 0.0)
    with pytest.raises(ValueError, match="do not match"):
        uncertainty_bias(np.zeros(3), forces, 0.2, 0.05)


def test_biased_frames_keep_the_model_forces_and_energy():
    ensemble = float64_ensemble()
    atoms = water_pair()
    biased = BiasedEvaluator(ensemble, depth=0.3, width=0.4)  # about the members' spread here
    (result,) = biased.evaluate([atoms])
    (plain,) = ensemble.evaluate([atoms])
    assert result["energy"] == pytest.approx(plain["energy"], abs=1e-12)
    assert np.allclose(result["model_forces"], plain["forces"], atol=1e-12)
    assert not np.allclose(result["forces"], plain["forces"])
    assert "member_forces" not in result and result["bias_energy"] < 0
    config = schedule(
        t_start=600, t_high=600, t_end=600, hold_steps=20, frame_interval=10, bias_depth=0.3, bias_width=0.4
    )
    (trajectory,) = run_melt_quench(ensemble, [atoms], config, seed=2)
    for frame in trajectory.frames:
        (reference,) = ensemble.evaluate([frame])
        assert np.allclose(frame.arrays["model_forces"], reference["forces"], atol=1e-9)
        assert frame.info["model_energy"] == pytest.approx(reference["energy"], abs=1e-9)
        assert frame.info["provenance"]["params"]["bias_depth"] == 0.3


def test_both_drivers_run_the_same_biased_trajectory():
    ensemble = float64_ensemble(5)
    config = schedule(
        t_start=300, t_high=1500, t_end=600, heat_steps=10, hold_steps=5, cool_steps=10,
        frame_interval=5, bias_depth=1.0, bias_width=3.5,
    )  # fmt: skip
    starts = [water_pair(), water_pair()[:3]]
    via_ase = run_melt_quench(ensemble, starts, config.model_copy(update={"driver": "ase"}), seed=7)
    batched = run_melt_quench(ensemble, starts, config.model_copy(update={"driver": "batched"}), seed=7)
    plain = run_melt_quench(ensemble, starts, config.model_copy(update={"bias_depth": 0.0}), seed=7)
    for a, b, c in zip(via_ase, batched, plain):
        assert len(a.frames) == len(b.frames) == 6
        for x, y in zip(a.frames, b.frames):
            assert np.allclose(x.positions, y.positions, atol=1e-8)
        # and the bias changed the path
        assert not np.allclose(b.frames[-1].positions, c.frames[-1].positions, atol=1e-3)


def test_biased_runs_go_where_the_members_disagree():
    ensemble = float64_ensemble(11)
    config = schedule(
        t_start=300, t_high=300, t_end=300, hold_steps=200, frame_interval=20, min_covalent_ratio=0.0, bias_width=0.77
    )
    starts = [water_pair(), water_pair()[:3], water_pair()[3:]]

    def mean_rise_of_energy_deviation(depth: float) -> float:
        run = run_melt_quench(ensemble, starts, config.model_copy(update={"bias_depth": depth}), seed=1)
        return float(np.mean([f.info["sigma_e"] - t.frames[0].info["sigma_e"] for t in run for f in t.frames[1:]]))

    plain, biased = mean_rise_of_energy_deviation(0.0), mean_rise_of_energy_deviation(1.0)
    # seven times the plain runs' rise here; a bias that did nothing would give the same
    assert biased > 0 and biased > 3 * abs(plain)


def test_bias_needs_the_members():
    from ase.calculators.emt import EMT

    from samplers.model import ScoredCalculator

    config = MeltQuenchConfig(heat_steps=2, hold_steps=0, cool_steps=0, bias_depth=0.1)
    with pytest.raises(ConfigError, match="members' energies and forces"):
        run_melt_quench(ScoredCalculator(EMT(), float64_ensemble()), [water_pair()], config, seed=0)
