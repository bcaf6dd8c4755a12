"""Shared fixtures of the potential tests: small models, random structures, and one
ensemble trained on EMT data (trained once per session, reused by several tests)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from ase import Atoms

from potential import ModelConfig, TrainConfig, build_ensemble, train_ensemble
from potential.reference_data import emt_frames

#: elements across the table, light to the heaviest supported
ELEMENTS = [1, 6, 8, 14, 26, 29, 47, 79, 83]


def small_config(**overrides) -> ModelConfig:
    values = dict(
        cutoff=4.0,
        scalar_channels=16,
        vector_channels=4,
        tensor_channels=3,
        layers=2,
        radial_hidden=12,
        readout_hidden=16,
    )
    values.update(overrides)
    return ModelConfig(**values)


def random_structure(n_atoms: int, pbc, seed: int, elements=ELEMENTS, min_distance: float = 1.7) -> Atoms:
    """Random multi-element structure; periodic ones in a skewed (triclinic) cell."""
    rng = np.random.default_rng(seed)
    length = (n_atoms * 14.0) ** (1 / 3)
    cell = np.diag([length, length * 1.1, length * 0.95]) + rng.uniform(-0.15, 0.15, (3, 3)) * length
    positions: list[np.ndarray] = []
    atoms = Atoms(cell=cell, pbc=pbc)
    while len(positions) < n_atoms:
        trial = rng.uniform(0, 1, 3) @ cell
        candidate = Atoms(positions=np.array(positions + [trial]), cell=cell, pbc=pbc)
        if (
            len(positions) == 0
            or candidate.get_distances(len(positions), range(len(positions)), mic=True).min() > min_distance
        ):
            positions.append(trial)
    atoms = Atoms(numbers=rng.choice(elements, n_atoms), positions=np.array(positions), cell=cell, pbc=pbc)
    return atoms


def untrained(dtype: str = "float64", n_members: int = 3, seed: int = 0, **overrides):
    """A random ensemble whose energies vary strongly with geometry (energy_scale 5), so
    that symmetry violations could not hide below round-off."""
    return build_ensemble(small_config(dtype=dtype, **overrides), n_members, seed=seed, energy_scale=5.0)


@contextmanager
def one_torch_thread():
    """These graphs are small: a second OpenMP thread buys nothing and, on a busy
    machine, its spin-waiting costs ten times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def emt_train_frames():
    return emt_frames(90, elements=("Cu", "Al", "Ni"), seed=0, max_atoms=16)


@pytest.fixture(scope="session")
def emt_test_frames():
    return emt_frames(30, elements=("Cu", "Al", "Ni"), seed=101, max_atoms=16)


@pytest.fixture(scope="session")
def trained(emt_train_frames, tmp_path_factory):
    """(TrainResult, checkpoint dir): 4 members on 90 EMT frames, CPU, ~1 min."""
    out = tmp_path_factory.mktemp("trained")
    config = TrainConfig(epochs=25, batch_size=4, learning_rate=5e-3, energy_weight=10.0, patience=30, progress=False)
    with one_torch_thread():  # session fixtures are set up before the module-scoped autouse one
        result = train_ensemble(emt_train_frames, config, out, model_config=small_config(), device="cpu")
    return result, out
