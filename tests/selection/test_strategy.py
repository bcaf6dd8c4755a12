"""``SelectionConfig.strategy``: ensemble disagreement (the default) or random picks (the baseline)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.hashing import frame_hash
from pipeline.selection import (
    SelectionConfig,
    element_floor,
    sampler_quotas,
    select_arrays,
    select_frames,
    selection_config,
)


def plain(n: int) -> tuple[list[list[str]], list[str], np.ndarray]:
    return [["Cu"]] * n, [f"h{i}" for i in range(n)], np.arange(n, dtype=float)[:, None]


def test_default_strategy_is_uncertainty_and_unknown_ones_are_refused():
    assert SelectionConfig().strategy == "uncertainty"
    assert SelectionConfig(strategy="random").strategy == "random"
    with pytest.raises(ValidationError):
        SelectionConfig(strategy="greedy")
    with pytest.raises(ConfigError, match="strategy"):
        selection_config(strategy="greedy")


def test_random_picks_ignore_sigma_and_take_every_class():
    # 0-9 accurate, 10-19 candidates, 20-29 failed, 30-39 unscored
    sigma = np.concatenate([np.full(10, 0.01), np.full(10, 0.2), np.full(10, 5.0), np.full(10, np.nan)])
    config = SelectionConfig(strategy="random", max_selected=12, lo=0.05, hi=0.5)
    result = select_arrays(sigma, *plain(40), config, seed=3)
    assert len(result.selected) == 12 == len(set(result.selected))
    assert all(result.decisions[i].selected_as == "candidate" for i in result.selected)
    # classes are still recorded (the ledger), they just do not decide
    assert [d.cls for d in result.decisions[:40:10]] == ["accurate", "candidate", "failed", "unscored"]
    assert result.counts["selected"] == 12
    dropped = [d for d in result.decisions if d.selected_as is None]
    assert len(dropped) == 28 and all(d.reason == "over-cap" for d in dropped)
    # uniform over all 40: over many seeds every class gets about a quarter of the picks
    classes = Counter()
    for seed in range(200):
        picked = select_arrays(sigma, *plain(40), config, seed=seed).selected
        classes.update(result.decisions[i].cls for i in picked)
    assert all(abs(count / (200 * 12) - 0.25) < 0.04 for count in classes.values()), classes


def test_random_picks_are_reproducible_by_seed():
    sigma = np.linspace(0.06, 0.4, 50)
    config = SelectionConfig(strategy="random", max_selected=10)
    first = select_arrays(sigma, *plain(50), config, seed=7).selected
    assert select_arrays(sigma, *plain(50), config, seed=7).selected == first
    assert select_arrays(sigma, *plain(50), config, seed=8).selected != first


def test_random_picks_still_skip_bad_geometry_and_duplicates():
    n = 20
    elements, hashes, descriptors = plain(n)
    hashes[5] = hashes[4]  # an exact duplicate within the batch
    problems = [None] * n
    problems[0] = "atoms too close"
    config = SelectionConfig(strategy="random", max_selected=n)
    result = select_arrays(
        np.full(n, 0.2), elements, hashes, descriptors, config, geometry_problems=problems, known_hashes={"h1", "h2"}
    )
    assert sorted(result.selected) == [3, 4] + list(range(6, n))
    reasons = {i: result.decisions[i].reason for i in (0, 1, 2, 5)}
    assert reasons == {0: "geometry", 1: "duplicate-known", 2: "duplicate-known", 5: "duplicate-batch"}


def test_random_picks_take_everything_below_the_cap_and_sentinels_stay_apart():
    sigma = np.array([0.01] * 6 + [0.2] * 2)
    config = SelectionConfig(strategy="random", max_selected=5, sentinel_count=3)
    result = select_arrays(sigma, *plain(8), config, seed=1)
    assert len(result.selected) == 5
    accurate_left = [i for i in range(6) if i not in result.selected]
    assert len(result.sentinels) == min(3, len(accurate_left))
    assert not set(result.selected) & set(result.sentinels)
    assert all(result.decisions[i].cls == "accurate" for i in result.sentinels)
    small = select_arrays(np.full(3, 0.2), *plain(3), SelectionConfig(strategy="random", max_selected=10))
    assert sorted(small.selected) == [0, 1, 2]


def test_random_strategy_on_frames_drops_overlapping_atoms():
    def dimer(distance: float, sigma: float) -> Atoms:
        atoms = Atoms("CO", positions=[[0, 0, 0], [distance, 0, 0]], cell=[10, 10, 10])
        atoms.arrays["force_deviation"] = np.array([sigma, sigma])
        return atoms

    frames = [dimer(0.2, 0.01), dimer(1.1, 0.01), dimer(1.3, 9.0), dimer(1.5, 0.2)]
    result = select_frames(frames, SelectionConfig(strategy="random", max_selected=10))
    assert sorted(result.selected) == [1, 2, 3]
    assert result.decisions[0].reason == "geometry"
    picked = result.picked_frames(frames)
    assert {a.info["frame_hash"] for a in picked} == {frame_hash(frames[i]) for i in (1, 2, 3)}
    assert all(a.info["selected_as"] == "candidate" for a in picked)


def test_uncertainty_strategy_is_unchanged_by_the_option():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.0, 1.0, 60)
    descriptors = rng.normal(size=(60, 4))
    elements = [["Cu"] if i % 3 else ["Cu", "Ni"] for i in range(60)]
    hashes = [f"h{i}" for i in range(60)]
    base = select_arrays(sigma, elements, hashes, descriptors, SelectionConfig(max_selected=8, sentinel_count=2))
    explicit = select_arrays(
        sigma, elements, hashes, descriptors, SelectionConfig(strategy="uncertainty", max_selected=8, sentinel_count=2)
    )
    assert base.selected == explicit.selected and base.sentinels == explicit.sentinels
    assert all(0.05 <= sigma[i] < 0.5 for i in base.selected)


# --------------------------------------------------------------------------- weighted, representative


def two_blobs(n_big: int = 40, n_small: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A dense blob of moderately uncertain frames and a few far, very uncertain outliers."""
    rng = np.random.default_rng(0)
    descriptors = np.concatenate([rng.normal(0, 0.1, (n_big, 2)), rng.normal(10, 0.1, (n_small, 2))])
    sigma = np.concatenate([rng.uniform(0.1, 0.2, n_big), np.full(n_small, 0.45)])
    return descriptors, sigma


def test_weighted_draws_follow_the_uncertainty_score():
    sigma = np.array([0.06] * 20 + [0.4] * 20)
    config = SelectionConfig(strategy="weighted", max_selected=5, lo=0.05, hi=0.5)
    high = 0
    for seed in range(100):
        result = select_arrays(sigma, *plain(40), config, seed=seed)
        assert len(result.selected) == 5 == len(set(result.selected))
        high += sum(i >= 20 for i in result.selected)
    assert 0.8 < high / 500 < 0.95  # weights 0.4 : 0.06 without replacement: mostly, not only, the uncertain
    assert (
        select_arrays(sigma, *plain(40), config, seed=1).selected
        == select_arrays(sigma, *plain(40), config, seed=1).selected
    )


def test_weighted_and_representative_keep_the_trust_window():
    sigma = np.array([0.01, 0.2, 0.3, 0.9, np.nan])
    for strategy in ("weighted", "representative"):
        result = select_arrays(sigma, *plain(5), SelectionConfig(strategy=strategy, max_selected=10, lo=0.05, hi=0.5))
        assert sorted(result.selected) == [1, 2, 4], strategy  # candidates and unscored only


def test_representative_spends_the_cap_where_the_frames_are():
    descriptors, sigma = two_blobs()
    n = len(sigma)
    elements, hashes = [["Cu"]] * n, [f"h{i}" for i in range(n)]
    config = SelectionConfig(max_selected=4, lo=0.05, hi=0.5)
    fps = select_arrays(sigma, elements, hashes, descriptors, config)
    representative = select_arrays(
        sigma, elements, hashes, descriptors, config.model_copy(update={"strategy": "representative"}), seed=2
    )
    outliers = set(range(40, n))
    # farthest points: the outliers' corner first; k-means: most picks in the dense blob
    assert sum(i in outliers for i in fps.selected) >= 1
    assert sum(i not in outliers for i in representative.selected) >= 3
    # within a cluster the most uncertain frame is taken
    blob_picks = [i for i in representative.selected if i not in outliers]
    assert all(sigma[i] >= np.quantile(sigma[:40], 0.5) for i in blob_picks)
    assert len(representative.selected) == 4 == len(set(representative.selected))


def rare_element_pool(n_common: int = 54, n_rare: int = 6) -> tuple[list[list[str]], list[str], np.ndarray, np.ndarray]:
    """Cu and Ni frames, and a few Pd frames each right next to one of them and less uncertain than it."""
    rng = np.random.default_rng(4)
    n = n_common + n_rare
    elements = [["Cu"] if i % 2 else ["Ni"] for i in range(n_common)] + [["Pd"]] * n_rare
    common = rng.normal(0, 1, (n_common, 3))
    twins = common[rng.choice(n_common, n_rare, replace=False)] + rng.normal(0, 0.01, (n_rare, 3))
    descriptors = np.concatenate([common, twins])
    sigma = np.concatenate([rng.uniform(0.1, 0.3, n_common), np.full(n_rare, 0.06)])
    return elements, [f"h{i}" for i in range(n)], descriptors, sigma


def test_element_floor_is_an_even_share_of_the_cap():
    assert element_floor([["Cu"], ["Ni"], ["Pd"]], 10) == 3
    assert element_floor([["Cu", "Ni"], ["Ni", "Pd"], ["Pd", "Cu"]], 9) == 6  # two elements per pick
    assert element_floor([], 10) == 0


def test_representative_gives_a_rare_element_its_floor():
    elements, hashes, descriptors, sigma = rare_element_pool()
    config = SelectionConfig(strategy="representative", max_selected=10, lo=0.05, hi=0.5)
    off = select_arrays(sigma, elements, hashes, descriptors, config.model_copy(update={"per_element_balance": False}))
    on = select_arrays(sigma, elements, hashes, descriptors, config)
    counts = {name: Counter(e for i in r.selected for e in elements[i]) for name, r in (("off", off), ("on", on))}
    # without the floor the Pd frames lose every cluster to a more uncertain neighbour
    assert counts["off"]["Pd"] == 0
    assert min(counts["on"][e] for e in ("Cu", "Ni", "Pd")) >= element_floor(elements, 10) == 3
    for result in (off, on):
        assert len(result.selected) == 10 == len(set(result.selected))
        assert result.counts["selected"] == 10


def test_representative_floor_takes_every_frame_of_an_element_rarer_than_it():
    elements, hashes, descriptors, sigma = rare_element_pool(n_rare=2)
    result = select_arrays(
        sigma, elements, hashes, descriptors, SelectionConfig(strategy="representative", max_selected=10, lo=0.05)
    )
    assert {54, 55} <= set(result.selected)
    assert len(result.selected) == 10


@pytest.mark.parametrize("balance", [False, True])
def test_representative_spends_the_whole_cap_on_frames_that_share_a_descriptor(balance):
    # five frames, one descriptor: k-means leaves all clusters but one empty
    sigma = np.array([0.1, 0.3, 0.2, 0.4, 0.15])
    config = SelectionConfig(strategy="representative", max_selected=3, lo=0.05, per_element_balance=balance)
    result = select_arrays(sigma, [["Cu"]] * 5, [f"h{i}" for i in range(5)], np.zeros((5, 2)), config)
    assert result.selected == [3, 1, 2]  # the three most uncertain, most uncertain first


def test_sampler_quotas_are_proportional_shares_summing_to_the_cap():
    samplers = ["melt_quench"] * 150 + ["random"] * 32 + ["substitution"] * 18
    quotas = sampler_quotas(samplers, 20)
    assert quotas == {"melt_quench": 15, "random": 3, "substitution": 2}
    # the largest remainders get the rounding: 7 × 2/3 = 4.67 and 7 × 1/3 = 2.33
    assert sampler_quotas(["a"] * 2 + ["b"], 7) == {"a": 2, "b": 1}  # capped at the frames there are
    assert sampler_quotas(["a"] * 20 + ["b"] * 10, 7) == {"a": 5, "b": 2}
    assert sum(sampler_quotas(["a"] * 5 + ["b"] * 5 + ["c"] * 5, 10).values()) == 10
    assert sampler_quotas([], 5) == {} and sampler_quotas(["a"], 0) == {}
    # shares follow every sane frame; a sampler with fewer eligible ones passes the rest on
    everything = ["md"] * 80 + ["random"] * 20
    assert sampler_quotas(everything, 10, eligible=["md"] * 60 + ["random"] * 10) == {"md": 8, "random": 2}
    assert sampler_quotas(everything, 10, eligible=["md"] * 60 + ["random"]) == {"md": 9, "random": 1}
    assert sampler_quotas(everything, 10, eligible=["md"] * 3 + ["random"] * 2) == {"md": 3, "random": 2}
    # three samplers, one full: its spare goes to the other two in their proportions (6:2)
    three = ["a"] * 60 + ["b"] * 20 + ["c"] * 20
    assert sampler_quotas(three, 10, eligible=["a"] * 60 + ["b"] * 20 + ["c"]) == {"a": 7, "b": 2, "c": 1}


@pytest.mark.parametrize("strategy", ["uncertainty", "weighted", "representative"])
def test_per_sampler_share_keeps_the_most_doubted_sampler_to_its_share(strategy):
    # 40 MD frames of modest σ_F and 10 random clusters the ensemble doubts far more:
    # by uncertainty alone the clusters take their all; with shares they take 10/50 of the cap
    rng = np.random.default_rng(0)
    sigma = np.concatenate([rng.uniform(0.1, 0.3, 40), rng.uniform(1.0, 2.0, 10)])
    samplers = ["melt_quench"] * 40 + ["random"] * 10
    elements, hashes, _ = plain(50)
    descriptors = rng.normal(size=(50, 4))
    pooled = SelectionConfig(strategy=strategy, lo=0.05, hi=5.0, max_selected=10, near_duplicate_relative=0)
    shared = pooled.model_copy(update={"per_sampler_share": True})
    without = select_arrays(sigma, elements, hashes, descriptors, pooled, samplers=samplers, seed=1)
    within = select_arrays(sigma, elements, hashes, descriptors, shared, samplers=samplers, seed=1)
    assert Counter(samplers[i] for i in within.selected) == {"melt_quench": 8, "random": 2}
    if strategy != "weighted":  # a weighted draw may leave the clusters fewer picks by chance
        assert Counter(samplers[i] for i in without.selected)["random"] > 2
    assert len(within.selected) == 10 and all(within.decisions[i].selected_as == "candidate" for i in within.selected)
    dropped = [d for i, d in enumerate(within.decisions) if i not in within.selected]
    assert all(d.reason == "over-cap" for d in dropped)
    # within its share each sampler's picks are what the strategy picks from its frames alone
    for rows, quota in ((np.arange(40), 8), (np.arange(40, 50), 2)):
        alone = pooled.model_copy(update={"max_selected": quota})
        by_itself = select_arrays(
            sigma[rows], [elements[i] for i in rows], [hashes[i] for i in rows], descriptors[rows], alone, seed=1
        )
        assert sorted(rows[by_itself.selected]) == sorted(i for i in within.selected if i in rows)


def test_per_sampler_share_reads_the_sampler_from_the_frames_provenance():
    frames = []
    for i in range(12):
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.02 * i]])
        atoms.info["sigma_f"] = 2.0 if i < 4 else 0.2
        atoms.info["provenance"] = {"sampler": "random" if i < 4 else "melt_quench"}
        frames.append(atoms)
    config = SelectionConfig(strategy="representative", lo=0.05, hi=5.0, max_selected=3, per_sampler_share=True)
    result = select_frames(frames, config, seed=0)
    assert sorted(frames[i].info["provenance"]["sampler"] for i in result.selected) == [
        "melt_quench",
        "melt_quench",
        "random",
    ]
    with pytest.raises(ValueError, match="sampler names"):
        select_arrays(np.full(3, 0.2), *plain(3), config, samplers=["a"])


def test_per_sampler_share_counts_the_frames_the_trust_window_calls_failed():
    # 20 random clusters, 15 of them above hi: random picks would give them 20/100 of the cap,
    # and so does the share, from the 5 that may be labelled
    sigma = np.concatenate([np.full(80, 0.2), np.full(5, 1.0), np.full(15, 9.0)])
    samplers = ["melt-quench"] * 80 + ["random"] * 20
    rng = np.random.default_rng(2)
    elements, hashes, _ = plain(100)
    config = SelectionConfig(strategy="representative", lo=0.05, hi=3.0, max_selected=10, per_sampler_share=True)
    result = select_arrays(sigma, elements, hashes, rng.normal(size=(100, 3)), config, samplers=samplers)
    assert Counter(samplers[i] for i in result.selected) == {"melt-quench": 8, "random": 2}
    assert all(sigma[i] < 3.0 for i in result.selected)
    # a sampler whose share rounds to nothing: its frames are dropped over the cap, with a reason
    few = ["melt-quench"] * 99 + ["random"]
    result = select_arrays(np.full(100, 0.2), elements, hashes, rng.normal(size=(100, 3)), config, samplers=few)
    assert few[99] not in {few[i] for i in result.selected} and result.decisions[99].reason == "over-cap"
    assert all(d.reason == "over-cap" for i, d in enumerate(result.decisions) if i not in result.selected)


def test_sampler_strategy_draws_a_named_samplers_share_at_random_from_all_its_sane_frames():
    # MD frames by disagreement; the random clusters' share drawn at random, failed ones too
    sigma = np.concatenate([np.linspace(0.1, 0.3, 80), np.full(5, 1.0), np.full(15, 9.0)])
    samplers = ["melt-quench"] * 80 + ["random"] * 20
    elements, hashes, _ = plain(100)
    descriptors = np.random.default_rng(3).normal(size=(100, 3))
    config = SelectionConfig(
        strategy="representative",
        lo=0.05,
        hi=3.0,
        max_selected=10,
        per_sampler_share=True,
        sampler_strategy={"random": "random"},
    )
    drawn = Counter()
    for seed in range(40):
        result = select_arrays(sigma, elements, hashes, descriptors, config, samplers=samplers, seed=seed)
        assert Counter(samplers[i] for i in result.selected) == {"melt-quench": 8, "random": 2}
        md = [i for i in result.selected if samplers[i] == "melt-quench"]
        alone = config.model_copy(update={"max_selected": 8, "per_sampler_share": False, "sampler_strategy": {}})
        assert sorted(md) == sorted(select_arrays(sigma[:80], elements[:80], hashes[:80], descriptors[:80], alone,
                                                  seed=seed).selected)  # fmt: skip
        drawn.update("failed" if sigma[i] >= 3.0 else "candidate" for i in result.selected if samplers[i] == "random")
    # uniform over the 20 clusters: three quarters of the draws are frames above hi
    assert 0.6 < drawn["failed"] / sum(drawn.values()) < 0.9, drawn
    with pytest.raises(ValidationError, match="per_sampler_share"):
        SelectionConfig(sampler_strategy={"random": "random"})
    with pytest.raises(ValidationError):
        SelectionConfig(per_sampler_share=True, sampler_strategy={"random": "greedy"})
