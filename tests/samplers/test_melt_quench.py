from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from pipeline.atoms import min_distance_ratio
from pipeline.errors import ConfigError
from samplers.config import parse_config
from samplers.dynamics import MeltQuenchConfig, TrajectoryRecorder
from samplers.melt_quench import run_melt_quench, sample_melt_quench
from samplers.random_structures import RandomStructureConfig, random_structures

PROVENANCE_KEYS = {"sampler", "params", "seed", "parent", "temperature", "step", "trajectory"}


def series(trajectory, key):
    return np.array([frame.info[key] for frame in trajectory.frames])


def steps(trajectory):
    return np.array([frame.info["provenance"]["step"] for frame in trajectory.frames])


def test_kinetic_temperature_follows_the_schedule(emt_scored, copper32):
    config = MeltQuenchConfig(
        t_start=300,
        t_high=2500,
        t_end=300,
        heat_steps=60,
        hold_steps=120,
        cool_steps=120,
        timestep_fs=2,
        friction_per_fs=0.1,
        frame_interval=5,
        hi=None,
        driver="ase",
    )
    (trajectory,) = run_melt_quench(emt_scored, [copper32], config, seed=0)
    assert trajectory.stop.reason == "completed" and trajectory.stop.step == 300
    step = steps(trajectory)
    kinetic = series(trajectory, "kinetic_temperature")
    target = np.array([f.info["provenance"]["temperature"] for f in trajectory.frames])
    assert np.allclose(target, [config.temperature(s) for s in step])
    # reaches: the hold, after 1.5 ps of heating and settling (friction time 10 fs), sits at t_high;
    # 32 atoms fluctuate by sqrt(2/3N) = 14 % per frame, averaged over 19 frames
    hold = (step >= 90) & (step <= 180)
    assert abs(kinetic[hold].mean() - 2500) < 0.12 * 2500
    # leaves: the end of the cooling ramp is far below t_high and near its (lagging) target
    end = step >= 270
    assert kinetic[end].mean() < 0.35 * 2500
    assert abs(kinetic[end].mean() - target[end].mean()) < 0.1 * 2500
    for frame in trajectory.frames:
        record = frame.info["provenance"]
        assert PROVENANCE_KEYS <= set(record) and record["sampler"] == "melt-quench"
        assert frame.arrays["force_deviation"].shape == (32,)
        assert frame.info["sigma_f"] == pytest.approx(frame.arrays["force_deviation"].max())


def test_stops_at_the_first_uncertain_frame(emt_scored, copper32):
    base = dict(
        t_start=500,
        t_high=3000,
        heat_steps=60,
        hold_steps=0,
        cool_steps=0,
        timestep_fs=2,
        frame_interval=5,
        driver="ase",
    )
    (free,) = run_melt_quench(emt_scored, [copper32], MeltQuenchConfig(hi=None, **base), seed=4)
    sigma = series(free, "sigma_f")
    # first frame above the median: every frame before it is below, so with hi at its value
    # the trajectory must stop exactly there
    first = int(np.argmax(sigma > np.median(sigma)))
    assert first >= 1
    hi = float(sigma[first])
    (stopped,) = run_melt_quench(emt_scored, [copper32], MeltQuenchConfig(hi=hi, **base), seed=4)
    assert stopped.stop.reason == "uncertain"
    assert stopped.stop.step == steps(free)[first]
    assert len(stopped.frames) == first
    for kept, reference in zip(stopped.frames, free.frames):
        assert np.array_equal(kept.positions, reference.positions)
        assert kept.info["sigma_f"] < hi
    assert stopped.stop_frame.info["sigma_f"] == pytest.approx(hi)
    assert stopped.stop_frame.info["stop"]["reason"] == "uncertain"
    report = stopped.report()
    assert report["stop"]["reason"] == "uncertain" and report["frames"] == first
    # the generator yields the kept frames and then the stop frame, tagged
    frames = list(sample_melt_quench(emt_scored, MeltQuenchConfig(hi=hi, **base), 4, [copper32]))
    assert len(frames) == first + 1 and "stop" in frames[-1].info
    quiet = MeltQuenchConfig(hi=hi, include_stop_frames=False, **base)
    assert len(list(sample_melt_quench(emt_scored, quiet, 4, [copper32]))) == first


def test_stops_at_the_first_unphysical_frame(emt_scored, copper32):
    base = dict(
        t_start=2000,
        t_high=4000,
        heat_steps=40,
        hold_steps=0,
        cool_steps=0,
        timestep_fs=2,
        frame_interval=2,
        driver="ase",
        hi=None,
    )
    (free,) = run_melt_quench(emt_scored, [copper32], MeltQuenchConfig(min_covalent_ratio=0.0, **base), seed=1)
    ratios = np.array([min_distance_ratio(frame)[1] for frame in free.frames])
    # fcc Cu starts at 2.55 Å = 0.97 x (2 r_cov); hot atoms come closer
    limit = 0.5 * (ratios.min() + ratios[0])
    first = int(np.argmax(ratios < limit))
    assert first >= 1
    (stopped,) = run_melt_quench(emt_scored, [copper32], MeltQuenchConfig(min_covalent_ratio=limit, **base), seed=1)
    assert stopped.stop.reason == "unphysical" and "too close" in stopped.stop.detail
    assert stopped.stop.step == steps(free)[first] and len(stopped.frames) == first
    assert np.allclose(stopped.stop_frame.positions, free.frames[first].positions)


def test_nan_and_exploding_cells_are_unphysical(copper32):
    config = MeltQuenchConfig(max_volume_ratio=2.0)
    recorder = TrajectoryRecorder(config, "melt-quench", 0, 0, copper32, "ase")
    broken = copper32.copy()
    broken.positions[3] = np.nan
    assert recorder.observe(10, broken, None, 300.0) is False
    assert recorder.trajectory.stop.reason == "unphysical" and "NaN" in recorder.trajectory.stop.detail
    recorder = TrajectoryRecorder(config, "melt-quench", 0, 0, copper32, "ase")
    swollen = copper32.copy()
    swollen.set_cell(copper32.cell * 1.4, scale_atoms=True)  # 2.74 x the volume
    assert recorder.observe(10, swollen, {"force_deviation": np.zeros(32)}, 300.0) is False
    assert "cell volume changed by a factor 2.74" in recorder.trajectory.stop.detail


def test_npt_changes_the_cell_and_keeps_the_temperature(emt_scored, copper32):
    config = MeltQuenchConfig(
        ensemble="npt",
        t_start=600,
        t_high=600,
        t_end=600,
        heat_steps=0,
        hold_steps=100,
        cool_steps=0,
        timestep_fs=2,
        friction_per_fs=0.1,
        barostat_tau_fs=100,
        frame_interval=5,
        hi=None,
    )
    (trajectory,) = run_melt_quench(emt_scored, [copper32], config, seed=2)
    assert trajectory.stop.reason == "completed"
    volumes = np.array([f.get_volume() for f in trajectory.frames])
    assert np.ptp(volumes) > 0.1  # the barostat moves the cell
    assert np.all(np.abs(volumes / copper32.get_volume() - 1) < 0.1)  # and keeps it near EMT's equilibrium
    kinetic = series(trajectory, "kinetic_temperature")[len(trajectory.frames) // 2 :]
    assert abs(kinetic.mean() - 600) < 0.25 * 600
    assert trajectory.frames[-1].info["provenance"]["driver"] == "ase"
    cluster = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[10, 10, 10])
    with pytest.raises(ConfigError, match="npt melt/quench needs periodic"):
        run_melt_quench(emt_scored, [cluster], config, seed=0)


def test_same_seed_same_trajectories_with_the_ensemble_driving(ensemble):
    starts = random_structures(
        RandomStructureConfig(elements=["Li", "Mg", "Al"], min_atoms=6, max_atoms=10), seed=0, count=3
    )
    config = MeltQuenchConfig(heat_steps=20, hold_steps=10, cool_steps=10, frame_interval=10, hi=None)
    first = run_melt_quench(ensemble, starts, config, seed=9)
    second = run_melt_quench(ensemble, starts, config, seed=9)
    other = run_melt_quench(ensemble, starts, config, seed=10)
    for a, b, c in zip(first, second, other):
        assert a.parent == b.parent and len(a.frames) == len(b.frames) > 0
        for x, y in zip(a.frames, b.frames):
            assert np.array_equal(x.positions, y.positions)
            assert x.info["sigma_f"] == y.info["sigma_f"]
            assert x.info["provenance"] == y.info["provenance"]
            assert PROVENANCE_KEYS <= set(x.info["provenance"])
        assert not np.allclose(a.frames[-1].positions, c.frames[-1].positions)
    assert [t.frames[0].info["provenance"]["trajectory"] for t in first] == [0, 1, 2]


def test_model_without_deviation_and_bad_config_are_clear_errors(copper32):
    config = MeltQuenchConfig(heat_steps=2, hold_steps=0, cool_steps=0, driver="ase")
    with pytest.raises(ConfigError, match="gives no force_deviation"):
        run_melt_quench(EMT(), [copper32], config, seed=0)
    with pytest.raises(ConfigError, match="needs a model"):
        run_melt_quench(None, [copper32], config, seed=0)
    with pytest.raises(ConfigError, match="nothing to run"):
        parse_config(MeltQuenchConfig, "melt_quench", heat_steps=0, hold_steps=0, cool_steps=0)
    with pytest.raises(ConfigError, match="batched driver runs nvt only"):
        parse_config(MeltQuenchConfig, "melt_quench", driver="batched", ensemble="npt")
