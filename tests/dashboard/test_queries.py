"""Aggregations against hand-counted fixtures, on the embedded store and on FerretDB."""

from __future__ import annotations

import pytest

from pipeline.dashboard.queries import count_by_generation_and_element, group_sums, take_snapshot
from pipeline.dashboard.readonly import FERRETDB_V1, STANDARD, ReadOnlyDatabase

from . import fixtures as F
from .conftest import dump_store


def test_snapshot_matches_hand_counts(store):
    F.fill_store()
    db = ReadOnlyDatabase.current()
    assert db.engine == STANDARD if store == "embedded" else db.engine in (STANDARD, FERRETDB_V1)
    snapshot = take_snapshot(db)
    assert snapshot.labels_by_element == F.LABELS_BY_ELEMENT == F.naive_element_counts("labels")
    assert snapshot.failures_by_element == F.FAILURES_BY_ELEMENT == F.naive_element_counts("failures")
    assert snapshot.labels_by_generation == F.LABELS_BY_GENERATION
    assert snapshot.failures_by_generation == F.FAILURES_BY_GENERATION
    assert snapshot.frames_by_source == F.FRAMES_BY_SOURCE
    assert snapshot.dft_time == F.DFT_TIME
    assert snapshot.scf_cycles == F.SCF_CYCLES
    assert snapshot.wall_time_by_size == F.WALL_TIME_BY_SIZE
    assert snapshot.failure_reasons == F.FAILURE_REASONS
    assert snapshot.totals == {"frames": 10, "labels": 7, "failures": 3, "imported_labels": 2, "generations": 3}
    assert snapshot.generation_numbers == [0, 1, 2]
    assert snapshot.elements == ["H", "C", "O", "Al", "Cu"]  # by atomic number


def test_generation_documents_leave_out_large_fields(store):
    F.fill_store()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    gen0 = snapshot.generation(0)
    assert "sigma_f_sample" not in gen0["metrics"] and "calibration" not in gen0["metrics"]
    assert snapshot.generation(1)["metrics"]["model"]["per_element"]["Al"]["force_mae"] == 0.25
    assert snapshot.generation(2)["status"] == "running"
    # calibration points come separately, for the latest generations only
    assert [len(snapshot.calibration[g]) for g in (0, 1, 2)] == [0, 3, 0]
    assert len(take_snapshot(ReadOnlyDatabase.current(), calibration_generations=1).calibration) == 1


def test_element_totals_over_generation_ranges(store):
    F.fill_store()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    # hand-counted from the fixture table
    assert snapshot.element_totals("labels") == {"H": 3, "C": 1, "O": 1, "Al": 2, "Cu": 3}
    assert snapshot.element_totals("labels", 0, 0) == {"H": 2, "O": 1, "Al": 1, "Cu": 3}
    assert snapshot.element_totals("labels", 0, 0, imported=False) == {"H": 1, "O": 1, "Al": 1, "Cu": 2}
    assert snapshot.element_totals("labels", 1, 2, imported=False) == {"H": 1, "C": 1, "Al": 1}
    assert snapshot.element_totals("failures", 1, 1) == {"O": 2, "Al": 1, "Cu": 1}
    assert snapshot.element_totals("labels", 5, 9, imported=False) == {}


def test_ferretdb_pipelines_give_the_same_numbers_on_the_embedded_store(embedded_store):
    """The FerretDB-v1 variants (no sibling fields after $unwind, one accumulator) are exact too."""
    F.fill_store()
    standard = ReadOnlyDatabase.current()
    compat = ReadOnlyDatabase.current()
    compat.__dict__["engine"] = FERRETDB_V1
    for name in ("labels", "failures"):
        assert count_by_generation_and_element(compat, name) == count_by_generation_and_element(standard, name)
    key, sums = {"n_atoms": "$n_atoms", "device": "$info.device"}, {"n": 1, "wall_time": "$wall_time"}
    assert group_sums(compat, "labels", key, sums) == group_sums(standard, "labels", key, sums) != {}
    standard_snapshot, compat_snapshot = take_snapshot(standard), take_snapshot(compat)
    for field in ("labels_by_element", "failures_by_element", "frames_by_source", "dft_time", "scf_cycles",
                  "wall_time_by_size", "failure_reasons"):  # fmt: skip
        assert getattr(compat_snapshot, field) == getattr(standard_snapshot, field), field


def test_matching_restricts_the_aggregation(store):
    F.fill_store()
    db = ReadOnlyDatabase.current()
    only_gen1 = count_by_generation_and_element(db, "labels", match={"generation": 1})
    assert only_gen1 == {k: v for k, v in F.LABELS_BY_ELEMENT.items() if k[0] == 1}


def test_empty_store(store):
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    assert snapshot.totals == {"frames": 0, "labels": 0, "failures": 0, "imported_labels": 0, "generations": 0}
    assert snapshot.generation_numbers == [] and snapshot.elements == []
    assert snapshot.element_totals("labels") == {}


def test_readonly_handle_cannot_write(store):
    F.fill_store()
    db = ReadOnlyDatabase.current()
    labels = db["labels"]
    for method in ("insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one",
                   "delete_many", "drop", "create_index", "bulk_write", "find_one_and_update"):  # fmt: skip
        assert not hasattr(labels, method), method
    for method in ("drop_collection", "create_collection", "command_write", "client"):
        assert not hasattr(db, method), method
    with pytest.raises(PermissionError, match=r"\$out"):
        labels.aggregate([{"$match": {}}, {"$out": "stolen"}])
    with pytest.raises(PermissionError, match=r"\$merge"):
        labels.aggregate([{"$merge": {"into": "stolen"}}])


def test_snapshot_and_report_leave_the_store_unchanged(store, tmp_path):
    from pipeline.dashboard.report import write_report

    F.fill_store()
    before = dump_store()
    take_snapshot(ReadOnlyDatabase.current())
    write_report(tmp_path / "report.html")
    assert dump_store() == before
