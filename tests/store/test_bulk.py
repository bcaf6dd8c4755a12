"""The bulk paths: batched frame documents, the merge join of the export, label checks."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline import arrays, reads
from pipeline.documents import Frame, Label, frame_fields, hill_formula
from pipeline.errors import DataFileError, InvalidStructure
from pipeline.hashing import frame_hash

from .helpers import emt_dataset


def varied_frames() -> list[Atoms]:
    """Open and periodic, mixed pbc, carbon and carbon-free, signed zeros, one atom."""
    frames = emt_dataset(6, seed=3)
    signed = molecule("CH3CH2OH")
    signed.positions[0] = [-0.0, 0.0, -0.0]
    mixed = bulk("Si", "diamond", a=5.43) * (1, 1, 2)
    mixed.pbc = [True, False, True]
    frames += [signed, mixed, Atoms("Fe", cell=[2.5, 2.5, 2.5], pbc=True), molecule("H2O")]
    return frames


def test_batched_frame_documents_equal_the_single_frame_ones():
    from pipeline.store import frame_documents

    frames = varied_frames()
    provenance = [{"index": i} for i in range(len(frames))]
    docs = frame_documents(frames, source="s", generation=4, provenance=provenance)
    for atoms, doc, prov in zip(frames, docs, provenance):
        assert doc["hash"] == frame_hash(atoms)
        single = frame_fields(atoms, source="s", generation=4, provenance=prov)
        for key in (
            "hash",
            "n_atoms",
            "numbers",
            "positions",
            "cell",
            "pbc",
            "elements",
            "formula",
            "generation",
            "source",
            "provenance",
        ):
            assert doc[key] == single[key], key
        assert doc["formula"] == hill_formula(atoms.numbers)
    assert "generation" not in frame_documents(frames[:1], source="s")[0]  # unset fields are left out


def test_one_frame_builder_keeps_the_selection_fields():
    """frame_fields is frame_documents of one frame: sigma_f, sigma_e, force_deviation and
    selected_as survive the bulk path too (None and a NaN sigma_e are left out)."""
    from pipeline.store import frame_documents

    frames = varied_frames()[:3]
    fields = dict(
        sigma_f=[0.3, None, 0.1],
        sigma_e=[0.02, 0.01, float("nan")],
        force_deviation=[np.full(len(frames[0]), 0.3), None, np.full(len(frames[2]), 0.1)],
        selected_as=["candidate", None, "sentinel"],
    )
    docs = frame_documents(frames, source="s", **fields)
    assert docs[0]["sigma_f"] == 0.3 and docs[0]["sigma_e"] == 0.02 and docs[0]["selected_as"] == "candidate"
    assert "sigma_f" not in docs[1] and "selected_as" not in docs[1] and "force_deviation" not in docs[1]
    assert "sigma_e" not in docs[2] and docs[2]["selected_as"] == "sentinel"
    for i, (atoms, doc) in enumerate(zip(frames, docs)):
        single = frame_fields(atoms, source="s", **{key: values[i] for key, values in fields.items()})
        assert set(single) | {"_id", "created_at"} >= set(doc)
        for key, value in single.items():
            assert doc.get(key) == value, key


def test_bulk_insert_stores_the_selection_fields(store):
    from pipeline.store import add_labelled_frames

    frames = emt_dataset(2, seed=9)
    deviation = [np.full(len(a), 0.2) for a in frames]
    add_labelled_frames(
        frames,
        labels_for(frames),
        theory="t",
        source="s",
        sigma_f=[0.2, 0.2],
        sigma_e=[0.01, None],
        force_deviation=deviation,
        selected_as=["candidate", "sentinel"],
    )
    stored = {f.hash: f for f in Frame.objects}
    first, second = (stored[frame_hash(a)] for a in frames)
    assert first.sigma_f == 0.2 and first.sigma_e == 0.01 and first.selected_as == "candidate"
    assert second.sigma_e is None and second.selected_as == "sentinel"
    np.testing.assert_array_equal(first.to_atoms().arrays["force_deviation"], deviation[0])


def labels_for(frames):
    return [(a.get_potential_energy(), a.get_forces(), a.calc.results.get("stress")) for a in frames]


def test_bulk_insert_links_labels_to_existing_and_repeated_frames(store):
    from pipeline.store import add_frame, add_labelled_frames

    frames = emt_dataset(4, seed=5)
    earlier, _ = add_frame(frames[1], source="melt_quench")
    batch = frames + [frames[2].copy()]  # the same frame twice in one batch
    batch[-1].calc = SinglePointCalculator(batch[-1], **frames[2].calc.results)
    result = add_labelled_frames(batch, labels_for(batch), theory="t", source="import")
    assert len(result.created_frames) == 3  # frames 0, 2 and 3; 1 existed, 2 repeated
    assert len(result.created_labels) == 4  # one label per (frame, theory)
    stored = {f.hash: f.id for f in Frame.objects}
    assert result.frame_ids == [stored[frame_hash(a)] for a in batch]
    assert result.frame_ids[1] == earlier.id
    assert Label.objects(frame_hash=earlier.hash).get().source == "melt_quench"
    again = add_labelled_frames(batch, labels_for(batch), theory="t", source="import")
    assert (again.created_frames, again.created_labels, again.frame_ids) == ([], [], result.frame_ids)
    assert Frame.objects.count() == 4 and Label.objects.count() == 4


def test_bulk_insert_checks_every_label_before_writing(store):
    from pipeline.store import add_labelled_frames

    frames = emt_dataset(3)
    labels = labels_for(frames)
    bad_forces = labels[2][1].copy()
    bad_forces[1, 2] = np.inf
    labels[2] = (labels[2][0], bad_forces, labels[2][2])
    with pytest.raises(InvalidStructure, match="forces contain NaN or infinite"):
        add_labelled_frames(frames, labels, theory="t", source="import")
    assert Frame.objects.count() == 0 and Label.objects.count() == 0


def test_undo_keeps_frames_that_another_writer_labelled(store):
    from pipeline.store import add_label, add_labelled_frames, remove_created

    frames = emt_dataset(2)
    result = add_labelled_frames(frames, labels_for(frames), theory="import:x", source="import")
    # another process labels the first frame at its own theory before this import is undone
    first = Frame.objects.get(id=result.frame_ids[0])
    add_label(first, theory="dft", energy=1.0, forces=np.zeros((first.n_atoms, 3)))
    remove_created(result.created_frames, result.created_labels)
    assert [f.id for f in Frame.objects] == [first.id]
    assert [label.theory for label in Label.objects] == ["dft"]


def test_export_joins_labels_to_frames_in_frame_order(store, tmp_path, monkeypatch):
    """Labels written in another order than their frames, several theories per frame, a
    label whose frame is gone: the merge join and the per-batch lookup agree."""
    import pipeline.export as export
    from pipeline.store import add_frame, add_label

    frames = emt_dataset(7, seed=2)
    stored = [add_frame(a, source="test", generation=i % 2)[0] for i, a in enumerate(frames)]
    for i in [5, 0, 3, 6, 1]:  # labels in an order unrelated to the frames'
        atoms = frames[i]
        add_label(
            stored[i], theory="b", energy=atoms.get_potential_energy(), forces=atoms.get_forces(), generation=i % 2
        )
        if i % 2:
            add_label(
                stored[i], theory="a", energy=-1.0 * i, forces=np.full((len(atoms), 3), float(i)), generation=i % 2
            )
    Frame._get_collection().delete_one({"_id": stored[3].id})  # label of frame 3 now dangles

    def exported(**query):
        return [(r.frame_hash, r.theory, r.energy) for r in export.iter_records(export.label_query(**query))]

    expected = []
    for i in [0, 1, 5, 6]:  # frame order, then theory
        if i % 2:
            expected.append((stored[i].hash, "a", -1.0 * i))
        expected.append((stored[i].hash, "b", frames[i].get_potential_energy()))
    merged = exported()
    assert merged == expected
    for fraction in (0.0, 2.0):  # force the merge join, then the per-batch $in lookup
        monkeypatch.setattr(reads, "MERGE_JOIN_FRACTION", fraction)
        assert exported(theories=["a", "b"]) == expected
        assert exported(generation=1) == [e for e in expected if e[0] in {stored[1].hash, stored[5].hash}]
        assert [
            (r.frame_hash, r.theory) for r in export.iter_records(export.label_query(theories=["b"]), batch_size=2)
        ] == [e[:2] for e in expected if e[1] == "b"]
    record = next(r for r in export.iter_records() if r.theory == "a")
    assert np.array_equal(record.forces, np.full((len(frames[1]), 3), 1.0))


def test_export_batches_round_trip_through_hdf5_bit_exact(store, tmp_path):
    """Many batches (uneven last one), stress on some frames only."""
    import h5py

    from pipeline.export import export_snapshot
    from pipeline.store import add_labelled_frames

    rng = np.random.default_rng(0)
    frames = []
    for i in range(45):
        n = int(rng.integers(1, 6))
        atoms = Atoms(
            numbers=rng.integers(1, 84, n), positions=3.0 * np.arange(n)[:, None] + rng.normal(size=(n, 3)) * 0.1
        )
        if i % 3 == 0:
            atoms.cell = np.eye(3) * 3.0 * n + 10
            atoms.pbc = True
        frames.append(atoms)
    labels = [
        (float(rng.normal()), rng.normal(size=(len(a), 3)), rng.normal(size=6) if a.pbc.all() else None) for a in frames
    ]
    add_labelled_frames(frames, labels, theory="t", source="synthetic")
    import pipeline.export as export
    import pipeline.reads as reads

    original = export.BATCH
    try:
        export.BATCH = reads.BATCH = 8  # several batches with a short last one
        export_snapshot(tmp_path / "s.h5")
    finally:
        export.BATCH = reads.BATCH = original
    with h5py.File(tmp_path / "s.h5", "r") as f:
        offsets = f["offsets"][:]
        assert len(offsets) == len(frames) + 1
        for i, (atoms, (energy, forces, stress)) in enumerate(zip(frames, labels)):
            lo, hi = offsets[i], offsets[i + 1]
            assert np.array_equal(f["numbers"][lo:hi], atoms.numbers)
            assert np.array_equal(f["positions"][lo:hi], atoms.positions)
            assert np.array_equal(f["forces"][lo:hi], forces)
            assert f["energy"][i] == energy
            assert np.array_equal(f["cell"][i], atoms.cell.array)
            assert f["frame_hash"][i].decode() == frame_hash(atoms)
            if stress is None:
                assert np.isnan(f["stress"][i]).all()
            else:
                assert np.array_equal(f["stress"][i], stress)
        assert list(f["source"].asstr()[:]) == ["synthetic"] * len(frames)


def test_export_stops_cleanly_when_the_reader_stops_early(store):
    from pipeline.export import iter_batches
    from pipeline.store import add_labelled_frames

    frames = emt_dataset(6)
    add_labelled_frames(frames, labels_for(frames), theory="t", source="s")
    batches = iter_batches(batch_size=2)
    assert len(next(batches)) == 2
    batches.close()  # stops the prefetching threads on a server, closes the cursors
    assert sum(len(b) for b in iter_batches(batch_size=4)) == 6


def test_label_arrays_is_the_one_check():
    forces = np.zeros((2, 3))
    energy, checked, stress = arrays.label_arrays(1, forces.tolist(), np.eye(3), 2)
    assert energy == 1.0 and checked.dtype == np.float64 and checked.shape == (2, 3)
    assert np.array_equal(stress, [1, 1, 1, 0, 0, 0])
    with pytest.raises(InvalidStructure, match=r"^f: forces have shape \(3, 3\), expected \(2, 3\)$"):
        arrays.label_arrays(1.0, np.zeros((3, 3)), None, 2, "f")
    with pytest.raises(DataFileError, match="energy is not finite"):
        arrays.label_arrays(np.nan, forces, None, 2, error=DataFileError)
    with pytest.raises(InvalidStructure, match="no energy"):
        arrays.label_arrays(None, forces, None, 2)
    with pytest.raises(InvalidStructure, match="stress contains NaN"):
        arrays.label_arrays(1.0, forces, [np.nan] * 6, 2)
    with pytest.raises(InvalidStructure, match=r"stress has shape \(4,\)"):
        arrays.label_arrays(1.0, forces, [0.0] * 4, 2)
    assert arrays.label_arrays(1.0, forces, [np.nan] * 6, 2, invalid_stress="drop")[2] is None

    atoms = molecule("H2O")
    with pytest.raises(InvalidStructure, match="no energy and forces"):
        arrays.labels_of(atoms, "w")
    atoms.calc = SinglePointCalculator(atoms, free_energy=-3.0, forces=np.ones((3, 3)))
    energy, checked, stress = arrays.labels_of(atoms, "w")
    assert energy == -3.0 and np.array_equal(checked, np.ones((3, 3))) and stress is None
