"""A short run of benchmarks/bench_offline_fit.py (smoke-test sets, GFN2-xTB), so that the
script that says whether an MD test set measures learning or memory cannot rot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.benchmarks.loader import load_benchmark

pytestmark = pytest.mark.slow

PER_SET = 2


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    pytest.importorskip("tblite")
    al = load_benchmark("bench_active_learning")
    offline = load_benchmark("bench_offline_fit")
    tmp = tmp_path_factory.mktemp("offline")
    out = tmp / "offline.json"
    argv = ["--quick", "--per-set", str(PER_SET), "--epochs", "3", "--cache-dir", str(tmp / "cache"), "--out", str(out)]
    assert offline.main(argv) == 0
    return al, json.loads(out.read_text()), tmp / "cache"


def test_both_fits_are_scored_on_every_in_domain_set(offline_run):
    al, data, _ = offline_run
    assert data["settings"]["quick"] and data["environment"]["versions"]["tblite"]
    runs = data["runs"]
    assert set(runs) == {"same_trajectories", "independent_trajectories"}
    for run in runs.values():
        assert set(run["sets"]) == {"md_300K", "md_600K", "random"}  # the quick profile's in-domain sets
        assert run["train_frames"] == PER_SET * len(run["sets"])
        for scores in run["sets"].values():
            assert scores["frames"] > 0
            assert math.isfinite(scores["force_mae"]) and scores["force_mae"] > 0


def test_zero_force_reference_is_the_held_frames_mean_absolute_force(offline_run):
    al, data, cache = offline_run
    # the independent fit is scored on the whole cached test sets: recompute their mean |F|
    profile = al.get_profile("xtb", quick=True)
    sets, meta = al.build_test_sets(profile, ["H", "C", "N", "O"], cache)
    assert meta["cached"]
    for name, scores in data["runs"]["independent_trajectories"]["sets"].items():
        expected = float(np.mean(np.concatenate([np.abs(a.get_forces()).ravel() for a in sets[name]])))
        assert scores["frames"] == len(sets[name])
        assert scores["zero_force_mae"] == pytest.approx(expected, rel=1e-9)
    # the same-trajectory fit holds PER_SET frames of each set out for training
    for name, scores in data["runs"]["same_trajectories"]["sets"].items():
        assert scores["frames"] == len(sets[name]) - PER_SET


def test_md_test_sets_start_from_every_named_molecule_once():
    al = load_benchmark("bench_active_learning")
    molecules = al.known_molecules(al.XTB_ELEMENTS, 2, 6)
    starts = al.molecule_starts(al.XTB_MOLECULES, 5, 2 * len(molecules), al.XTB_ELEMENTS)
    first, second = starts[: len(molecules)], starts[len(molecules) :]
    names = sorted(a.info["name"] for a in molecules)
    assert sorted(a.info["name"] for a in first) == names == sorted(a.info["name"] for a in second)
    assert [a.info["name"] for a in first] != [a.info["name"] for a in second]  # each pass in its own order
    again = al.molecule_starts(al.XTB_MOLECULES, 5, len(molecules), al.XTB_ELEMENTS)
    assert [a.info["name"] for a in again] == [a.info["name"] for a in first]
