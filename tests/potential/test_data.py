"""Reading training data: extxyz, the ragged HDF5 layout, label extraction."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from ase.io import write

from pipeline.errors import DataFileError
from potential.data import fit_element_refs, frame_labels, read_frames
from potential.reference_data import emt_frames


@pytest.fixture(scope="module")
def frames():
    return emt_frames(6, seed=7, max_atoms=16)


def test_extxyz_round_trip(frames, tmp_path):
    path = tmp_path / "frames.extxyz"
    write(path, frames, format="extxyz")
    back = read_frames(path)
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        la, lb = frame_labels(a), frame_labels(b)
        assert la.energy == pytest.approx(lb.energy)
        np.testing.assert_allclose(la.forces, lb.forces, atol=1e-6)
        assert (la.stress is None) == (lb.stress is None)


def test_hdf5_ragged_layout(frames, tmp_path):
    path = tmp_path / "frames.h5"
    sizes = [len(a) for a in frames]
    stress = np.full((len(frames), 6), np.nan)
    for i, a in enumerate(frames):
        if a.pbc.all():
            stress[i] = a.get_stress()
    with h5py.File(path, "w") as f:
        f["numbers"] = np.concatenate([a.numbers for a in frames]).astype(np.uint8)
        f["positions"] = np.concatenate([a.positions for a in frames])
        f["forces"] = np.concatenate([a.get_forces() for a in frames])
        f["energy"] = [a.get_potential_energy() for a in frames]
        f["cell"] = np.stack([a.cell.array for a in frames])
        f["pbc"] = np.stack([a.pbc for a in frames])
        f["offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        f["stress"] = stress
    back = read_frames(path)
    assert [len(a) for a in back] == sizes
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.get_forces(), b.get_forces())
        assert frame_labels(a).energy == pytest.approx(frame_labels(b).energy)
        assert (frame_labels(b).stress is None) == (not a.pbc.all())


def test_hdf5_with_inconsistent_offsets(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["numbers"] = np.array([29, 29])
        f["positions"] = np.zeros((2, 3))
        f["forces"] = np.zeros((2, 3))
        f["energy"] = [1.0]
        f["offsets"] = np.array([0, 3])
    with pytest.raises(DataFileError, match="offsets"):
        read_frames(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        read_frames(tmp_path / "missing.xyz")
    bad = tmp_path / "bad.xyz"
    bad.write_text("this is not\nan xyz file\n")
    with pytest.raises(DataFileError):
        read_frames(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no .xyz"):
        read_frames(tmp_path / "empty")


def test_element_references_by_least_squares():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 8: -2041.0, 79: -19.3}
    numbers, energies = [], []
    for _ in range(20):
        zs = rng.choice(list(true), rng.integers(2, 9))
        numbers.append(zs)
        energies.append(sum(true[int(z)] for z in zs))
    refs = fit_element_refs(numbers, np.array(energies), 84)
    for z, value in true.items():
        assert refs[z] == pytest.approx(value, rel=1e-9)
    assert refs[2] == 0.0


def test_hdf5_is_recognised_by_its_content_not_its_name(frames, tmp_path):
    """The one reader (pipeline.frames_io) looks at the magic bytes: an HDF5 file named
    .dat is read as HDF5."""
    from pipeline.frames_io import is_hdf5

    path = tmp_path / "frames.dat"
    sizes = [len(a) for a in frames]
    with h5py.File(path, "w") as f:
        f["numbers"] = np.concatenate([a.numbers for a in frames]).astype(np.uint8)
        f["positions"] = np.concatenate([a.positions for a in frames])
        f["forces"] = np.concatenate([a.get_forces() for a in frames])
        f["energy"] = [a.get_potential_energy() for a in frames]
        f["offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    assert is_hdf5(path)
    assert [len(a) for a in read_frames(path)] == sizes
    text = tmp_path / "frames.extxyz"
    write(text, frames, format="extxyz")
    assert not is_hdf5(text)
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataFileError, match="file is empty"):
        read_frames(tmp_path / "empty.xyz")
