from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from pipeline.errors import ConfigError
from samplers.config import parse_config
from samplers.random_structures import RandomStructureConfig, random_structures, sample_random

PROVENANCE_KEYS = {"sampler", "params", "seed", "parent", "temperature", "step"}


def closest_ratio(atoms) -> float:
    """Smallest d_ij / (r_i + r_j) by ASE's own neighbour list (independent of the packer and vesin)."""
    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, float(2 * radii.max()) + 0.1, self_interaction=False)
    return float((d / (radii[i] + radii[j])).min()) if len(d) else np.inf


def test_minimum_distances_hold_for_cells_and_clusters():
    for kind in ("periodic", "cluster"):
        config = RandomStructureConfig(
            elements=["H", "C", "O", "Fe", "Bi"], min_atoms=2, max_atoms=40, kind=kind, min_distance_fraction=0.8
        )
        frames = random_structures(config, seed=3, count=30)
        for frame in frames:
            assert closest_ratio(frame) >= 0.8 * (1 - 1e-9)
            assert frame.pbc.all() == (kind == "periodic")
    # a single atom in a small periodic cell must clear its own images too
    lone = random_structures(RandomStructureConfig(elements=["Bi"], min_atoms=1, max_atoms=1), seed=0, count=5)
    for frame in lone:
        assert frame.cell.lengths().min() >= 0.75 * 2 * covalent_radii[83]


def test_compositions_over_many_draws():
    elements = ["H", "O", "Al", "Cu", "Au"]
    config = RandomStructureConfig(elements=elements, min_atoms=3, max_atoms=6, max_species=3)
    frames = random_structures(config, seed=11, count=300)
    present = Counter()
    for frame in frames:
        symbols = set(frame.get_chemical_symbols())
        assert symbols <= set(elements)
        assert 1 <= len(symbols) <= 3
        assert 3 <= len(frame) <= 6
        present.update(symbols)
    # species count uniform in 1..3 (mean 2) out of 5 elements: each element is present in
    # 2/5 of the structures; binomial std over 300 draws is 0.028
    for element in elements:
        assert abs(present[element] / len(frames) - 0.4) < 0.12, present


def test_density_follows_volume_per_atom():
    config = RandomStructureConfig(elements=["Cu", "Ni"], min_atoms=8, max_atoms=16, volume_per_atom=14.0)
    for frame in random_structures(config, seed=0, count=20):
        per_atom = frame.get_volume() / len(frame)
        assert 14.0 * (1 - config.volume_jitter) - 1e-9 <= per_atom <= 14.0 * (1 + config.volume_jitter) + 1e-9


def test_density_in_grams_per_cubic_centimetre():
    # Cu at 6 g/cm^3: 63.546 u x 1.66054e-24 g/u / 6 g/cm^3 = 17.59 Å^3 per atom
    config = RandomStructureConfig(elements=["Cu"], min_atoms=8, max_atoms=8, density=6.0, volume_jitter=0.0)
    for frame in random_structures(config, seed=0, count=3):
        assert frame.get_volume() / len(frame) == pytest.approx(63.546 * 1.66054e-24 * 1e24 / 6.0, rel=1e-4)
    with pytest.raises(ConfigError, match="not both"):
        parse_config(RandomStructureConfig, "random", elements=["Cu"], density=5.0, volume_per_atom=12.0)


def test_clusters_are_padded_with_vacuum():
    config = RandomStructureConfig(elements=["Pt"], min_atoms=5, max_atoms=12, kind="cluster", vacuum=7.0)
    for frame in random_structures(config, seed=5, count=5):
        lo, hi = frame.positions.min(0), frame.positions.max(0)
        assert np.allclose(lo, 7.0) and np.allclose(frame.cell.lengths() - hi, 7.0)


def test_same_seed_same_frames_and_provenance_on_every_frame():
    config = RandomStructureConfig(elements=["Si", "O"], min_atoms=4, max_atoms=12, kind="mixed")
    a = random_structures(config, seed=42, count=6)
    b = random_structures(config, seed=42, count=8)
    c = random_structures(config, seed=43, count=6)
    for x, y in zip(a, b):  # more structures extend the list without changing the first
        assert np.array_equal(x.numbers, y.numbers) and np.array_equal(x.positions, y.positions)
    assert any(len(x) != len(z) or not np.allclose(x.positions, z.positions) for x, z in zip(a, c))
    for index, frame in enumerate(b):
        record = frame.info["provenance"]
        assert PROVENANCE_KEYS <= set(record)
        assert record["sampler"] == "random" and record["seed"] == 42 and record["index"] == index
        assert record["parent"] is None and record["params"]["elements"] == ["Si", "O"]
        assert frame.calc is None


def test_scored_by_a_real_ensemble(ensemble):
    config = RandomStructureConfig(elements=["C", "N", "Zn"], min_atoms=4, max_atoms=10)
    frames = list(sample_random(ensemble, config, seed=1, count=5, batch_size=2))
    again = list(sample_random(ensemble, config, seed=1, count=5))
    for frame, other in zip(frames, again):
        deviation = frame.arrays["force_deviation"]
        assert deviation.shape == (len(frame),) and np.all(deviation >= 0)
        assert frame.info["sigma_f"] == pytest.approx(deviation.max())
        assert frame.info["descriptor"].ndim == 1
        assert frame.info["sigma_f"] == pytest.approx(other.info["sigma_f"], rel=1e-5)
        assert frame.info["provenance"]["sampler"] == "random"
    unscored = list(sample_random(None, config, seed=1, count=2))
    assert "force_deviation" not in unscored[0].arrays and "sigma_f" not in unscored[0].info


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"elements": []}, "element set is empty"),
        ({"elements": ["Cu", "Xx"]}, "unknown element symbol 'Xx'"),
        ({"elements": ["Po"]}, "beyond Bi"),
        ({"elements": ["Cu"], "min_atoms": 9, "max_atoms": 3}, "min_atoms (9) exceeds max_atoms (3)"),
        ({"elements": ["Cu"], "colour": "red"}, "unknown field"),
    ],
)
def test_bad_configuration_is_one_clear_line(values, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(RandomStructureConfig, "random", **values)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_impossible_density_is_reported():
    # covalent spheres shrunk to 0.9 still fill more than close packing allows
    config = RandomStructureConfig(
        elements=["Cu"], min_atoms=8, max_atoms=8, packing_fraction=1.0, min_distance_fraction=0.95
    )
    with pytest.raises(ConfigError, match="impossible density"):
        random_structures(config, seed=0, count=1)
    # not provably impossible, but random insertion cannot reach it: gives up after the attempts
    config = RandomStructureConfig(
        elements=["Cu"], min_atoms=16, max_atoms=16, packing_fraction=0.9, max_attempts=3, insertion_tries=50
    )
    with pytest.raises(ConfigError) as info:
        random_structures(config, seed=0, count=1)
    assert "could not pack Cu16" in str(info.value) and "after 3 attempts" in str(info.value)
