import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from pipeline import arrays
from pipeline.documents import Failure, Frame, Label
from pipeline.errors import InvalidStructure
from pipeline.hashing import POSITION_TOLERANCE, frame_hash
from pipeline.stats import dataset_summary
from pipeline.store import add_failure, add_frame, add_label, done_hashes, existing_hashes

from .helpers import emt_dataset


def test_hash_is_content_not_identity():
    a = molecule("H2O")
    b = a.copy()
    assert frame_hash(a) == frame_hash(b)
    b.positions[0, 0] += POSITION_TOLERANCE / 10  # below the stated tolerance
    assert frame_hash(a) == frame_hash(b)
    b.positions[0, 0] += 10 * POSITION_TOLERANCE
    assert frame_hash(a) != frame_hash(b)
    c = a.copy()
    c.pbc = [True, False, False]
    c.cell = [5, 5, 5]
    assert frame_hash(a) != frame_hash(c)
    d = a.copy()
    d.numbers[1] = 9
    assert frame_hash(a) != frame_hash(d)


def test_negative_zero_hashes_like_zero():
    a = Atoms("H2", positions=[[0.0, 0, 0], [0.74, 0, 0]])
    b = Atoms("H2", positions=[[-0.0, 0, 0], [0.74, 0, 0]])
    assert frame_hash(a) == frame_hash(b)


def test_arrays_round_trip_bit_exact():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(17, 3)) * 1e-3 + np.array([np.pi, np.e, 1 / 3])
    packed = arrays.pack(values)
    assert isinstance(packed, bytes) and len(packed) == values.size * 8
    assert np.array_equal(arrays.unpack(packed, values.shape), values)


def test_frame_round_trip_bit_exact(store):
    for atoms in emt_dataset(6):
        frame, created = add_frame(atoms, source="test", provenance={"note": "x"})
        assert created
        back = Frame.objects(hash=frame.hash).first().to_atoms()
        assert np.array_equal(back.positions, atoms.positions)
        assert np.array_equal(back.cell.array, atoms.cell.array)
        assert np.array_equal(back.numbers, atoms.numbers)
        assert list(back.pbc) == list(atoms.pbc)
    stored = Frame._get_collection().find_one()
    assert isinstance(stored["positions"], bytes)  # compact binary, not a list of floats


def test_inserts_are_idempotent(store):
    frames = emt_dataset(3)
    for atoms in frames:
        frame, _ = add_frame(atoms, source="test")
        energy = atoms.get_potential_energy()
        label, created = add_label(frame, theory="emt", energy=energy, forces=atoms.get_forces())
        assert created
        again, created_again = add_label(frame, theory="emt", energy=energy, forces=atoms.get_forces())
        assert not created_again and again.id == label.id
        # the same frame object inserted again is found, not duplicated
        same, created = add_frame(atoms.copy(), source="other")
        assert not created and same.id == frame.id
    assert Frame.objects.count() == 3
    assert Label.objects.count() == 3
    # another level of theory is another label of the same frame
    add_label(frame, theory="other", energy=0.0, forces=np.zeros((len(frames[-1]), 3)))
    assert Label.objects.count() == 4


def test_labels_round_trip_and_reject_bad_arrays(store):
    atoms = emt_dataset(1)[0]
    frame, _ = add_frame(atoms, source="test")
    label, _ = add_label(
        frame, theory="emt", energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress()
    )
    back = Label.objects.get(id=label.id).to_atoms()
    assert np.array_equal(back.get_forces(), atoms.get_forces())
    assert np.array_equal(back.get_stress(), atoms.get_stress())
    assert back.get_potential_energy() == atoms.get_potential_energy()
    with pytest.raises(InvalidStructure, match="forces have shape"):
        add_label(frame, theory="bad", energy=1.0, forces=np.zeros((len(atoms) + 1, 3)))
    forces = atoms.get_forces().copy()
    forces[0, 0] = np.nan
    with pytest.raises(InvalidStructure, match="NaN"):
        add_label(frame, theory="bad", energy=1.0, forces=forces)
    with pytest.raises(InvalidStructure, match="energy is not finite"):
        add_label(frame, theory="bad", energy=float("inf"), forces=atoms.get_forces())
    assert Label.objects(theory="bad").count() == 0


def test_failures_and_done_hashes(store):
    a, b, c = emt_dataset(3)
    fa, _ = add_frame(a, source="test")
    fb, _ = add_frame(b, source="test")
    add_frame(c, source="test")
    add_label(fa, theory="t", energy=a.get_potential_energy(), forces=a.get_forces())
    failure, created = add_failure(fb, theory="t", reason="SCF did not converge", attempts=[{"step": "diis"}])
    assert created
    _, created = add_failure(fb, theory="t", reason="again")
    assert not created
    assert done_hashes("t") == {fa.hash, fb.hash}
    assert done_hashes("other") == set()
    assert existing_hashes([frame_hash(c), "0" * 64]) == {frame_hash(c)}
    assert Failure.objects.get(frame=fb).attempts == [{"step": "diis"}]


def test_summary_counts_per_element(store):
    frames = emt_dataset(6)
    for i, atoms in enumerate(frames):
        frame, _ = add_frame(atoms, source="test", generation=i % 2)
        if i < 4:
            add_label(
                frame, theory="t", energy=atoms.get_potential_energy(), forces=atoms.get_forces(), generation=i % 2
            )
        else:
            add_failure(frame, theory="t", reason="x", generation=i % 2)
    summary = dataset_summary()
    # hand count, independently of the aggregation
    expected: dict = {}
    for i, atoms in enumerate(frames):
        for element in set(atoms.get_chemical_symbols()):
            row = expected.setdefault(element, {"frames": 0, "labels": 0, "failures": 0})
            row["frames"] += 1
            row["labels" if i < 4 else "failures"] += 1
    assert summary["per_element"] == expected
    assert summary["frames"] == 6 and summary["labels"] == 4 and summary["failures"] == 2
    assert summary["per_generation"][0] == {"frames": 3, "labels": 2, "failures": 1}
    assert summary["per_generation"][1] == {"frames": 3, "labels": 2, "failures": 1}


def test_gridfs_weights_round_trip(store):
    from pipeline.documents import ModelVersion

    payload = np.random.default_rng(0).bytes(300_000)  # several GridFS chunks
    model = ModelVersion(name="g0", generation=0)
    model.weights.put(payload, filename="ensemble.tar")
    model.save()
    assert ModelVersion.objects.get(name="g0").weights.read() == payload


def test_periodic_frame_with_cell_shorter_than_bond_is_rejected():
    from pipeline.atoms import check_atoms

    atoms = bulk("Cu", "fcc", a=3.6)
    check_atoms(atoms)
    tiny = atoms.copy()
    tiny.set_cell(atoms.cell * 0.01, scale_atoms=True)
    with pytest.raises(InvalidStructure, match="overlap"):
        check_atoms(tiny)


def test_bond_matrix_uses_the_minimum_image_in_cells():
    from pipeline.atoms import bonded

    pair = Atoms("H2", positions=[[0.1, 0, 0], [9.4, 0, 0]], cell=[10, 10, 10])
    assert not bonded(pair, 1.25).any()  # 9.3 Å apart as a cluster
    pair.pbc = True
    assert bonded(pair, 1.25).tolist() == [[False, True], [True, False]]  # 0.7 Å across the face
    assert bonded(Atoms("H"), 1.25).shape == (1, 1)
    water = molecule("H2O")
    assert bonded(water, 1.25).sum() == 4 and not bonded(water, 1.25)[1, 2]  # two O-H, no H-H


@pytest.mark.parametrize("symbols", ["C2H6O", "H2O", "NaCl", "CO2", "HBrC", "OHHe", "Fe2O3", "CH4"])
def test_hill_formula_matches_ase(symbols):
    from pipeline.documents import hill_formula

    atoms = Atoms(symbols)
    assert hill_formula(atoms.numbers) == atoms.get_chemical_formula(mode="hill")


def test_labels_carry_the_source_of_the_stored_frame(store):
    from pipeline.store import add_labelled_frames

    a, b = emt_dataset(2)
    frame, _ = add_frame(a, source="melt_quench")
    label, _ = add_label(frame, theory="t", energy=a.get_potential_energy(), forces=a.get_forces())
    assert label.source == "melt_quench"
    # In bulk, a frame stored earlier keeps its source; a new one gets the given source.
    add_labelled_frames(
        [a, b],
        [(x.get_potential_energy(), x.get_forces(), None) for x in (a, b)],
        theory="import:x",
        source="import",
    )
    sources = {label.frame_hash: label.source for label in Label.objects(theory="import:x")}
    assert sources == {frame.hash: "melt_quench", Frame.objects(source="import").get().hash: "import"}
