from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin

from samplers.batched_md import BatchedLangevin
from samplers.dynamics import MeltQuenchConfig, initial_momenta, trajectory_rng
from samplers.melt_quench import run_melt_quench
from samplers.random_structures import RandomStructureConfig, random_structures


def test_batched_driver_reproduces_ase_langevin(emt_scored, copper32):
    config = MeltQuenchConfig(
        t_start=300,
        t_high=1800,
        t_end=600,
        heat_steps=10,
        hold_steps=5,
        cool_steps=10,
        timestep_fs=2,
        friction_per_fs=0.05,
        frame_interval=5,
        hi=None,
    )
    rattled = copper32.copy()
    rattled.rattle(0.05, seed=3)
    starts = [copper32, rattled]
    via_ase = run_melt_quench(emt_scored, starts, config.model_copy(update={"driver": "ase"}), seed=5)
    batched = run_melt_quench(emt_scored, starts, config.model_copy(update={"driver": "batched"}), seed=5)
    for a, b in zip(via_ase, batched):
        assert a.stop.reason == b.stop.reason == "completed"
        assert len(a.frames) == len(b.frames) == 6
        for x, y in zip(a.frames, b.frames):
            assert np.allclose(x.positions, y.positions, atol=1e-9)
            assert x.info["kinetic_temperature"] == pytest.approx(y.info["kinetic_temperature"], rel=1e-9)
            assert x.info["sigma_f"] == pytest.approx(y.info["sigma_f"], rel=1e-6)
        assert b.frames[0].info["provenance"]["driver"] == "batched"


def test_same_physics_as_plain_ase_langevin_at_constant_temperature(emt_scored, copper32):
    """Independent of our ASE driver: ASE's Langevin set up by hand with the same random stream."""
    config = MeltQuenchConfig(
        t_start=900,
        t_high=900,
        t_end=900,
        heat_steps=0,
        hold_steps=30,
        cool_steps=0,
        timestep_fs=2,
        friction_per_fs=0.02,
        frame_interval=30,
        hi=None,
    )
    atoms = copper32.copy()
    atoms.calc = EMT()
    rng = trajectory_rng(8, 0)
    atoms.set_momenta(initial_momenta(atoms.get_masses(), 900, rng))
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=900, friction=0.02 / units.fs, fixcm=False, rng=rng)
    dynamics.run(30)

    driver = BatchedLangevin(emt_scored, [copper32], config, seed=8)
    (trajectory,) = driver.run()
    final = trajectory.frames[-1]
    reference = atoms.copy()
    reference.wrap()
    assert np.allclose(final.positions, reference.positions, atol=1e-9)
    assert final.info["kinetic_temperature"] == pytest.approx(atoms.get_temperature(), rel=1e-9)
    assert driver.model_calls == 31


def test_trajectories_do_not_depend_on_their_batch(ensemble):
    starts = random_structures(
        RandomStructureConfig(elements=["Na", "Cl", "K"], min_atoms=6, max_atoms=12), seed=2, count=3
    )
    config = MeltQuenchConfig(heat_steps=15, hold_steps=0, cool_steps=15, frame_interval=10, hi=None)
    together = BatchedLangevin(ensemble, starts, config, seed=3).run()
    alone = BatchedLangevin(ensemble, starts[1:2], config, seed=3, first_index=1).run()
    for x, y in zip(together[1].frames, alone[0].frames):
        # float32 model: batching changes summation order, not the trajectory
        assert np.allclose(x.positions, y.positions, atol=1e-4)
        assert x.info["provenance"]["trajectory"] == y.info["provenance"]["trajectory"] == 1


def test_stopped_trajectories_leave_the_batch(ensemble):
    starts = random_structures(
        RandomStructureConfig(elements=["Ca", "O", "Ti"], min_atoms=5, max_atoms=9), seed=4, count=4
    )
    config = MeltQuenchConfig(heat_steps=10, hold_steps=10, cool_steps=0, frame_interval=5, hi=None)
    reference = BatchedLangevin(ensemble, starts, config, seed=0)
    free = reference.run()
    initial = np.array([t.frames[0].info["sigma_f"] for t in free])
    # hi between the smallest and the largest initial σ_F: those above it stop at step 0
    hi = float(np.sort(initial)[1] + np.sort(initial)[2]) / 2
    driver = BatchedLangevin(ensemble, starts, config.model_copy(update={"hi": hi}), seed=0)
    stopped = driver.run()
    early = [i for i, t in enumerate(stopped) if t.stop.reason == "uncertain" and t.stop.step == 0]
    assert early == [i for i in range(4) if initial[i] >= hi] and len(early) == 2
    for i in early:
        assert stopped[i].frames == [] and stopped[i].stop_frame is not None
    # one model call per step for the whole batch; stopped trajectories no longer evaluated
    assert driver.model_calls == reference.model_calls == config.total_steps + 1
    assert reference.frames_scored == 4 * (config.total_steps + 1)
    assert driver.frames_scored < reference.frames_scored


def test_calculator_and_evaluator_drive_the_same_trajectories(ensemble):
    from potential import EnsembleCalculator

    starts = random_structures(RandomStructureConfig(elements=["Mg", "O"], min_atoms=6, max_atoms=8), seed=1, count=2)
    config = MeltQuenchConfig(heat_steps=10, hold_steps=0, cool_steps=0, frame_interval=5, hi=None)
    batched = run_melt_quench(ensemble, starts, config, seed=2)
    # the ensemble's ASE calculator under ASE's Langevin, and the bare evaluator wrapped as a calculator
    for model in (EnsembleCalculator(ensemble), ensemble):
        via_ase = run_melt_quench(model, starts, config.model_copy(update={"driver": "ase"}), seed=2)
        for a, b in zip(via_ase, batched):
            assert [f.info["provenance"]["driver"] for f in a.frames] == ["ase"] * 3
            for x, y in zip(a.frames, b.frames):
                assert np.allclose(x.positions, y.positions, atol=1e-6)
                assert np.allclose(x.arrays["force_deviation"], y.arrays["force_deviation"], atol=1e-6)
                assert np.allclose(x.info["descriptor"], y.info["descriptor"], atol=1e-5)
