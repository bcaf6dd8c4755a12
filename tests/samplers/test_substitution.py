from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.data import atomic_numbers

from pipeline.atoms import check_atoms
from pipeline.errors import ConfigError
from samplers.config import parse_config
from samplers.dynamics import MeltQuenchConfig
from samplers.model import ScoredCalculator
from samplers.substitution import (
    PROTOTYPES,
    SubstitutionConfig,
    choose_mapping,
    prototype_structure,
    sample_substitution,
    similarity_table,
)


def test_builtin_prototypes_are_sane_structures():
    expected = {
        "rocksalt-NaCl": "Cl4Na4",
        "perovskite-SrTiO3": "O3SrTi",
        "rutile-TiO2": "O4Ti2",
        "antifluorite-Li2O": "Li8O4",
        "fluorite-CaF2": "Ca4F8",
        "wurtzite-ZnO": "O2Zn2",
    }
    for name in PROTOTYPES:
        atoms = prototype_structure(name)
        check_atoms(atoms, name, min_covalent_ratio=0.6)
        if name in expected:
            assert atoms.get_chemical_formula() == expected[name]


def test_only_allowed_elements_and_the_mapping_is_recorded():
    allowed = ["K", "Rb", "Br", "I", "Ba", "Zr", "O", "Cu", "Ag"]
    config = SubstitutionConfig(elements=allowed, min_atoms=8)
    frames = list(sample_substitution(None, config, seed=3, count=24))
    assert len(frames) == 24
    for frame in frames:
        record = frame.info["provenance"]
        assert set(frame.get_chemical_symbols()) <= set(allowed)
        mapping = record["mapping"]
        seed = prototype_structure(record["seed_name"])
        assert set(mapping) == set(seed.get_chemical_symbols())
        assert any(old != new for old, new in mapping.items())  # something changed
        assert len(set(mapping.values())) == len(mapping)  # no two species merged
        # the frame is the seed (repeated) with every atom renamed by the mapping
        repeats = len(frame) // len(seed)
        renamed = [mapping[s] for s in seed.get_chemical_symbols()]
        assert sorted(frame.get_chemical_symbols()) == sorted(renamed * repeats)
        assert record["sampler"] == "substitute" and record["parent"] and record["stage"] == "substituted"
        check_atoms(frame, "substituted", min_covalent_ratio=config.min_covalent_ratio * 0.999)


def test_similar_mode_follows_pymatgen_substitution_probabilities():
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
    from pymatgen.core import Species

    # Sr must go (not allowed); Ti and O are kept (keep_probability 1), so Sr's new element
    # is drawn from {Ba, Ca, Cu} by P(new ion | Sr2+) as pymatgen computes it.
    config = SubstitutionConfig(elements=["Ti", "O", "Ba", "Ca", "Cu"], keep_probability=1.0)
    table = SubstitutionProbability()
    oxidation = {"Ba": [2], "Ca": [2], "Cu": [1, 2, 3]}
    weight = {
        b: max(table.cond_prob(Species(b, q), Species("Sr", 2)) for q in states) for b, states in oxidation.items()
    }
    total = sum(weight.values())
    expected = {b: w / total for b, w in weight.items()}
    rng = np.random.default_rng(0)
    draws = Counter(choose_mapping(["Sr", "Ti", "O"], config, rng)["Sr"] for _ in range(600))
    for element, p in expected.items():
        assert abs(draws[element] / 600 - p) < 4 * math.sqrt(p * (1 - p) / 600) + 0.01, (draws, expected)
    assert expected["Ba"] > expected["Cu"]  # chemistry: Ba2+ replaces Sr2+ readily
    # the table agrees with pymatgen's own number for a pair with one oxidation state each
    w = similarity_table()
    assert w[atomic_numbers["Sr"], atomic_numbers["Ba"]] == pytest.approx(weight["Ba"])


def test_random_mode_is_uniform_over_the_set():
    config = SubstitutionConfig(elements=["Li", "Na", "K", "Rb"], mode="random", keep_probability=0.0)
    rng = np.random.default_rng(1)
    draws = Counter(choose_mapping(["Cs"], config, rng)["Cs"] for _ in range(800))
    assert set(draws) == {"Li", "Na", "K", "Rb"}
    for count in draws.values():
        assert abs(count / 800 - 0.25) < 0.06


def test_same_seed_same_substitutions():
    config = SubstitutionConfig(elements=["Mg", "Ca", "O", "S"])
    a = list(sample_substitution(None, config, seed=7, count=5))
    b = list(sample_substitution(None, config, seed=7, count=5))
    c = list(sample_substitution(None, config, seed=8, count=5))
    for x, y in zip(a, b):
        assert np.array_equal(x.numbers, y.numbers) and np.array_equal(x.positions, y.positions)
        assert x.info["provenance"] == y.info["provenance"]
    assert any(
        x.get_chemical_formula() != z.get_chemical_formula() or not np.allclose(x.positions, z.positions)
        for x, z in zip(a, c)
    )


def test_relaxation_with_the_model_lowers_the_energy(ensemble):
    # EMT drives the relaxation (Cu/Ag/Au/Pd are EMT elements), the ensemble scores it
    calculator = ScoredCalculator(EMT(), ensemble)
    config = SubstitutionConfig(
        elements=["Ag", "Au", "Pd"], prototypes=["rocksalt-NaCl"], relax="relax", relax_steps=20, fmax=0.01
    )
    frames = list(sample_substitution(calculator, config, seed=0, count=1))
    assert len(frames) >= 2
    stages = {f.info["provenance"]["stage"] for f in frames}
    assert stages == {"relax"}
    energies = [f.info["model_energy"] for f in frames]
    assert energies[-1] < energies[0]
    for frame in frames:
        assert set(frame.get_chemical_symbols()) <= {"Ag", "Au", "Pd"}
        assert frame.info["provenance"]["mapping"] == frames[0].info["provenance"]["mapping"]
        assert "force_deviation" in frame.arrays
        # the energy deviation comes with the force deviation from the scorer
        assert frame.info["sigma_e"] == pytest.approx(frame.info["energy_deviation"] / len(frame))


def test_md_follow_up_uses_the_model(ensemble):
    md = MeltQuenchConfig(
        t_start=500, t_high=500, t_end=500, heat_steps=0, hold_steps=10, cool_steps=0, frame_interval=5, hi=None
    )
    config = SubstitutionConfig(elements=["Li", "Na", "F"], prototypes=["rocksalt-NaCl"], relax="md", md=md)
    frames = list(sample_substitution(ensemble, config, seed=1, count=2))
    assert len(frames) == 2 * 3  # steps 0, 5, 10 of two trajectories
    for frame in frames:
        record = frame.info["provenance"]
        assert record["sampler"] == "substitute" and record["stage"] == "md"
        assert set(frame.get_chemical_symbols()) <= {"Li", "Na", "F"}
        assert set(record["mapping"]) == {"Na", "Cl"}


def test_bad_substitution_input():
    with pytest.raises(ConfigError, match="element set is empty"):
        parse_config(SubstitutionConfig, "substitute", elements=[])
    with pytest.raises(ConfigError, match="unknown prototype 'spinel'"):
        parse_config(SubstitutionConfig, "substitute", elements=["Cu"], prototypes=["spinel"])
    config = SubstitutionConfig(elements=["Cu"], prototypes=["fcc-Cu"])
    with pytest.raises(ConfigError, match="no prototype can be changed"):
        list(sample_substitution(None, config, seed=0, count=1))
    with pytest.raises(ConfigError, match="leaves no element to substitute"):
        list(sample_substitution(None, config, seed=0, count=1, structures=[prototype_structure("fcc-Cu")]))
    with pytest.raises(ConfigError, match="needs a model"):
        list(sample_substitution(None, SubstitutionConfig(elements=["Ag"], relax="relax"), seed=0, count=1))
