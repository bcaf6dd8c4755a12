"""Reuse of built graphs and collated batches, and chunking of large evaluations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from potential import TrainConfig
from potential.model import EnsemblePotential
from potential.train import _prepare, _validate, _validation_batches
from tests.potential.conftest import random_structure, untrained


def test_cached_validation_batches_give_the_metrics_of_a_fresh_evaluation(emt_train_frames):
    """Validation batches are collated once and reused every epoch: after the weights
    change they must give what freshly built graphs give, and what ``evaluate`` (an
    independent path through the model) says about the same frames."""
    frames = emt_train_frames[:9]
    model = untrained("float64", n_members=2, seed=40, cutoff=5.0)
    config = TrainConfig()

    def samples():
        prepared = _prepare(frames, model.config.cutoff)
        for s in prepared:  # element references are zero: the residual is the energy
            s.residual_energy = s.labels.energy
        return prepared

    cached = _validation_batches(samples(), "cpu", model.dtype, 4)
    before = _validate(model, config, cached, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    again = _validate(model, config, cached, "cpu")
    fresh = _validate(model, config, _validation_batches(samples(), "cpu", model.dtype, 4), "cpu")
    assert again["val_force_mae"] != pytest.approx(before["val_force_mae"], rel=1e-3)
    for key, value in fresh.items():
        if isinstance(value, dict):
            assert again[key].keys() == value.keys()
            for element in value:
                assert again[key][element] == pytest.approx(value[element], rel=1e-12)
        else:
            assert again[key] == pytest.approx(value, rel=1e-12)

    results = model.evaluate(frames)
    errors = np.concatenate([np.abs(r["forces"] - a.get_forces()) for r, a in zip(results, frames)])
    assert again["val_force_mae"] == pytest.approx(errors.mean(), rel=1e-10)
    numbers = np.concatenate([a.numbers for a in frames])
    for symbol, z in (("Cu", 29), ("Al", 13), ("Ni", 28)):
        if (numbers == z).any():
            assert again["val_force_mae_per_element"][symbol] == pytest.approx(errors[numbers == z].mean(), rel=1e-10)
    energy_mae = np.mean([abs(r["energy"] - a.get_potential_energy()) / len(a) for r, a in zip(results, frames)])
    assert again["val_energy_mae_per_atom"] == pytest.approx(energy_mae, rel=1e-10)
    sigma = np.concatenate([r["force_deviation"] for r in results]).mean()
    assert again["val_mean_force_deviation"] == pytest.approx(sigma, rel=1e-10)
    stressed = [(r["stress"], a.get_stress()) for r, a in zip(results, frames) if "stress" in a.calc.results]
    if stressed:
        assert again["val_stress_mae"] == pytest.approx(np.mean([np.abs(p - t) for p, t in stressed]), rel=1e-10)


def test_default_max_edges_chunks_a_large_batch_like_one_call(monkeypatch):
    ensemble = untrained("float32", n_members=2, seed=41)
    frames = [
        random_structure(n, pbc, seed=50 + i)
        for i, (n, pbc) in enumerate([(9, True), (12, False), (7, True), (10, True)])
    ]
    calls = []
    original = EnsemblePotential.evaluate_graphs

    def counting(self, graphs, stress=None, members=False):
        calls.append((len(graphs), sum(len(g.src) for g in graphs)))
        return original(self, graphs, stress, members)

    monkeypatch.setattr(EnsemblePotential, "evaluate_graphs", counting)
    whole = ensemble.evaluate(frames, max_edges=10**9)
    assert len(calls) == 1
    total_edges = calls.pop()[1]

    # the default follows the memory budget and the model's bytes per edge
    assert ensemble.default_max_edges() * ensemble.bytes_per_edge() <= ensemble.EVALUATE_MEMORY_BYTES
    assert ensemble.default_max_edges(memory_bytes=2 * ensemble.bytes_per_edge()) == 2
    budget = ensemble.bytes_per_edge() * (total_edges // 2)  # room for about half the edges
    monkeypatch.setattr(EnsemblePotential, "EVALUATE_MEMORY_BYTES", budget)
    chunked = ensemble.evaluate(frames)
    assert len(calls) >= 2
    assert all(edges <= total_edges // 2 or n_frames == 1 for n_frames, edges in calls)
    assert sum(edges for _, edges in calls) == total_edges
    for a, b in zip(whole, chunked):
        assert b["energy"] == pytest.approx(a["energy"], rel=1e-5, abs=1e-5)
        np.testing.assert_allclose(b["forces"], a["forces"], atol=1e-5)
        np.testing.assert_allclose(b["force_deviation"], a["force_deviation"], atol=1e-5)
        assert ("stress" in a) == ("stress" in b)
        if "stress" in a:
            np.testing.assert_allclose(b["stress"], a["stress"], atol=1e-5)

    with pytest.raises(ConfigError, match="max_edges"):
        ensemble.evaluate(frames, max_edges=0)


def test_a_frame_beyond_the_budget_runs_its_members_in_groups(monkeypatch):
    ensemble = untrained("float64", n_members=4, seed=42)
    frames = [random_structure(10, True, seed=60)]
    together = ensemble.evaluate(frames)[0]
    edges = len(ensemble.graphs(frames)[0].src)
    groups = []
    original = EnsemblePotential.members

    def spy(self, indices):
        groups.append(list(indices))
        return original(self, indices)

    monkeypatch.setattr(EnsemblePotential, "members", spy)
    # memory for two members on this frame, not four
    monkeypatch.setattr(EnsemblePotential, "EVALUATE_MEMORY_BYTES", ensemble.bytes_per_edge() // 4 * edges * 2)
    grouped = ensemble.evaluate(frames)[0]
    assert groups == [[0, 1], [2, 3]]
    for key in ("energy", "energy_deviation"):
        assert grouped[key] == pytest.approx(together[key], rel=1e-12)
    for key in ("member_energies", "forces", "force_deviation", "stress", "descriptor"):
        np.testing.assert_allclose(grouped[key], together[key], rtol=1e-12, atol=1e-14)
