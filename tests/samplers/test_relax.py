"""Batched FIRE relaxation with the model: it finds minima, batches without changing a
relaxation, and stops on the same rules as the MD samplers."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Octahedron
from ase.optimize import BFGS

from samplers.dynamics import stop_summary, trajectory_frames
from samplers.model import ScoredCalculator
from samplers.relax import RelaxConfig, relax_structures, relaxed_end_points, sample_relax


def rattled_copper(seed: int):
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.15, seed=seed)
    return atoms


def copper_cluster(seed: int):
    atoms = Octahedron("Cu", 3, cutoff=1)  # 13 atoms
    atoms.center(vacuum=6.0)
    atoms.pbc = False
    atoms.rattle(0.1, seed=seed)
    return atoms


def emt_energy(atoms) -> float:
    work = atoms.copy()
    work.calc = EMT()
    return work.get_potential_energy()


def test_relaxation_reaches_the_minimum_that_bfgs_finds(emt_scored):
    start = copper_cluster(1)
    config = RelaxConfig(fmax=0.01, max_steps=1000, frame_interval=25, hi=None)
    (trajectory,) = relax_structures(emt_scored, [start], config, seed=0)
    assert trajectory.stop.reason == "converged", trajectory.report()
    end = trajectory.frames[-1]
    work = end.copy()
    work.calc = EMT()
    assert np.linalg.norm(work.get_forces(), axis=1).max() < 0.01
    reference = start.copy()
    reference.calc = EMT()
    BFGS(reference, logfile=None).run(fmax=0.01, steps=1000)
    # the same basin: energies within a few meV, not just "lower than the start"
    assert emt_energy(end) == pytest.approx(reference.get_potential_energy(), abs=5e-3)
    assert emt_energy(end) < emt_energy(start) - 0.1
    # frames are the scored path, each with the ensemble's deviation and provenance
    steps = [f.info["provenance"]["step"] for f in trajectory.frames]
    assert steps == sorted(steps) and steps[0] == 0
    assert all(s % 25 == 0 for s in steps[:-1])
    for frame in trajectory.frames:
        assert frame.info["provenance"]["sampler"] == "relax"
        assert frame.info["provenance"]["temperature"] is None
        assert "force_deviation" in frame.arrays and np.isfinite(frame.info["sigma_f"])
    energies = [f.info["model_energy"] for f in trajectory.frames]
    assert energies[-1] < energies[0]


def test_batching_does_not_change_a_relaxation(emt_scored):
    starts = [rattled_copper(2), copper_cluster(3), rattled_copper(4)]
    config = RelaxConfig(fmax=0.02, max_steps=120, frame_interval=10, hi=None)
    together = relax_structures(emt_scored, starts, config, seed=0)
    for index, start in enumerate(starts):
        (alone,) = relax_structures(emt_scored, [start], config, seed=0, first_index=index)
        assert alone.stop.reason == together[index].stop.reason
        assert alone.stop.step == together[index].stop.step
        assert len(alone.frames) == len(together[index].frames)
        for a, b in zip(alone.frames, together[index].frames):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)


def test_periodic_cells_keep_their_cell_and_wrap(emt_scored):
    start = rattled_copper(5)
    (trajectory,) = relax_structures(emt_scored, [start], RelaxConfig(fmax=0.02, max_steps=300, hi=None), seed=0)
    for frame in trajectory.frames:
        np.testing.assert_allclose(frame.cell.array, start.cell.array)
        assert frame.pbc.all()
    assert emt_energy(trajectory.frames[-1]) < emt_energy(start)


def test_an_uncertain_frame_stops_the_relaxation_and_is_kept_aside(ensemble):
    # the untrained ensemble disagrees by far more than 1e-6 eV/Å: stop at the first frame
    start = copper_cluster(6)
    (trajectory,) = relax_structures(ensemble, [start], RelaxConfig(hi=1e-6, max_steps=50), seed=0)
    assert trajectory.stop.reason == "uncertain" and trajectory.stop.step == 0
    assert trajectory.frames == []
    assert trajectory.stop_frame.info["stop"]["reason"] == "uncertain"
    frames = list(sample_relax(ensemble, RelaxConfig(hi=1e-6, max_steps=50), 0, [start]))
    assert len(frames) == 1 and frames[0].info["stop"]["reason"] == "uncertain"
    assert list(trajectory_frames([trajectory], include_stop_frames=False)) == []


def test_a_relaxation_that_runs_out_of_steps_says_so(emt_scored):
    start = copper_cluster(7)
    (trajectory,) = relax_structures(emt_scored, [start], RelaxConfig(fmax=1e-6, max_steps=7, hi=None), seed=0)
    assert trajectory.stop.reason == "completed" and trajectory.stop.step == 7
    assert [f.info["provenance"]["step"] for f in trajectory.frames] == [0, 7]
    assert stop_summary([trajectory])["completed"] == 1


def test_end_points_are_relaxed_geometries_and_keep_the_start_info(emt_scored):
    starts = [copper_cluster(8), rattled_copper(9)]
    starts[0].info["parent"] = "abc"
    ends = relaxed_end_points(emt_scored, starts, RelaxConfig(fmax=0.05, max_steps=200))
    assert len(ends) == 2
    assert ends[0].info["parent"] == "abc"
    # MD from an end point names the structure the relaxation began with as its parent
    from samplers.frames import parent_hash

    assert [parent_hash(end) for end in ends] == [parent_hash(start) for start in starts]
    for start, end in zip(starts, ends):
        assert end.calc is None
        assert emt_energy(end) < emt_energy(start)
    assert relaxed_end_points(emt_scored, [], RelaxConfig()) == []


def test_a_collapsing_start_is_reported_unphysical_not_relaxed(emt_scored):
    from ase import Atoms

    # two H atoms 0.3 Å apart: below half their covalent sum from the first step
    start = Atoms("H2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[10, 10, 10], pbc=False)
    (trajectory,) = relax_structures(emt_scored, [start], RelaxConfig(max_steps=10, hi=None), seed=0)
    assert trajectory.stop.reason == "unphysical"
    # an end point is checked once, at the end: EMT's repulsion has pushed the pair apart
    from pipeline.selection import geometry_problem

    (end,) = relaxed_end_points(emt_scored, [start], RelaxConfig(max_steps=10))
    assert geometry_problem(end, 0.5, None) is None
    assert end.get_distance(0, 1) > 0.3


def test_a_bad_start_structure_is_refused_in_one_line(emt_scored):
    start = copper_cluster(10)
    start.positions[0] = np.nan
    with pytest.raises(Exception, match="structure 0 to relax"):
        relax_structures(emt_scored, [start], RelaxConfig())


def test_substitution_relaxes_through_the_same_driver(ensemble):
    from samplers.substitution import SubstitutionConfig, sample_substitution

    calculator = ScoredCalculator(EMT(), ensemble)
    config = SubstitutionConfig(
        elements=["Ag", "Au", "Pd"], prototypes=["rocksalt-NaCl"], relax="relax", relax_steps=20, fmax=0.01, hi=None
    )
    frames = list(sample_substitution(calculator, config, seed=0, count=1))
    assert frames[-1].info["provenance"]["relax_stop"]["reason"] in ("converged", "completed")
    assert frames[0].info["provenance"]["sampler"] == "substitute"
