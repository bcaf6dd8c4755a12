"""One-pass ensemble evaluation and batching of many structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potential import build_ensemble
from potential.graph import collate
from tests.potential.conftest import random_structure, small_config, untrained


def test_one_pass_equals_members_evaluated_separately():
    ensemble = untrained("float64", n_members=4, seed=21)
    frames = [random_structure(7, True, seed=22), random_structure(9, False, seed=23)]
    together = ensemble.evaluate(frames)
    members = [ensemble.member(k).evaluate(frames) for k in range(4)]
    for b, result in enumerate(together):
        energies = np.array([m[b]["energy"] for m in members])
        forces = np.stack([m[b]["forces"] for m in members])
        np.testing.assert_allclose(result["member_energies"], energies, rtol=1e-12, atol=1e-12)
        assert result["energy"] == pytest.approx(energies.mean(), rel=1e-12)
        assert result["energy_deviation"] == pytest.approx(energies.std(), rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(result["forces"], forces.mean(0), atol=1e-12)
        sigma = np.sqrt(np.mean(np.sum((forces - forces.mean(0)) ** 2, axis=-1), axis=0))
        np.testing.assert_allclose(result["force_deviation"], sigma, atol=1e-12)
        assert np.all(result["force_deviation"] > 0)  # differently initialised members disagree
        if "stress" in result:
            np.testing.assert_allclose(result["stress"], np.mean([m[b]["stress"] for m in members], 0), atol=1e-12)
        descriptor = np.concatenate([m[b]["descriptor"] for m in members])
        np.testing.assert_allclose(result["descriptor"], descriptor, atol=1e-12)


def test_batched_evaluation_equals_one_by_one():
    ensemble = untrained("float32", n_members=2, seed=24)
    frames = [
        random_structure(n, pbc, seed=s) for s, (n, pbc) in enumerate([(5, True), (11, False), (8, True), (1, False)])
    ]
    batched = ensemble.evaluate(frames)
    chunked = ensemble.evaluate(frames, max_edges=50)  # forces several model calls
    for frame, a, c in zip(frames, batched, chunked):
        (single,) = ensemble.evaluate([frame])
        for other in (a, c):
            assert other["energy"] == pytest.approx(single["energy"], rel=1e-5, abs=1e-5)
            np.testing.assert_allclose(other["forces"], single["forces"], atol=1e-5)
            assert other["forces"].shape == (len(frame), 3)
            assert other["force_deviation"].shape == (len(frame),)
            assert other["descriptor"].shape == (ensemble.descriptor_size,)
            assert ("stress" in other) == bool(frame.pbc.all())


def test_descriptor_is_invariant_and_distinguishes_structures():
    ensemble = untrained("float64", n_members=2, seed=25)
    atoms = random_structure(8, True, seed=26)
    rotated = atoms.copy()
    rotated.rotate(73, "z", rotate_cell=True)
    other = random_structure(8, True, seed=27)
    a, b, c = (r["descriptor"] for r in ensemble.evaluate([atoms, rotated, other]))
    np.testing.assert_allclose(a, b, atol=1e-10)
    assert np.linalg.norm(a - c) > 1e-3


def test_members_differ_and_seeds_reproduce():
    a = build_ensemble(small_config(), 3, seed=1)
    b = build_ensemble(small_config(), 3, seed=1)
    c = build_ensemble(small_config(), 3, seed=2)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
        if x.abs().sum() > 0:  # biases start at zero
            assert not torch.equal(x, z), name
            assert not torch.equal(x[0], x[1]), name


def test_recurrent_init_copies_layer_weights():
    ensemble = build_ensemble(small_config(layers=3, recurrent_init=True), 2, seed=3)
    first, second = ensemble.layers[0].state_dict(), ensemble.layers[2].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    w = ensemble.radial_out.weight.view(2, ensemble.config.radial_hidden, 3, -1)
    assert torch.equal(w[:, :, 0], w[:, :, 2])


def test_collate_offsets_atoms_and_edges():
    ensemble = untrained("float32", n_members=1)
    frames = [random_structure(4, True, seed=30), random_structure(6, False, seed=31)]
    graphs = ensemble.graphs(frames)
    graph = collate(graphs, "cpu", torch.float32)
    assert graph.n_nodes == 10 and graph.n_structures == 2
    assert graph.atom_offsets.tolist() == [0, 4, 10]
    second = graph.edge_batch == 1
    assert int(graph.src[second].min()) >= 4 and int(graph.dst[second].min()) >= 4
    assert torch.equal(graph.batch[graph.src], graph.edge_batch)
