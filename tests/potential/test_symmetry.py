"""Symmetry, derivatives and periodic images of the model."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list
from scipy.spatial.transform import Rotation

from potential.graph import frame_graph
from tests.potential.conftest import random_structure, untrained

VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])


def full_stress(voigt):
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def transformed(atoms: Atoms, matrix: np.ndarray, shift: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    out.positions = atoms.positions @ matrix.T + shift
    return out


@pytest.fixture(scope="module")
def model32():
    return untrained("float32", n_members=3, seed=4)


@pytest.mark.parametrize("pbc", [True, False, (True, False, True)], ids=["periodic", "open", "slab"])
def test_invariance_and_equivariance(model32, pbc):
    atoms = random_structure(14, pbc, seed=1)
    ref = model32.evaluate([atoms])[0]
    assert np.abs(ref["forces"]).max() > 1e-2  # forces are not trivially zero
    scale_e = max(1.0, abs(ref["energy"]))
    scale_f = np.abs(ref["forces"]).max()
    rng = np.random.default_rng(0)
    rotation = Rotation.random(random_state=3).as_matrix()
    reflection = rotation @ np.diag([1.0, 1.0, -1.0])
    for matrix in (rotation, reflection, np.eye(3)):
        moved = transformed(atoms, matrix, rng.normal(0, 3.0, 3))
        out = model32.evaluate([moved])[0]
        assert abs(out["energy"] - ref["energy"]) < 2e-6 * scale_e * len(atoms)
        np.testing.assert_allclose(out["forces"], ref["forces"] @ matrix.T, atol=5e-6 * scale_f * len(atoms))
        np.testing.assert_allclose(out["force_deviation"], ref["force_deviation"], atol=5e-6 * scale_f * len(atoms))
        if "stress" in ref:
            expected = matrix @ full_stress(ref["stress"]) @ matrix.T
            scale_s = np.abs(ref["stress"]).max()
            np.testing.assert_allclose(full_stress(out["stress"]), expected, atol=1e-5 * scale_s * len(atoms))
    # permutation
    order = rng.permutation(len(atoms))
    out = model32.evaluate([atoms[order]])[0]
    assert abs(out["energy"] - ref["energy"]) < 2e-6 * scale_e * len(atoms)
    np.testing.assert_allclose(out["forces"], ref["forces"][order], atol=5e-6 * scale_f * len(atoms))


def test_wrapping_into_the_cell_changes_nothing(model32):
    atoms = random_structure(10, True, seed=2)
    atoms.positions += atoms.cell.array.sum(0) * 0.37  # many atoms now outside the cell
    wrapped = atoms.copy()
    wrapped.wrap()
    a, b = model32.evaluate([atoms, wrapped])
    assert abs(a["energy"] - b["energy"]) < 1e-5 * len(atoms)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4)


@pytest.mark.parametrize("pbc", [True, False], ids=["periodic", "open"])
def test_forces_match_finite_differences(pbc):
    model = untrained("float64", n_members=2, seed=5)
    atoms = random_structure(8, pbc, seed=6)
    forces = model.evaluate([atoms])[0]["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2), (5, 0)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        e_plus, e_minus = (r["energy"] for r in model.evaluate([plus, minus]))
        numeric = -(e_plus - e_minus) / (2 * h)
        assert numeric == pytest.approx(forces[atom, axis], rel=1e-6, abs=1e-8)


def test_stress_matches_strain_derivative():
    model = untrained("float64", n_members=2, seed=7)
    atoms = random_structure(9, True, seed=8)
    stress = full_stress(model.evaluate([atoms])[0]["stress"])
    volume = atoms.get_volume()
    h = 1e-6
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h / 2
            strain[b, a] += sign * h / 2  # symmetric strain
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            energies.append(model.evaluate([strained])[0]["energy"])
        numeric = (energies[0] - energies[1]) / (2 * h) / volume
        assert numeric == pytest.approx(stress[a, b], rel=1e-5, abs=1e-9)


def test_supercell_gives_the_same_energy_per_atom():
    model = untrained("float64", n_members=2, seed=9)
    atoms = random_structure(6, True, seed=10)
    supercell = atoms * (2, 2, 2)
    small, large = model.evaluate([atoms, supercell])
    assert large["energy"] / len(supercell) == pytest.approx(small["energy"] / len(atoms), rel=1e-10)
    np.testing.assert_allclose(large["forces"], np.tile(small["forces"], (8, 1)), atol=1e-10)
    np.testing.assert_allclose(large["stress"], small["stress"], atol=1e-12)


def test_cell_shorter_than_cutoff_matches_conventional_cell():
    """fcc primitive cell (vectors 2.55 Å, cutoff 4 Å: atoms see many images of themselves)."""
    model = untrained("float64", n_members=2, seed=11)
    primitive = bulk("Cu", "fcc", a=3.61)
    conventional = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    p, c = model.evaluate([primitive, conventional])
    assert p["energy"] == pytest.approx(c["energy"] / len(conventional), rel=1e-10)
    np.testing.assert_allclose(p["stress"], c["stress"], atol=1e-10)
    graph = frame_graph(primitive, model.config.cutoff)
    i, d = ase_neighbor_list("id", primitive, model.config.cutoff)
    assert len(graph.src) == len(i) == 18  # fcc shells 12 at 2.55 Å, 6 at 3.61 Å (next: 4.42 Å)


def test_mixed_pbc_neighbours_match_ase():
    atoms = random_structure(12, (True, False, True), seed=12)
    atoms.positions[:, 1] += 2.0
    graph = frame_graph(atoms, 4.0)
    i, j, d = ase_neighbor_list("ijd", atoms, 4.0)
    ours = sorted(zip(graph.src, graph.dst, np.round(np.linalg.norm(graph.edge_vectors, axis=1), 9)))
    theirs = sorted(zip(i, j, np.round(d, 9)))
    assert ours == theirs


def test_atom_at_the_cell_boundary():
    """An atom sitting exactly on a face is the same whether written at x=0 or x=L."""
    model = untrained("float64", n_members=2, seed=13)
    atoms = random_structure(8, True, seed=14)
    scaled = atoms.get_scaled_positions()
    scaled[0] = [0.0, 0.5, 1e-12]
    atoms.set_scaled_positions(scaled)
    other = atoms.copy()
    positions = other.positions
    positions[0] += other.cell.array[0] + other.cell.array[2]
    other.positions = positions
    a, b = model.evaluate([atoms, other])
    assert a["energy"] == pytest.approx(b["energy"], rel=1e-12)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-10)


def test_isolated_atoms_and_far_apart_fragments():
    model = untrained("float64", n_members=2, seed=15)
    single = Atoms("Cu", positions=[[0, 0, 0]])
    pair_far = Atoms("CuCu", positions=[[0, 0, 0], [50.0, 0, 0]])
    one, two = model.evaluate([single, pair_far])
    assert two["energy"] == pytest.approx(2 * one["energy"], rel=1e-12)
    assert np.all(one["forces"] == 0) and np.all(two["forces"] == 0)
    assert "stress" not in one
