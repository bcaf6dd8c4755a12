import json

import ase.io
import h5py
import numpy as np
import pytest

from pipeline.documents import Frame, Label
from pipeline.errors import DataFileError
from pipeline.export import export_snapshot, read_hdf5
from pipeline.importer import import_file, read_frames

from .helpers import emt_dataset


def assert_same_frames(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert np.array_equal(a.numbers, b.numbers)
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.cell.array, b.cell.array)
        assert list(a.pbc) == list(b.pbc)
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.get_forces(), b.get_forces())
        sa, sb = a.calc.results.get("stress"), b.calc.results.get("stress")
        assert (sa is None) == (sb is None)
        if sa is not None:
            assert np.array_equal(np.asarray(sa).reshape(-1)[:6] if np.shape(sa) == (6,) else sa, sb)


def test_import_export_import_is_exact(store, tmp_path):
    source = tmp_path / "source.extxyz"
    ase.io.write(source, emt_dataset(9))
    original = read_frames(source, require_labels=True)
    report = import_file(source)
    assert (report.frames, report.new_frames, report.new_labels) == (9, 9, 9)
    assert report.theory == "import:extxyz"

    export_snapshot(tmp_path / "snap.h5", format="hdf5")
    export_snapshot(tmp_path / "snap.xyz", format="extxyz")
    from_hdf5 = list(read_hdf5(tmp_path / "snap.h5"))
    from_xyz = ase.io.read(tmp_path / "snap.xyz", index=":")  # plain ASE, no selfplay reader
    assert_same_frames(original, from_hdf5)
    assert_same_frames(original, from_xyz)
    assert_same_frames(from_hdf5, from_xyz)

    # importing the exports again changes nothing: same hashes, same theory
    for path in (tmp_path / "snap.h5", tmp_path / "snap.xyz"):
        again = import_file(path)
        assert (again.new_frames, again.new_labels) == (0, 0)
    assert Frame.objects.count() == 9 and Label.objects.count() == 9


def test_hdf5_is_readable_with_h5py_alone(store, tmp_path):
    frames = emt_dataset(5)
    ase.io.write(tmp_path / "in.xyz", frames)
    import_file(tmp_path / "in.xyz", theory="emt-test")
    export_snapshot(tmp_path / "snap.h5")
    frames = read_frames(tmp_path / "in.xyz")
    with h5py.File(tmp_path / "snap.h5", "r") as f:
        assert f.attrs["schema_version"] == 2  # 2: with the electronic state
        assert {"magmoms", "multiplicity", "smeared"} <= set(f)
        assert json.loads(f.attrs["theories"]) == ["emt-test"]
        assert json.loads(f.attrs["units"])["forces"] == "eV/Angstrom"
        offsets = f["offsets"][:]
        assert offsets[0] == 0 and offsets[-1] == sum(len(a) for a in frames)
        for i, atoms in enumerate(frames):
            lo, hi = offsets[i], offsets[i + 1]
            assert np.array_equal(f["positions"][lo:hi], atoms.positions)
            assert np.array_equal(f["forces"][lo:hi], atoms.get_forces())
            assert f["energy"][i] == atoms.get_potential_energy()
            if atoms.pbc.all():
                assert np.array_equal(f["stress"][i], atoms.get_stress())
            else:
                assert np.isnan(f["stress"][i]).all()


def test_export_filters(store, tmp_path):
    from pipeline.store import add_frame, add_label

    frames = emt_dataset(6)
    for i, atoms in enumerate(frames):
        frame, _ = add_frame(atoms, source="test", generation=i % 3)
        add_label(frame, theory="t", energy=atoms.get_potential_energy(), forces=atoms.get_forces(), generation=i % 3)
    assert export_snapshot(tmp_path / "g1.h5", generation=1).n_frames == 2
    assert export_snapshot(tmp_path / "u1.h5", until_generation=1).n_frames == 4
    only_al = [a for a in frames if set(a.get_chemical_symbols()) <= {"Al"}]
    cu_al = [a for a in frames if set(a.get_chemical_symbols()) <= {"Al", "Cu"}]
    assert export_snapshot(tmp_path / "al.xyz", format="extxyz", elements=["Al"]).n_frames == len(only_al)
    assert export_snapshot(tmp_path / "cual.xyz", format="extxyz", elements=["Cu", "Al"]).n_frames == len(cu_al)
    assert export_snapshot(tmp_path / "none.h5", theories=["nope"]).n_frames == 0
    assert not (tmp_path / "g1.h5.partial").exists()


def test_import_other_ase_formats(store, tmp_path):
    frames = emt_dataset(3)
    ase.io.write(tmp_path / "frames.traj", frames)
    report = import_file(tmp_path / "frames.traj")
    assert report.new_labels == 3 and report.theory == "import:traj"
    assert_same_frames(frames, [label.to_atoms() for label in Label.objects.order_by("id")])


BAD_FILES = {
    "empty.xyz": ("", "file is empty"),
    "unknown_element.xyz": (
        '1\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0 pbc="F F F"\nXx 0 0 0 0 0 0\n',
        "unknown element symbol 'Xx'",
    ),
    "nan.xyz": (
        '2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0 pbc="F F F"\nH 0 0 0 0 0 0\nH nan 0 0.7 0 0 0\n',
        "NaN",
    ),
    "short.xyz": (
        '3\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0 pbc="F F F"\nH 0 0 0 0 0 0\nH 0 0 0.7 0 0 0\n',
        "expected 3",
    ),
    "nolabel.xyz": ('2\npbc="F F F"\nH 0 0 0\nH 0 0 0.74\n', "no energy and forces"),
    "overlap.xyz": (
        '2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0 pbc="F F F"\nH 0 0 0 0 0 0\nH 0 0 0.01 0 0 0\n',
        "overlap",
    ),
    "noforces.xyz": ('2\nenergy=1.0 pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n', "no forces"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_write_nothing(store, tmp_path, name):
    good = tmp_path / "good.xyz"
    ase.io.write(good, emt_dataset(2))
    import_file(good)
    before = (Frame.objects.count(), Label.objects.count())
    text, fragment = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFileError) as error:
        import_file(path)
    message = str(error.value)
    assert name in message and "\n" not in message
    assert fragment in message
    assert (Frame.objects.count(), Label.objects.count()) == before


def test_database_failure_half_way_rolls_back(store, tmp_path, monkeypatch):
    """A database failure in a later batch removes what the earlier batches of that file created."""
    import pipeline.store as store_module

    path = tmp_path / "five.xyz"
    ase.io.write(path, emt_dataset(5))
    calls = {"n": 0}
    real_insert = store_module._insert_many_ignoring_duplicates

    def failing_insert(collection, documents):
        calls["n"] += 1
        if calls["n"] == 4:  # the labels of the second batch
            raise RuntimeError("connection dropped")
        return real_insert(collection, documents)

    monkeypatch.setattr(store_module, "_insert_many_ignoring_duplicates", failing_insert)
    with pytest.raises(RuntimeError):
        import_file(path, batch_size=2)
    assert calls["n"] == 4
    assert Frame.objects.count() == 0 and Label.objects.count() == 0


def test_read_frames_rejects_missing_file(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        read_frames(tmp_path / "missing.xyz")


def test_labels_from_selfplay_label_import_under_the_labellers_key(store, tmp_path):
    """``selfplay label`` then ``selfplay db import`` seeds the store: the labels land under the
    key a generation with the same labeller settings trains on, not under ``import:extxyz``."""
    import typer
    from ase.build import molecule
    from typer.testing import CliRunner

    from dft.labeller import SETTINGS_ADAPTER
    from flows.commands.label import label

    app = typer.Typer()
    app.command()(label)
    ase.io.write(tmp_path / "known.xyz", [molecule("H2O"), molecule("OH")])
    out = tmp_path / "known.extxyz"
    result = CliRunner().invoke(app, [str(tmp_path / "known.xyz"), "--backend", "xtb", "--out", str(out)])
    assert result.exit_code == 0, result.output

    report = import_file(out)
    key = SETTINGS_ADAPTER.validate_python({"backend": "xtb"}).theory_key()
    assert (report.new_labels, report.theory) == (2, key)
    assert {label.theory for label in Label.objects} == {key}
    # the energies are the labeller's, unchanged by the round trip
    written = {round(a.get_potential_energy(), 9) for a in ase.io.read(out, index=":")}
    assert {round(label.energy, 9) for label in Label.objects} == written
