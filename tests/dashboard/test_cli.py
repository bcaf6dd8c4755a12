"""``selfplay report`` and ``selfplay dashboard``: registration, errors, the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from . import fixtures as F


def test_commands_are_registered():
    from flows.cli import app

    names = {command.name for command in app.registered_commands}
    assert {"dashboard", "report"} <= names


def test_bad_options_are_plain_errors():
    from flows.commands import dashboard as cli
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--port must be between 1 and 65535 \(got 70000\)"):
        cli.dashboard(host="127.0.0.1", port=70000, refresh=60.0)
    with pytest.raises(ConfigError, match="--refresh must be positive"):
        cli.dashboard(host="127.0.0.1", port=8050, refresh=0)


def test_report_needs_a_persistent_store(tmp_path, monkeypatch):
    from flows.commands import dashboard as cli
    from pipeline.errors import StoreError

    for name in [n for n in os.environ if n.startswith("SELFPLAY_")]:
        monkeypatch.delenv(name)
    with pytest.raises(StoreError, match="no MongoDB configured"):
        cli.report(out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.mongo
def test_report_command_against_a_server(server_store, tmp_path):
    F.fill_store()
    out = tmp_path / "reports" / "report.html"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    env["SELFPLAY_MONGODB_URI"] = server_store
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "report", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    text = out.read_text(encoding="utf-8")
    assert "7 labels (2 imported)" in text and "Plotly.newPlot" in text


@pytest.mark.mongo
def test_summarise_command_fills_in_missing_summaries(server_store, monkeypatch):
    from flows.commands import dashboard as cli
    from pipeline.dashboard.summaries import missing_summaries

    F.fill_store()
    monkeypatch.setenv("SELFPLAY_MONGODB_URI", server_store)
    assert missing_summaries() == [0, 1]
    cli.summarise(all_generations=False)
    assert missing_summaries() == []
    cli.summarise(all_generations=False)  # nothing left to do
    cli.summarise(all_generations=True)
    assert missing_summaries() == []
