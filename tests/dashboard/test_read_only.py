"""``connect(read_only=True)``: what the dashboard and the report use creates no index."""

from __future__ import annotations

import uuid

import mongoengine as me
import pytest
from pymongo import monitoring

from pipeline.dashboard.queries import take_snapshot
from pipeline.dashboard.readonly import ReadOnlyDatabase
from pipeline.documents import ALL_DOCUMENTS, Frame, Generation, Label


class CommandLog(monitoring.CommandListener):
    """Names of the commands sent while ``recording`` (pymongo listeners cannot be unregistered)."""

    recording = False
    names: list[str] = []

    def started(self, event):
        if CommandLog.recording:
            CommandLog.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


monitoring.register(CommandLog())


def read_everything(tmp_path) -> None:
    """What the dashboard and the report do, plus mongoengine queries on every document class."""
    from pipeline.dashboard.report import write_report

    for document in ALL_DOCUMENTS:
        document.objects.count()
        document.objects.first()
    take_snapshot(ReadOnlyDatabase.current())
    write_report(tmp_path / "report.html")


def indexes() -> dict:
    db = me.get_db()
    return {name: sorted(db[name].index_information()) for name in db.list_collection_names()}


def test_read_only_embedded_store_creates_no_index(tmp_path):
    from pipeline.store import connect

    try:
        connect(None, database=f"selfplay_test_{uuid.uuid4().hex[:10]}", read_only=True)
        read_everything(tmp_path)
        assert all(names == ["_id_"] for names in indexes().values()), indexes()
        # the same reads after a writable connect do create them (so the check above can fail)
        connect(None, database=me.get_db().name)
        Frame.objects.count()
        assert "hash_1" in indexes().get("frames", [])
    finally:
        me.disconnect()


@pytest.mark.mongo
def test_read_only_server_connection_sends_no_create_indexes(mongo_server_uri, tmp_path):
    from pipeline.store import connect

    name = f"selfplay_test_{uuid.uuid4().hex[:10]}"
    uri = f"{mongo_server_uri}/{name}"
    try:
        # a store written by the pipeline (indexes exist), then read by a read-only connection
        connect(uri)
        Generation(number=0, status="completed").save()
        connect(uri, read_only=True)
        CommandLog.names = []
        CommandLog.recording = True
        read_everything(tmp_path)
        CommandLog.recording = False
        assert "createIndexes" not in CommandLog.names
        assert CommandLog.names.count("find") >= 5  # the reads did happen (on FerretDB the snapshot uses find)
        assert Label.objects.count() == 0 and Generation.objects.count() == 1

        # on a fresh database, nothing is created at all
        fresh = f"{name}_fresh"
        connect(f"{mongo_server_uri}/{fresh}", read_only=True)
        CommandLog.names = []
        CommandLog.recording = True
        read_everything(tmp_path)
        CommandLog.recording = False
        assert "createIndexes" not in CommandLog.names
        assert indexes() == {}

        # a writable connection on the same fresh database creates them (the check can fail)
        CommandLog.names = []
        CommandLog.recording = True
        connect(f"{mongo_server_uri}/{fresh}")
        CommandLog.recording = False
        assert "createIndexes" in CommandLog.names
        me.get_db().client.drop_database(fresh)
    finally:
        CommandLog.recording = False
        try:
            me.get_db().client.drop_database(name)
        finally:
            me.disconnect()


def test_dashboard_commands_connect_read_only(monkeypatch, tmp_path):
    """``selfplay report`` (and ``selfplay dashboard``) pass read_only=True to connect."""
    import pipeline.store
    from flows.commands import dashboard as cli

    seen = {}

    def fake_connect(uri, **kwargs):
        seen.update(kwargs)
        raise pipeline.store.StoreUnavailable("stop here")

    monkeypatch.setenv("SELFPLAY_MONGODB_URI", "mongodb://127.0.0.1:1/x")
    monkeypatch.setattr(pipeline.store, "connect", fake_connect)
    with pytest.raises(pipeline.store.StoreUnavailable):
        cli.report(out=tmp_path / "r.html")
    assert seen.get("read_only") is True
    seen.clear()
    with pytest.raises(pipeline.store.StoreUnavailable):
        cli.dashboard(host="127.0.0.1", port=8050, refresh=60.0)
    assert seen.get("read_only") is True
