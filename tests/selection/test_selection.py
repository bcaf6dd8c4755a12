"""Selection on constructed examples whose right answer is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.hashing import frame_hash
from pipeline.selection import (
    SelectionConfig,
    classify,
    farthest_point_sampling,
    frame_descriptors,
    geometry_problem,
    near_duplicates,
    resolve_thresholds,
    select_arrays,
    select_frames,
    selection_config,
    structure_fingerprint,
)


def dimer(symbols: str, distance: float, sigma: float | None, descriptor=None) -> Atoms:
    atoms = Atoms(symbols, positions=[[0, 0, 0], [distance, 0, 0]], cell=[12, 12, 12], pbc=False)
    atoms.center()
    if sigma is not None:
        atoms.arrays["force_deviation"] = np.array([sigma / 2, sigma])
    if descriptor is not None:
        atoms.info["descriptor"] = np.asarray(descriptor, dtype=float)
    return atoms


# --------------------------------------------------------------------------- classes


def test_classification_at_the_boundaries():
    sigma = [0.0999999, 0.1, 0.4999999, 0.5, np.nan, np.inf, 0.0]
    assert list(classify(sigma, 0.1, 0.5)) == [
        "accurate",
        "candidate",
        "candidate",
        "failed",
        "unscored",
        "failed",
        "accurate",
    ]


def test_lo_not_below_hi_is_a_clear_error():
    with pytest.raises(ValidationError):
        SelectionConfig(lo=0.5, hi=0.5)
    with pytest.raises(ConfigError) as info:
        selection_config(lo=0.6, hi=0.5)
    message = str(info.value)
    assert "lo (0.6) must be below hi (0.5)" in message and "\n" not in message
    with pytest.raises(ConfigError):
        classify([0.1], 0.3, 0.2)
    with pytest.raises(ConfigError, match="lo_bounds"):
        selection_config(adaptive=True, lo_bounds=(0.1, 0.5), hi_bounds=(0.4, 1.0))


def test_adaptive_thresholds_follow_quantiles_within_bounds():
    config = SelectionConfig(
        adaptive=True, lo_quantile=0.5, hi_quantile=0.95, lo_bounds=(0.02, 0.25), hi_bounds=(0.3, 2.0), min_history=50
    )
    history = np.linspace(0.0, 1.0, 1001)  # quantile q is q itself
    t = resolve_thresholds(config, history)
    assert t.adaptive and t.n_history == 1001
    assert t.lo == pytest.approx(0.25)  # median 0.5 clipped to the lo bound
    assert t.hi == pytest.approx(0.95)
    narrow = resolve_thresholds(config, np.linspace(0.0, 0.2, 1001))
    assert narrow.lo == pytest.approx(0.1) and narrow.hi == pytest.approx(0.3)  # 0.19 clipped up to 0.3
    short = resolve_thresholds(config, history[:10])
    assert (short.lo, short.hi, short.adaptive) == (config.lo, config.hi, False)
    fixed = resolve_thresholds(SelectionConfig(lo=0.1, hi=0.4), history)
    assert (fixed.lo, fixed.hi, fixed.adaptive) == (0.1, 0.4, False)
    # the thresholds used are the ones applied to the batch
    result = select_arrays([0.2, 0.27, 0.96], [["Cu"]] * 3, ["a", "b", "c"], np.eye(3), config, history=history)
    assert [d.cls for d in result.decisions] == ["accurate", "candidate", "failed"]
    assert result.lo == pytest.approx(0.25) and result.adaptive


# --------------------------------------------------------------------------- filters


def test_dedupe_against_database_and_within_batch():
    frames = [dimer("Cu2", 2.2 + 0.1 * i, sigma=0.2, descriptor=[float(i), 0.0]) for i in range(5)]
    frames.append(frames[1].copy())  # exact duplicate inside the batch
    known = {frame_hash(frames[2])}
    result = select_frames(frames, SelectionConfig(lo=0.1, hi=0.5, max_selected=10), known_hashes=known)
    reasons = [d.reason for d in result.decisions]
    assert reasons[2] == "duplicate-known"
    assert reasons[5] == "duplicate-batch" and "frame 1" in result.decisions[5].detail
    assert sorted(result.selected) == [0, 1, 3, 4]
    assert result.counts["candidate"] == 6 and result.counts["selected"] == 4


def test_geometry_filter_drops_overlapping_and_exploded_frames():
    good = dimer("CuO", 1.9, sigma=0.2, descriptor=[0.0])
    close = dimer("CuO", 0.4, sigma=0.2, descriptor=[5.0])
    exploded = Atoms("Cu", positions=[[0, 0, 0]], cell=[30, 30, 30], pbc=True)
    exploded.arrays["force_deviation"] = np.array([0.3])
    exploded.info["descriptor"] = np.array([9.0])
    result = select_frames([good, close, exploded], SelectionConfig(lo=0.1, hi=0.5, max_volume_per_atom=500))
    assert result.selected == [0]
    assert result.decisions[1].reason == "geometry" and "too close" in result.decisions[1].detail
    assert result.decisions[2].reason == "geometry" and "exploded" in result.decisions[2].detail
    assert geometry_problem(good) is None
    nan = good.copy()
    nan.positions[0, 0] = np.nan
    assert "NaN" in geometry_problem(nan)


def test_near_duplicates_by_descriptor_keep_the_most_uncertain():
    descriptors = np.array([[0.0, 0.0], [0.0, 1e-4], [5.0, 0.0], [5.0, 1e-4], [10.0, 0.0]])
    groups = [["Cu"], ["Cu"], ["Cu"], ["Cu", "O"], ["Cu"]]
    sigma = np.array([0.2, 0.3, 0.2, 0.2, 0.2])
    result = select_arrays(
        sigma, groups, [str(i) for i in range(5)], descriptors, SelectionConfig(lo=0.1, hi=0.5, max_selected=10)
    )
    # 0 and 1 are the same structure: the more uncertain (1) is kept; 2 and 3 differ in elements
    assert result.decisions[0].reason == "near-duplicate" and "frame 1" in result.decisions[0].detail
    assert sorted(result.selected) == [1, 2, 3, 4]
    dropped = near_duplicates(descriptors, groups, [0, 1, 2, 3, 4], distance=0.5)
    assert dropped == {1: (0, pytest.approx(1e-4))}


# --------------------------------------------------------------------------- picking


def test_farthest_point_sampling_on_a_line():
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    priority = np.array([1.0, 0.0, 0.0, 0.0])
    assert farthest_point_sampling(points, 3, priority=priority) == [0, 3, 2]
    assert farthest_point_sampling(points, 10, priority=priority) == [0, 3, 2, 1]
    assert farthest_point_sampling(points, 0) == []


def test_cap_is_respected_and_the_rest_is_over_cap():
    n = 12
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    descriptors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = select_arrays(
        np.full(n, 0.2), [["Ni"]] * n, [str(i) for i in range(n)], descriptors, SelectionConfig(max_selected=4)
    )
    assert len(result.selected) == 4
    assert sum(d.reason == "over-cap" for d in result.decisions) == n - 4
    # four points of a 12-gon spread as far as possible are a square
    chosen = np.sort(np.asarray(result.selected))
    assert np.all(np.diff(chosen) == 3)
    assert (
        select_arrays(
            np.full(n, 0.2), [["Ni"]] * n, [str(i) for i in range(n)], descriptors, SelectionConfig(max_selected=0)
        ).selected
        == []
    )


def test_rare_elements_are_not_crowded_out():
    # 20 copper frames spread on a big circle, 2 gold-containing frames near its centre:
    # plain farthest-point sampling never reaches the gold; per-element balance must.
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    cu = np.stack([10 * np.cos(angles), 10 * np.sin(angles)], axis=1)
    au = np.array([[0.5, 0.0], [-0.5, 0.0]])
    descriptors = np.vstack([cu, au])
    groups = [["Cu"]] * 20 + [["Cu", "Au"]] * 2
    sigma = np.full(22, 0.2)
    hashes = [str(i) for i in range(22)]
    # Plain FPS with a cap of 4: two opposite circle points (distance 20), then the two at
    # 90 degrees (14.1 from both), always farther than the centre (10).
    plain = select_arrays(
        sigma, groups, hashes, descriptors, SelectionConfig(max_selected=4, per_element_balance=False)
    )
    assert sorted(plain.selected) == [0, 5, 10, 15]
    balanced = select_arrays(sigma, groups, hashes, descriptors, SelectionConfig(max_selected=4))
    assert {20, 21} <= set(balanced.selected) and len(balanced.selected) == 4
    assert balanced.ledger["Au"]["selected"] == 2
    assert balanced.ledger["Cu"]["selected"] == 4


def test_sentinels_are_random_accurate_frames_and_reproducible():
    n = 50
    sigma = np.concatenate([np.full(40, 0.01), np.full(10, 0.3)])
    descriptors = np.arange(n, dtype=float)[:, None]
    hashes = [str(i) for i in range(n)]
    config = SelectionConfig(sentinel_count=5, max_selected=3)
    first = select_arrays(sigma, [["C"]] * n, hashes, descriptors, config, seed=1)
    again = select_arrays(sigma, [["C"]] * n, hashes, descriptors, config, seed=1)
    other = select_arrays(sigma, [["C"]] * n, hashes, descriptors, config, seed=2)
    assert len(first.sentinels) == 5 and all(i < 40 for i in first.sentinels)
    assert first.sentinels == again.sentinels and first.sentinels != other.sentinels
    assert all(first.decisions[i].selected_as == "sentinel" for i in first.sentinels)
    assert first.counts["sentinel"] == 5 and first.counts["selected"] == 3
    none = select_arrays(sigma, [["C"]] * n, hashes, descriptors, SelectionConfig(max_selected=3))
    assert none.sentinels == []


def test_every_decision_and_the_ledger_are_recorded():
    frames = [
        dimer("Cu2", 2.3, 0.01, [0.0]),  # accurate
        dimer("CuO", 1.9, 0.2, [1.0]),  # candidate, selected
        dimer("O2", 1.3, 0.9, [2.0]),  # failed
        dimer("CuO", 1.95, 0.3, [8.0]),  # candidate
        dimer("Cu2", 2.4, None, [4.0]),  # unscored: eligible like a candidate
    ]
    result = select_frames(frames, SelectionConfig(lo=0.1, hi=0.5, max_selected=2))
    classes = [d.cls for d in result.decisions]
    assert classes == ["accurate", "candidate", "failed", "candidate", "unscored"]
    assert result.counts == {
        "explored": 5,
        "accurate": 1,
        "candidate": 2,
        "failed": 1,
        "unscored": 1,
        "selected": 2,
        "sentinel": 0,
    }
    # Eligible: 1 (CuO, desc 1), 3 (CuO, desc 8), 4 (Cu2, desc 4, unscored). O is the rarer
    # element (2 eligible frames against 3 for Cu), so its turn comes first and takes the more
    # uncertain CuO frame, 3; Cu's turn then takes the frame farthest from it: 1 (|8-1| = 7)
    # rather than 4 (|8-4| = 4).
    assert result.selected == [3, 1]
    assert result.decisions[4].reason == "over-cap"
    assert result.ledger["Cu"] == {
        "explored": 4,
        "accurate": 1,
        "candidate": 2,
        "failed": 0,
        "unscored": 1,
        "selected": 2,
        "sentinel": 0,
    }
    assert result.ledger["O"] == {
        "explored": 3,
        "accurate": 0,
        "candidate": 2,
        "failed": 1,
        "unscored": 0,
        "selected": 2,
        "sentinel": 0,
    }
    record = json.loads(json.dumps(result.to_dict()))
    assert record["decisions"][4]["sigma_f"] is None
    assert record["thresholds"] == {"lo": 0.1, "hi": 0.5, "adaptive": False, "e_lo": None, "e_hi": None}
    assert record["decisions"][1]["sigma_e"] is None  # no energy deviation on these frames
    picked = result.picked_frames(frames)
    assert [f.info["selected_as"] for f in picked] == ["candidate", "candidate"]
    assert picked[0].info["frame_hash"] == frame_hash(frames[3])


def test_fingerprint_descriptors_when_frames_carry_none():
    a = dimer("CuO", 1.9, 0.2)
    b = a.copy()
    b.rotate(37, "z", center="COP")
    c = dimer("CuO", 2.6, 0.2)
    descriptors, source = frame_descriptors([a, b, c])
    assert source == "fingerprint"
    assert np.allclose(descriptors[0], descriptors[1])  # rotation invariant
    assert not np.allclose(descriptors[0], descriptors[2])
    assert np.allclose(structure_fingerprint(a), descriptors[0])
    # the rotated copy is a near-duplicate (same fingerprint), the stretched one is not
    result = select_frames([a, b, c], SelectionConfig(lo=0.1, hi=0.5))
    assert result.descriptor_source == "fingerprint"
    assert result.decisions[1].reason == "near-duplicate" and sorted(result.selected) == [0, 2]


def test_geometry_problem_is_the_structure_validator_with_the_selection_limits():
    from pipeline.atoms import check_atoms, structure_problem
    from pipeline.errors import InvalidStructure

    close = dimer("CuO", 0.4, sigma=None)
    assert geometry_problem(close) == structure_problem(close, min_distance=0.0, min_covalent_ratio=0.5)
    with pytest.raises(InvalidStructure) as error:
        check_atoms(close, "close", min_covalent_ratio=0.5)
    assert str(error.value) == f"close: {geometry_problem(close)}"
    assert geometry_problem(Atoms()) == "structure has no atoms"
