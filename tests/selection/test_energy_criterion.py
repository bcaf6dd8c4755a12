"""The energy criterion (σ_E = ensemble energy std per atom): frames σ_F cannot see."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from pydantic import ValidationError

from pipeline.documents import Frame, frame_fields
from pipeline.errors import ConfigError
from pipeline.selection import (
    SelectionConfig,
    classify,
    frame_sigma_e,
    resolve_thresholds,
    select_arrays,
    select_frames,
    selection_config,
    uncertainty_score,
)
from samplers.frames import attach_scores

ENERGY = dict(lo=0.05, hi=0.5, e_lo=0.005, e_hi=0.1)


def atom(symbol: str = "Cu", x: float = 0.0, energy_deviation: float | None = None) -> Atoms:
    """An isolated atom: its force deviation is 0 by construction, whatever the model."""
    atoms = Atoms(symbol, positions=[[6.0 + x, 6.0, 6.0]], cell=[12, 12, 12], pbc=False)
    atoms.arrays["force_deviation"] = np.zeros(1)
    if energy_deviation is not None:
        atoms.info["energy_deviation"] = energy_deviation
    return atoms


def plain(n: int) -> tuple[list[list[str]], list[str], np.ndarray]:
    return [["Cu"]] * n, [str(i) for i in range(n)], np.arange(n, dtype=float)[:, None]


# --------------------------------------------------------------------------- classes


def test_zero_force_deviation_with_a_large_energy_deviation_is_a_candidate():
    sigma_f = [0.0, 0.0, 0.01, 0.2]
    sigma_e = [0.02, 0.001, np.nan, 0.001]
    on = classify(sigma_f, 0.05, 0.5, sigma_e=sigma_e, e_lo=0.005, e_hi=0.1)
    assert list(on) == ["candidate", "accurate", "accurate", "candidate"]
    # the same frames without the energy criterion: σ_F alone calls the first one accurate
    assert list(classify(sigma_f, 0.05, 0.5, sigma_e=sigma_e)) == ["accurate", "accurate", "accurate", "candidate"]
    result = select_arrays(sigma_f, *plain(4), SelectionConfig(**ENERGY), sigma_e=sigma_e)
    assert [d.cls for d in result.decisions] == ["candidate", "accurate", "accurate", "candidate"]
    assert sorted(result.selected) == [0, 3]
    off = select_arrays(sigma_f, *plain(4), SelectionConfig(lo=0.05, hi=0.5), sigma_e=sigma_e)
    assert [d.cls for d in off.decisions] == ["accurate", "accurate", "accurate", "candidate"]
    assert off.selected == [3]


def test_energy_deviation_at_or_above_e_hi_is_failed():
    sigma_f = [0.0, 0.0, 0.0, 0.3, 0.6]
    sigma_e = [0.0049999, 0.005, 0.1, 0.2, 0.0]
    classes = classify(sigma_f, 0.05, 0.5, sigma_e=sigma_e, e_lo=0.005, e_hi=0.1)
    assert list(classes) == ["accurate", "candidate", "failed", "failed", "failed"]
    assert list(classify([0.0], 0.05, 0.5, sigma_e=[np.inf], e_lo=0.005, e_hi=0.1)) == ["failed"]


def test_a_missing_score_does_not_vote():
    sigma_f = [np.nan, np.nan, np.nan, 0.01]
    sigma_e = [np.nan, 0.001, 0.02, np.nan]
    classes = classify(sigma_f, 0.05, 0.5, sigma_e=sigma_e, e_lo=0.005, e_hi=0.1)
    assert list(classes) == ["unscored", "accurate", "candidate", "accurate"]
    # with the criterion off σ_E is ignored altogether: no σ_F means unscored
    assert list(classify(sigma_f, 0.05, 0.5, sigma_e=sigma_e)) == ["unscored"] * 3 + ["accurate"]


def test_energy_window_validation():
    assert SelectionConfig().e_lo is None and SelectionConfig().e_hi is None  # off by default
    with pytest.raises(ConfigError, match="e_lo < e_hi") as info:
        selection_config(e_lo=0.1, e_hi=0.1)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="e_lo < e_hi"):
        selection_config(e_lo=0.2, e_hi=0.1)
    for bad in (dict(e_lo=0.0, e_hi=0.1), dict(e_lo=-0.01, e_hi=0.1), dict(e_lo=0.01, e_hi=-1.0)):
        with pytest.raises(ValidationError):
            SelectionConfig(**bad)
    with pytest.raises(ConfigError, match="both or neither"):
        selection_config(e_lo=0.01)
    with pytest.raises(ConfigError, match="both or neither"):
        selection_config(e_hi=0.1)
    with pytest.raises(ConfigError, match="e_lo < e_hi"):
        classify([0.1], 0.05, 0.5, sigma_e=[0.1], e_lo=0.2, e_hi=0.1)
    with pytest.raises(ConfigError, match="both or neither"):
        classify([0.1], 0.05, 0.5, sigma_e=[0.1], e_lo=0.2)
    assert SelectionConfig(**ENERGY).e_hi == 0.1


def test_adaptive_thresholds_keep_the_energy_window():
    config = SelectionConfig(adaptive=True, min_history=10, e_lo=0.002, e_hi=0.05)
    t = resolve_thresholds(config, np.linspace(0.0, 1.0, 101))
    assert t.adaptive and (t.e_lo, t.e_hi) == (0.002, 0.05)
    assert resolve_thresholds(SelectionConfig()).e_lo is None


# --------------------------------------------------------------------------- ranking


def test_candidates_are_ranked_by_the_larger_normalised_deviation():
    sigma_f = np.array([0.1, 0.0, 0.3, np.nan])  # 2x, 0x, 6x lo
    sigma_e = np.array([0.0, 0.02, np.nan, np.nan])  # 0x, 4x e_lo
    score = uncertainty_score(sigma_f, 0.05, sigma_e=sigma_e, e_lo=0.005)
    np.testing.assert_allclose(score, [2.0, 4.0, 6.0, np.inf])
    np.testing.assert_allclose(uncertainty_score(sigma_f, 0.05, sigma_e=sigma_e), [2.0, 0.0, 6.0, np.inf])
    # the first farthest-point pick is the most uncertain frame: here the σ_F = 0 one
    result = select_arrays([0.1, 0.0], *plain(2), SelectionConfig(**ENERGY, max_selected=1), sigma_e=[0.0, 0.02])
    assert result.selected == [1] and result.decisions[0].reason == "over-cap"
    # of two near-duplicates the one with the larger normalised deviation is kept
    groups, hashes, _ = plain(2)
    same = np.zeros((2, 1))
    near = select_arrays(
        [0.1, 0.0], groups, hashes, same, SelectionConfig(**ENERGY, near_duplicate_distance=0.5), sigma_e=[0.0, 0.02]
    )
    assert near.selected == [1] and near.decisions[0].reason == "near-duplicate"


# --------------------------------------------------------------------------- records


def test_sigma_e_on_frames_decisions_and_the_record():
    frames = [atom(x=0.0, energy_deviation=0.02), atom("Ni", x=1.0), atom(x=2.0)]
    frames[2].info["sigma_e"] = 0.5  # explicit per-atom value wins over energy_deviation
    frames[2].info["energy_deviation"] = 0.0
    assert frame_sigma_e(frames[0]) == pytest.approx(0.02)
    assert np.isnan(frame_sigma_e(frames[1]))
    two = Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]])
    two.info["energy_deviation"] = 0.04
    assert frame_sigma_e(two) == pytest.approx(0.02)  # per atom
    result = select_frames(frames, SelectionConfig(**ENERGY))
    assert [d.cls for d in result.decisions] == ["candidate", "accurate", "failed"]
    assert [d.sigma_e for d in result.decisions] == [pytest.approx(0.02), None, pytest.approx(0.5)]
    record = json.loads(json.dumps(result.to_dict()))
    assert record["thresholds"] == {"lo": 0.05, "hi": 0.5, "adaptive": False, "e_lo": 0.005, "e_hi": 0.1}
    assert record["decisions"][0]["sigma_e"] == pytest.approx(0.02) and record["decisions"][1]["sigma_e"] is None
    assert result.e_lo == 0.005 and result.e_hi == 0.1
    (picked,) = result.picked_frames(frames)
    assert picked.info["sigma_e"] == pytest.approx(0.02)


def test_attach_scores_sets_sigma_e_per_atom():
    frame = Atoms("Cu4", positions=np.arange(12.0).reshape(4, 3) * 1.5)
    attach_scores(frame, {"force_deviation": np.zeros(4), "energy_deviation": 0.2})
    assert frame.info["energy_deviation"] == pytest.approx(0.2)
    assert frame.info["sigma_e"] == pytest.approx(0.05)
    unscored = attach_scores(Atoms("Cu"), {"force_deviation": np.zeros(1)})
    assert "sigma_e" not in unscored.info


def test_the_stored_frame_keeps_sigma_e():
    atoms = atom()
    assert frame_fields(atoms, source="s")["sigma_e"] is None
    assert frame_fields(atoms, source="s", sigma_e=float("nan"))["sigma_e"] is None
    assert frame_fields(atoms, source="s", sigma_e=np.float32(0.25))["sigma_e"] == pytest.approx(0.25)
    back = Frame.from_atoms(atoms, source="s", sigma_f=0.0, sigma_e=0.25).to_atoms()
    assert back.info["sigma_e"] == pytest.approx(0.25) and back.info["sigma_f"] == 0.0
    assert "sigma_e" not in Frame.from_atoms(atoms, source="s").to_atoms().info


def test_the_explored_archive_keeps_sigma_e():
    from pipeline.frame_archive import pack_frames, unpack_frames

    frames = [atom(energy_deviation=0.02), atom()]
    attach_scores(frames[1], {"force_deviation": np.zeros(1), "energy_deviation": 0.03})
    back = unpack_frames(pack_frames(frames))
    assert "sigma_e" not in back[0].info  # only energy_deviation: σ_E is derived from it
    assert frame_sigma_e(back[0]) == pytest.approx(0.02)
    assert back[1].info["sigma_e"] == pytest.approx(0.03)


# --------------------------------------------------------------------------- the real ensemble


def test_an_untrained_ensemble_disagrees_on_energies_that_forces_cannot_show():
    """An isolated atom and a perfect fcc crystal have zero forces in every member (no
    neighbours; inversion symmetry), so σ_F = 0, yet the members' energies differ."""
    from potential import build_ensemble
    from samplers.frames import make_frame, provenance
    from samplers.model import score_frames
    from tests.potential.conftest import one_torch_thread, small_config

    structures = [Atoms("Cu", positions=[[5, 5, 5]], cell=[10] * 3, pbc=False), bulk("Cu", "fcc", a=3.6, cubic=True)]
    with one_torch_thread():
        ensemble = build_ensemble(small_config(dtype="float64"), 3, seed=0)
        results = score_frames(ensemble, structures)
    frames = [make_frame(s, provenance("test", {}, 0), r) for s, r in zip(structures, results)]
    for frame, result in zip(frames, results):
        assert frame.info["sigma_f"] < 1e-9
        assert frame.info["sigma_e"] == pytest.approx(result["energy_deviation"] / len(frame))
        assert frame.info["sigma_e"] > 0.005
    off = select_frames(frames, SelectionConfig(lo=0.05, hi=0.5))
    assert [d.cls for d in off.decisions] == ["accurate", "accurate"] and off.selected == []
    on = select_frames(frames, SelectionConfig(lo=0.05, hi=0.5, e_lo=0.005, e_hi=1.0))
    assert [d.cls for d in on.decisions] == ["candidate", "candidate"]
    assert sorted(on.selected) == [0, 1]
    tight = select_frames(frames, SelectionConfig(lo=0.05, hi=0.5, e_lo=0.001, e_hi=0.005))
    assert [d.cls for d in tight.decisions] == ["failed", "failed"]
