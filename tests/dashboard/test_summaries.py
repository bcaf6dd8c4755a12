"""Per-generation summaries: the same numbers as the live aggregation, used only when valid."""

from __future__ import annotations

import mongoengine as me

from pipeline.dashboard import figures as FIG
from pipeline.dashboard.queries import TABLE_NAMES, live_tables, split_by_generation, take_snapshot
from pipeline.dashboard.readonly import ReadOnlyDatabase
from pipeline.dashboard.summaries import (
    COLLECTION,
    SCHEMA,
    decode,
    encode,
    missing_summaries,
    read_summaries,
    write_generation_summary,
    write_summaries,
)

from . import fixtures as F

COMPARED = (*TABLE_NAMES, "labels_by_generation", "totals", "generation_numbers", "elements")


def compare(a, b) -> None:
    for name in COMPARED:
        assert getattr(a, name) == getattr(b, name), name


def test_live_tables_match_hand_counts(store):
    F.fill_store()
    tables = live_tables(ReadOnlyDatabase.current())
    assert tables["labels_by_element"] == F.LABELS_BY_ELEMENT
    assert tables["labels_by_source"] == F.LABELS_BY_SOURCE
    assert tables["wall_time_by_size"] == F.WALL_TIME_BY_GENERATION_AND_SIZE
    assert tables["failure_reasons"] == F.FAILURE_REASONS
    # generation 1 alone, as its summary is computed
    only = live_tables(ReadOnlyDatabase.current(), {"generation": {"$in": [1]}})
    assert only["labels_by_source"] == {k: v for k, v in F.LABELS_BY_SOURCE.items() if k[0] == 1}
    assert only["dft_time"] == {1: F.DFT_TIME[1]}


def test_snapshot_from_summaries_equals_the_live_aggregation(store):
    F.fill_store()
    db = ReadOnlyDatabase.current()
    live = take_snapshot(db, use_summaries=False)
    assert live.summarised == [] and live.labels_by_source == F.LABELS_BY_SOURCE
    assert missing_summaries() == [0, 1]  # the completed generations of the fixture
    assert write_summaries() == [0, 1]
    assert missing_summaries() == []
    summarised = take_snapshot(db)
    assert summarised.summarised == [0, 1] and summarised.unsummarised_completed == []
    compare(summarised, live)
    # and both are the hand counts
    assert summarised.labels_by_element == F.LABELS_BY_ELEMENT
    assert summarised.labels_by_generation == F.LABELS_BY_GENERATION
    assert summarised.wall_time_by_size == F.WALL_TIME_BY_SIZE
    assert summarised.totals == {"frames": 10, "labels": 7, "failures": 3, "imported_labels": 2, "generations": 3}


def test_summaries_are_read_not_recomputed(store):
    """Tampering with a stored summary shows on the page: the numbers come from it."""
    F.fill_store()
    write_summaries()
    database = me.get_db()
    doc = database[COLLECTION].find_one({"_id": 0})
    tables = decode(doc["tables"], 0)
    tables["labels_by_element"][(0, "Cu")] = 99
    database[COLLECTION].update_one({"_id": 0}, {"$set": {"tables": encode(tables, 0)}})
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    assert snapshot.labels_by_element[(0, "Cu")] == 99
    assert snapshot.labels_by_element[(1, "Al")] == F.LABELS_BY_ELEMENT[(1, "Al")]
    # a summary of another schema is ignored: generation 0 is aggregated live again
    database[COLLECTION].update_one({"_id": 0}, {"$set": {"schema": SCHEMA + 1}})
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    assert snapshot.summarised == [1] and snapshot.unsummarised_completed == [0]
    assert snapshot.labels_by_element == F.LABELS_BY_ELEMENT


def test_summaries_of_unfinished_generations_are_ignored(store):
    """Generation 2 is running: its summary (taken too early) must not hide labels added since."""
    import numpy as np
    from ase.build import molecule

    from pipeline.store import add_frame, add_label

    F.fill_store()
    assert write_summaries(numbers=[0, 1, 2]) == [0, 1, 2]
    frame, _ = add_frame(molecule("NH3"), source="random", generation=2, selected_as="candidate")
    add_label(frame, theory=F.THEORY, energy=-4.0, forces=np.zeros((4, 3)), generation=2, wall_time=3.0,
              info={"device": "cpu", "scf_cycles": 7})  # fmt: skip
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    assert snapshot.summarised == [0, 1]
    assert snapshot.labels_by_element[(2, "N")] == 1 and snapshot.labels_by_element[(2, "H")] == 1
    assert snapshot.labels_by_source[(2, "random")] == 1 and snapshot.dft_time[2] == {"n": 1, "wall_time": 3.0}
    compare(snapshot, take_snapshot(ReadOnlyDatabase.current(), use_summaries=False))


def test_a_generation_without_labels_gets_an_empty_summary(embedded_store):
    from pipeline.documents import Generation

    Generation(number=0, status="completed").save()
    write_generation_summary(0)
    assert read_summaries(ReadOnlyDatabase.current(), [0]) == {0: {name: {} for name in TABLE_NAMES}}
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    assert snapshot.summarised == [0] and snapshot.totals["labels"] == 0


def test_encoding_round_trips_every_table(embedded_store):
    F.fill_store()
    parts = split_by_generation(live_tables(ReadOnlyDatabase.current()))
    assert set(parts) == {0, 1, None}
    for number in (0, 1):
        assert decode(encode(parts[number], number), number) == parts[number]


def test_labels_without_a_source_are_counted_as_unknown(store):
    """Labels written before labels carried their frame's source still count, in their own bucket."""
    F.fill_store()
    database = me.get_db()
    f5 = database["frames"].find_one({"generation": 1, "source": "melt_quench"})
    database["labels"].update_one({"frame": f5["_id"]}, {"$unset": {"source": ""}})
    expected = dict(F.LABELS_BY_SOURCE)
    del expected[(1, "melt_quench")]
    expected[(1, None)] = 1
    live = take_snapshot(ReadOnlyDatabase.current(), use_summaries=False)
    assert live.labels_by_source == expected
    assert live.labels_by_generation == F.LABELS_BY_GENERATION  # nothing lost
    write_summaries()
    summarised = take_snapshot(ReadOnlyDatabase.current())
    assert summarised.summarised == [0, 1]
    compare(summarised, live)
    fig = FIG.sampler_figure(summarised)
    bars = {trace.name: dict(zip(trace.x, trace.y)) for trace in fig.data}
    assert bars[FIG.UNKNOWN_SOURCE] == {0: 0, 1: 1, 2: 0}
    assert bars["random"] == {0: 2, 1: 0, 2: 0} and bars["substitution"] == {0: 0, 1: 1, 2: 0}
    assert "import" not in bars  # imported labels belong to no generation


def test_ferretdb_scan_path_gives_the_pipelines_numbers(store):
    """On FerretDB v1 the unsummarised part is read with one find per collection and counted in Python."""
    from pipeline.dashboard.queries import scanned_tables

    F.fill_store()
    db = ReadOnlyDatabase.current()
    for match in ({"generation": {"$nin": [0]}}, {"generation": {"$in": [0, 1]}}, {"generation": {"$nin": []}}):
        assert scanned_tables(db, match) == live_tables(db, match, scan=False), match
    everything = scanned_tables(db, {"generation": {"$nin": []}})
    assert everything["labels_by_source"] == F.LABELS_BY_SOURCE
    assert everything["wall_time_by_size"] == F.WALL_TIME_BY_GENERATION_AND_SIZE
    assert everything["failure_reasons"] == F.FAILURE_REASONS
    assert everything["scf_cycles"] == F.SCF_CYCLES and everything["dft_time"] == F.DFT_TIME
