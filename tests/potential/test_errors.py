"""Bad input gives one-line SelfplayError subclasses, never NaNs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline.errors import ConfigError, DataFileError, InvalidStructure
from potential import ModelConfig, TrainConfig, build_ensemble, load_ensemble, save_ensemble, train_ensemble
from potential.calculator import EnsembleCalculator
from potential.model import resolve_device
from tests.potential.conftest import small_config


@pytest.fixture(scope="module")
def ensemble():
    return build_ensemble(small_config(), 2, seed=0)


@pytest.mark.parametrize(
    "atoms, message",
    [
        (Atoms(numbers=[84, 1], positions=[[0, 0, 0], [1, 0, 0]]), "atomic number 84 is outside"),
        (Atoms(numbers=[0, 1], positions=[[0, 0, 0], [1, 0, 0]]), "atomic number 0 is outside"),
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "NaN"),
        (Atoms(), "no atoms"),
        (Atoms("Cu2", positions=[[0, 0, 0], [0.01, 0, 0]]), "overlap"),
        (
            Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True),
            "zero volume",
        ),
    ],
    ids=["Z=84", "Z=0", "nan", "empty", "overlap", "flat-cell"],
)
def test_bad_structures_raise_invalid_structure(ensemble, atoms, message):
    with pytest.raises(InvalidStructure, match=message) as info:
        ensemble.evaluate([Atoms("H", positions=[[0, 0, 0]]), atoms])
    assert "frame 1" in str(info.value) and "\n" not in str(info.value)
    atoms.calc = EnsembleCalculator(ensemble)
    with pytest.raises(InvalidStructure):
        atoms.get_potential_energy()


def test_overlap_through_a_periodic_image(ensemble):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.99, 0, 0]], cell=[3.0, 3.0, 3.0], pbc=True)
    with pytest.raises(InvalidStructure, match="overlap"):
        ensemble.evaluate([atoms])


def test_every_supported_element_is_accepted(ensemble):
    atoms = Atoms(numbers=np.arange(1, 84), positions=np.arange(83)[:, None] * [2.5, 0, 0])
    result = ensemble.evaluate([atoms])[0]
    assert np.all(np.isfinite(result["forces"])) and np.isfinite(result["energy"])


def test_training_frames_need_labels():
    unlabelled = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    with pytest.raises(InvalidStructure, match="training frame 0: no energy and forces in the labels"):
        train_ensemble([unlabelled], TrainConfig(epochs=1, progress=False), model_config=small_config())
    partial = unlabelled.copy()
    partial.calc = SinglePointCalculator(partial, energy=1.0)
    with pytest.raises(InvalidStructure, match="no forces in the labels"):
        train_ensemble([partial], TrainConfig(epochs=1, progress=False), model_config=small_config())
    with pytest.raises(DataFileError, match="no training frames"):
        train_ensemble([], TrainConfig(epochs=1, progress=False))


def test_configs_forbid_unknown_and_bad_values():
    with pytest.raises(ValueError):
        ModelConfig(channels=3)
    with pytest.raises(ValueError):
        ModelConfig(cutoff=-1)
    with pytest.raises(ValueError):
        TrainConfig(energy_weight=0, force_weight=0)
    with pytest.raises(ConfigError):
        build_ensemble(small_config(), 0)
    with pytest.raises(InvalidStructure):
        build_ensemble(small_config(), 2, element_refs={90: -1.0})


def test_bad_checkpoints_raise_data_file_error(ensemble, tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        load_ensemble(tmp_path / "nowhere")
    directory = save_ensemble(ensemble, tmp_path / "model")
    meta = json.loads((directory / "model.json").read_text())
    meta["version"] = 99
    (directory / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataFileError, match="version 99"):
        load_ensemble(directory)
    meta["version"] = 1
    meta["n_members"] = 3  # disagrees with the stored weights
    (directory / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataFileError, match="do not match"):
        load_ensemble(directory)
    meta["n_members"] = 2
    (directory / "model.json").write_text(json.dumps(meta))
    (directory / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataFileError, match="unreadable weights"):
        load_ensemble(directory)


def test_unavailable_cuda_is_a_config_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda")
