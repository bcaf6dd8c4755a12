"""The MD stability judge of benchmarks/bench_active_learning.py on constructed runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase.build import molecule

from pipeline.atoms import bonded
from tests.benchmarks.loader import load_benchmark

SPEC = {"max_drift_ev_per_atom": 1.0, "bond_factor": 1.25}


def run_of(frames, reason="completed"):
    for atoms in frames:
        atoms.info.update(model_energy=-10.0 * len(atoms), kinetic_temperature=300.0)
    return SimpleNamespace(frames=frames, stop=SimpleNamespace(reason=reason, step=100, detail="pair too close"))


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_active_learning")


def test_a_run_that_keeps_the_molecule_keeps_its_bonds(bench):
    start = molecule("H2O")
    moved = start.copy()
    moved.positions += 0.02 * np.random.default_rng(0).standard_normal(moved.positions.shape)
    record = bench.judge_run(run_of([start.copy(), moved]), 300, SPEC, start)
    assert record["stable"] and record["bonds_kept"]


def test_a_broken_bond_is_physical_but_not_kept(bench):
    start = molecule("H2O")
    torn = start.copy()
    torn.positions[1] += 3.0 * (torn.positions[1] - torn.positions[0])  # one H leaves
    assert bonded(start, 1.25).sum() == 4 and bonded(torn, 1.25).sum() == 2
    record = bench.judge_run(run_of([start.copy(), torn]), 300, SPEC, start)
    assert record["stable"] and not record["bonds_kept"]


def test_a_formed_bond_is_not_kept(bench):
    start = molecule("H2O")
    start.positions[2] = start.positions[0] + [0.0, 0.0, 3.0]  # an OH with a far H
    fused = molecule("H2O")
    assert not bench.judge_run(run_of([start.copy(), fused]), 300, SPEC, start)["bonds_kept"]


def test_a_stopped_run_is_neither_stable_nor_kept(bench):
    start = molecule("H2O")
    record = bench.judge_run(run_of([start.copy()], reason="unphysical"), 300, SPEC, start)
    assert not record["stable"] and not record["bonds_kept"] and record["reason"].startswith("unphysical")


def test_without_a_bond_factor_nothing_is_claimed(bench):
    start = molecule("H2O")
    record = bench.judge_run(run_of([start.copy()]), 300, {"max_drift_ev_per_atom": 1.0}, start)
    assert record["stable"] and "bonds_kept" not in record
