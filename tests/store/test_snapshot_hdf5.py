"""HDF5 snapshots: chunks sized to the data, compression, exact round trips."""

import json

import ase.io
import h5py
import numpy as np
from ase import Atoms

import pipeline.export as export
import pipeline.reads as reads
from pipeline.export import HDF5Writer, Record, RecordBatch, export_snapshot, read_hdf5
from pipeline.hashing import frame_hash
from pipeline.importer import import_file, read_frames

from .helpers import emt_dataset
from .test_import_export import assert_same_frames

#: Bound on file bytes per byte of the arrays in a 16-frame snapshot. At that size what
#: remains besides the numbers is HDF5's own metadata (about 0.7 KiB per dataset, a
#: 4 KiB global-heap collection for the strings, the attributes): the file below is
#: 24 kB for 10 kB of numbers. With the fixed 4096-row chunks it was 1.9 MB, 190x.
SMALL_FILE_FACTOR = 3


def payload_bytes(f: h5py.File) -> int:
    """Bytes of every array in the file, characters of every string."""
    total = 0
    for dataset in f.values():
        values = dataset[()]
        total += sum(len(s) for s in values) if values.dtype.kind == "O" else values.nbytes
    return total


def assert_chunks_fit(f: h5py.File) -> None:
    for name, dataset in f.items():
        assert dataset.chunks is not None and dataset.maxshape[0] is None, name  # still resizable
        assert dataset.chunks[0] <= max(1, dataset.shape[0]), (name, dataset.chunks, dataset.shape)
        assert dataset.compression == "gzip", name


def test_small_snapshot_costs_about_its_numbers(store, tmp_path):
    frames = emt_dataset(16)
    for i, atoms in enumerate(frames):
        atoms.info["generation"] = i % 2
    ase.io.write(tmp_path / "in.xyz", frames)
    import_file(tmp_path / "in.xyz", theory="emt-test")
    out = tmp_path / "small.h5"
    assert export_snapshot(out).n_frames == 16
    with h5py.File(out, "r") as f:
        assert_chunks_fit(f)
        raw = payload_bytes(f)
        assert raw >= 16 * 48  # the positions and forces of 16 frames at least: a real bound
    assert out.stat().st_size <= SMALL_FILE_FACTOR * raw, (out.stat().st_size, raw)
    assert_same_frames(read_frames(tmp_path / "in.xyz"), list(read_hdf5(out)))
    # a filtered export counts its labels (the unfiltered one estimates them): sized alike
    few = tmp_path / "few.h5"
    metals = sum(set(a.get_chemical_symbols()) <= {"Al", "Cu"} for a in frames)
    assert 0 < metals < 16
    assert export_snapshot(few, theories=["emt-test"], elements=["Al", "Cu"]).n_frames == metals
    with h5py.File(few, "r") as f:
        assert_chunks_fit(f)


def _frames(n: int, seed: int = 0) -> tuple[list[Atoms], list[tuple]]:
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    for i in range(n):
        size = int(rng.integers(1, 12))
        positions = 2.5 * np.arange(size)[:, None] + rng.normal(size=(size, 3)) * 0.1
        atoms = Atoms(numbers=rng.integers(1, 84, size), positions=positions)
        if i % 3 == 0:
            atoms.cell = np.eye(3) * 2.5 * size + 10
            atoms.pbc = True
        forces = rng.normal(size=(size, 3))
        # values whose bits a lossy or float-reinterpreting path would change
        forces[0, 0] = [-0.0, 5e-324, np.nextafter(1.0, 2.0), -1e308][i % 4]
        frames.append(atoms)
        labels.append((float(rng.normal() * size), forces, rng.normal(size=6) if atoms.pbc.all() else None))
    return frames, labels


def test_multi_chunk_export_round_trips_bit_for_bit(store, tmp_path, monkeypatch):
    """Many chunks per dataset, many batches (short last one): every byte comes back,
    through plain h5py and through the project's reader."""
    from pipeline.store import add_labelled_frames

    frames, labels = _frames(150)
    provenance = [{"sampler": "md", "seed": i, "parent": frame_hash(frames[i - 1]) if i else None} for i in range(150)]
    generations = [i // 50 for i in range(150)]
    add_labelled_frames(frames, labels, theory="t", source="md", provenance=provenance, label_generation=generations)
    monkeypatch.setattr(export, "BATCH", 16)
    monkeypatch.setattr(reads, "BATCH", 16)
    monkeypatch.setattr(export, "CHUNK_BYTES", 256)  # a handful of rows per chunk
    batches: list[int] = []
    add_batch = HDF5Writer.add_batch

    def counted(self, batch):
        batches.append(len(batch))
        add_batch(self, batch)

    monkeypatch.setattr(HDF5Writer, "add_batch", counted)
    out = tmp_path / "multi.h5"
    export_snapshot(out)
    assert batches == [16] * 9 + [6]
    with h5py.File(out, "r") as f:
        assert_chunks_fit(f)
        for name in ("positions", "forces", "numbers", "energy", "frame_hash", "provenance"):
            assert f[name].shape[0] >= 3 * f[name].chunks[0], name  # several chunks each
        assert f["positions"].shuffle and not f["numbers"].shuffle and not f["frame_hash"].shuffle
        offsets = f["offsets"][:]
        assert offsets.tobytes() == np.concatenate([[0], np.cumsum([len(a) for a in frames])]).astype("<i8").tobytes()
        assert f["numbers"][:].tobytes() == np.concatenate([a.numbers for a in frames]).astype("u1").tobytes()
        assert f["positions"][:].tobytes() == np.concatenate([a.positions for a in frames]).tobytes()
        assert f["forces"][:].tobytes() == np.concatenate([forces for _, forces, _ in labels]).tobytes()
        assert f["energy"][:].tobytes() == np.array([energy for energy, _, _ in labels]).tobytes()
        assert f["cell"][:].tobytes() == np.stack([a.cell.array for a in frames]).tobytes()
        assert f["pbc"][:].tolist() == [a.pbc.tolist() for a in frames]
        stress = f["stress"][:]
        for row, (_, _, expected) in zip(stress, labels):
            assert np.isnan(row).all() if expected is None else row.tobytes() == expected.tobytes()
        assert [h.decode() for h in f["frame_hash"][:]] == [frame_hash(a) for a in frames]
        assert f["generation"][:].tolist() == generations
        assert [json.loads(p) for p in f["provenance"].asstr()[:]] == provenance
        assert f.attrs["n_frames"] == 150 and f.attrs["n_atoms"] == offsets[-1]
    back = list(read_hdf5(out, batch_size=7))
    assert len(back) == 150
    for atoms, (energy, forces, stress), read in zip(frames, labels, back):
        assert read.positions.tobytes() == atoms.positions.tobytes()
        assert read.get_forces().tobytes() == forces.tobytes()
        assert np.float64(read.get_potential_energy()).tobytes() == np.float64(energy).tobytes()
        assert read.numbers.tolist() == atoms.numbers.tolist()
        assert ("stress" in read.calc.results) == (stress is not None)
        if stress is not None:
            assert np.asarray(read.calc.results["stress"]).tobytes() == stress.tobytes()


def _records(n: int, seed: int) -> list[Record]:
    frames, labels = _frames(n, seed)
    return [
        Record(
            numbers=a.numbers.astype("u1"),
            positions=a.positions,
            cell=a.cell.array,
            pbc=a.pbc,
            energy=e,
            forces=f,
            stress=s,
            frame_hash=frame_hash(a),
            theory="t",
            source="md",
        )
        for a, (e, f, s) in zip(frames, labels)
    ]


def test_writer_grows_past_its_estimate(tmp_path):
    """An estimate too small (or none) only makes chunks smaller; the data all lands."""
    records = _records(40, seed=1)
    path = tmp_path / "grown.h5"
    with HDF5Writer(path, expected_frames=3) as writer:
        for start, stop in ((0, 3), (3, 20), (20, 40)):
            writer.add_batch(RecordBatch.from_records(records[start:stop]))
    with h5py.File(path, "r") as f:
        assert f["energy"].chunks == (3,) and f["energy"].shape == (40,)
        assert f["positions"][:].tobytes() == np.concatenate([r.positions for r in records]).tobytes()
    assert [a.get_potential_energy() for a in read_hdf5(path)] == [r.energy for r in records]
    # records one by one, no estimate: the first flushed batch sizes the chunks
    with HDF5Writer(tmp_path / "one_by_one.h5") as writer:
        for record in records[:5]:
            writer.add(record)
    with h5py.File(tmp_path / "one_by_one.h5", "r") as f:
        assert_chunks_fit(f)
        assert f["offsets"].chunks == (6,) and f["energy"].shape == (5,)


def test_empty_snapshot_has_every_dataset(tmp_path):
    path = tmp_path / "empty.h5"
    HDF5Writer(path, expected_frames=0).close()
    with h5py.File(path, "r") as f:
        assert set(f) == set(export.ATOM_COLUMNS) | set(export.FRAME_COLUMNS)
        assert f["offsets"][:].tolist() == [0] and f["positions"].shape == (0, 3)
    assert list(read_hdf5(path)) == []
