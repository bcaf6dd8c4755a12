"""Real models for the sampler tests: a small untrained ensemble (deterministic random
init, members that disagree) and ASE's EMT driving dynamics with the ensemble scoring."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

#: Small enough for many MD steps on a shared 2-core machine, still the real architecture.
TINY = dict(
    scalar_channels=8,
    vector_channels=4,
    tensor_channels=2,
    layers=1,
    radial_basis=4,
    radial_hidden=8,
    readout_hidden=8,
    cutoff=4.0,
)


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    # Two cores shared with other jobs: torch's thread pool oversubscribes them and small
    # models then run ~30x slower than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_tiny_ensemble(seed: int = 0):
    from potential import ModelConfig, build_ensemble

    return build_ensemble(ModelConfig(**TINY), 4, seed, device="cpu")


@pytest.fixture(scope="session")
def ensemble():
    """An untrained 4-member ensemble: a real model whose members disagree."""
    return build_tiny_ensemble(0)


@pytest.fixture
def emt_scored(ensemble):
    """EMT forces drive the dynamics; the ensemble scores the sampled frames."""
    from samplers.model import ScoredCalculator

    return ScoredCalculator(EMT(), ensemble)


@pytest.fixture
def copper32():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
