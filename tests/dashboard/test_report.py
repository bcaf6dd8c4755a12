"""The static report: one file, nothing fetched from a network."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from pipeline.dashboard.report import write_report

from . import fixtures as F
from .conftest import store_kind

REPORT_GRAPHS = 17


class ResourceCollector(HTMLParser):
    """Every URL a browser would fetch while loading the page (scripts, styles, images, frames)."""

    FETCHING = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "embed": "src",
                "object": "data", "audio": "src", "video": "src"}  # fmt: skip

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0
        self.graphs = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "div" and "plotly-graph-div" in (attrs.get("class") or ""):
            self.graphs += 1
        name = self.FETCHING.get(tag)
        if name and attrs.get(name):
            self.urls.append(attrs[name])


def test_report_is_self_contained(embedded_store, tmp_path):
    F.fill_store()
    path = write_report(tmp_path / "out" / "report.html", env={"PREFECT_UI_URL": "http://127.0.0.1:4200"})
    text = path.read_text(encoding="utf-8")
    parser = ResourceCollector()
    parser.feed(text)
    assert parser.urls == []  # nothing to fetch: plotly.js and the data are inline
    assert parser.graphs == REPORT_GRAPHS
    assert "Plotly.newPlot" in text and path.stat().st_size > 3_000_000  # plotly.js itself is inlined
    # the Prefect link is a plain hyperlink, not a resource
    assert 'href="http://127.0.0.1:4200/runs/flow-run/0c0ffee0-0000-4000-8000-000000000001"' in text
    assert not list(tmp_path.joinpath("out").glob(".report.html.*"))  # the temporary file was renamed
    # the per-element numbers are in the HTML itself, painted before plotly.js runs
    assert 'title="Cu (Z=29) labelled: 3 failures: 2"' in text and 'title="Al (Z=13) labelled: 2 failures: 1"' in text
    assert text.index('id="periodic-table-html"') < text.index('id="plotly-js"')


def test_report_of_an_empty_store(embedded_store, tmp_path):
    text = write_report(tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "no generations yet" in text and "no data yet" in text


def test_report_to_an_unwritable_place_is_a_plain_error(embedded_store, tmp_path):
    from pipeline.errors import DataFileError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataFileError, match="cannot write report"):
        write_report(blocker / "report.html")


@pytest.mark.browser
def test_report_renders_offline(browser, store, tmp_path, artifacts):
    F.fill_store()
    path = write_report(tmp_path / "report.html")
    context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
    requested = []

    def refuse(route):
        if not route.request.url.startswith("file://"):
            requested.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", refuse)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri())
    page.wait_for_function(
        f"() => {{ const g = document.querySelectorAll('.js-plotly-plot');"
        f" return g.length === {REPORT_GRAPHS} && [...g].every(d => d._fullLayout && d.querySelector('.main-svg')); }}",
        timeout=30000,
    )
    cells = page.evaluate(
        "() => document.getElementById('periodic-table').data[0].customdata.flat().filter(c => c && (c[2] || c[3]))"
    )
    assert {c[0]: (c[2], c[3]) for c in cells} == {"H": (3, 0), "C": (1, 0), "O": (1, 3), "Al": (2, 1), "Cu": (3, 2)}
    assert not page.locator("#periodic-table-html").is_visible()  # the heat map replaced the HTML table
    page.screenshot(path=str(artifacts / f"report-{store_kind(store)}.png"), full_page=True)
    context.close()
    assert requested == [] and errors == []


def test_the_flows_report_shows_its_own_generation_completed(embedded_store, tmp_path):
    """The report stage writes the report before the flow marks the generation finished."""
    import re

    from flows.config import load_config
    from flows.stage_state import finish_generation, run_stage
    from flows.stages import StageContext, report_stage
    from pipeline.dashboard.queries import take_snapshot
    from pipeline.dashboard.readonly import ReadOnlyDatabase
    from pipeline.documents import Generation

    F.fill_store()
    config = load_config(workdir=tmp_path, generation={"export_hdf5": False, "write_report": True})
    generation = Generation.objects.get(number=2)  # running in the fixture
    ctx = StageContext(config, generation, model_loader=lambda *_: None)
    result = run_stage(generation, "report", lambda: report_stage(ctx))
    text = open(result["files"]["report"], encoding="utf-8").read()
    row = re.search(r'<tr data-generation="2">.*?</tr>', text).group(0)
    assert 'class="status status-completed"' in row and "running" not in row
    generation.reload()
    assert generation.status == "running"  # the database says so until the flow's next step...
    finish_generation(generation)
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    assert snapshot.generation(2)["status"] == "completed"  # ...which the report anticipated
    # the report stage also left the generation's dashboard summary, used once it is completed
    assert snapshot.summarised == [2] and snapshot.unsummarised_completed == [0, 1]
    assert snapshot.totals == take_snapshot(ReadOnlyDatabase.current(), use_summaries=False).totals


def test_report_without_finishing_shows_the_stored_status(embedded_store, tmp_path):
    import re

    F.fill_store()
    text = write_report(tmp_path / "report.html").read_text(encoding="utf-8")
    row = re.search(r'<tr data-generation="2">.*?</tr>', text).group(0)
    assert 'class="status status-running"' in row


def plotted(text: str, div_id: str) -> list[dict]:
    """The traces the report draws into ``div_id`` (the data of its Plotly.newPlot call)."""
    import json
    import re

    call = re.search(rf'Plotly\.newPlot\(\s*"{re.escape(div_id)}",\s*', text)
    return json.JSONDecoder().raw_decode(text, call.end())[0]


def test_report_shows_probe_set_errors_versus_labels(embedded_store, tmp_path):
    F.fill_store()
    F.add_probe_metrics()
    text = write_report(tmp_path / "report.html").read_text(encoding="utf-8")
    parser = ResourceCollector()
    parser.feed(text)
    assert parser.graphs == REPORT_GRAPHS
    section = text[text.index('<section id="probe-sets">') :]
    section = section[: section.index("</section>")]
    assert "<h2>Probe sets: error versus labels</h2>" in section and 'id="probe-errors"' in section
    traces = {(t["name"], t.get("xaxis", "x")): t for t in plotted(text, "probe-errors")}
    assert sorted(traces) == [("cells", "x"), ("cells", "x2"), ("molecules", "x"), ("molecules", "x2")]
    assert traces["cells", "x"]["x"] == [3, 5] and traces["cells", "x"]["y"] == [0.3, 0.15]  # force MAE, eV/Å
    assert traces["cells", "x2"]["y"] == pytest.approx([20.0, 10.0])  # energy MAE, meV/atom
    # generation 2 did not score "molecules": a gap in its line, never a zero
    assert traces["molecules", "x"]["y"] == [0.2, None] and traces["molecules", "x"]["connectgaps"] is False


def test_report_without_probe_sets_says_so(embedded_store, tmp_path):
    F.fill_store()
    text = write_report(tmp_path / "report.html").read_text(encoding="utf-8")
    assert plotted(text, "probe-errors") == []
    assert "no model scored on a probe set yet" in text
