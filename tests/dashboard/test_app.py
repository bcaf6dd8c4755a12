"""The live dashboard: served on loopback, read in a real browser, never writing."""

from __future__ import annotations

import inspect

import pytest

from pipeline.dashboard.app import DashboardServer, is_loopback
from pipeline.dashboard.readonly import ReadOnlyDatabase

from . import fixtures as F
from .conftest import dump_store, store_kind

RUN_ID = "0c0ffee0-0000-4000-8000-000000000001"

HEATMAP_READY = (
    "() => { const g = document.querySelector('#periodic-table .js-plotly-plot');"
    " return g && g.data && g.data[0] && g.data[0].customdata; }"
)
TABLE_NUMBERS = (
    "() => Object.fromEntries(document.querySelector('#periodic-table .js-plotly-plot').data[0].customdata.flat()"
    ".filter(c => c && (c[2] || c[3])).map(c => [c[0], [c[2], c[3]]]))"
)
TABLE_TITLE = "() => document.querySelector('#periodic-table .js-plotly-plot').layout.title.text"
FIRST_VIEW_NUMBERS = (
    "() => Object.fromEntries([...document.querySelectorAll('#periodic-table-html [data-symbol]')]"
    ".filter(c => +c.dataset.labelled || +c.dataset.failures)"
    ".map(c => [c.dataset.symbol, [+c.dataset.labelled, +c.dataset.failures]]))"
)


def expected(first=None, last=None, imported=True) -> dict:
    """symbol -> [labelled, failures] from the fixture's hand-counted tables."""
    out: dict[str, list[int]] = {}
    for index, table in enumerate((F.LABELS_BY_ELEMENT, F.FAILURES_BY_ELEMENT)):
        for (generation, element), n in table.items():
            if generation is None and not imported:
                continue
            if generation is not None and not (
                (first is None or generation >= first) and (last is None or generation <= last)
            ):
                continue
            out.setdefault(element, [0, 0])[index] += n
    return out


def test_binds_loopback_by_default(embedded_store):
    from flows.commands import dashboard as cli

    default = inspect.signature(cli.dashboard).parameters["host"].default.default
    assert default == "127.0.0.1"
    server = DashboardServer(ReadOnlyDatabase.current(), port=0)
    try:
        assert server.address[0] == "127.0.0.1"
    finally:
        server.server.server_close()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


@pytest.fixture
def served(store, monkeypatch):
    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4200")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    F.fill_store()
    before = dump_store()
    server = DashboardServer(ReadOnlyDatabase.current(), port=0, refresh_s=3600).start()
    server.wait_ready()
    yield server
    server.shutdown()
    assert dump_store() == before, "browsing the dashboard changed the store"


def set_range(page, first: int, last: int) -> None:
    for selector, value in ((".dash-range-slider-min-input", first), (".dash-range-slider-max-input", last)):
        box = page.locator(f"#gen-range {selector}")
        box.fill(str(value))
        box.press("Enter")
        box.blur()


def hover_text(page, symbol: str) -> str:
    """Move the mouse over an element's cell, as a person would, and read the tooltip."""
    point = page.evaluate(
        """(symbol) => {
            const gd = document.querySelector('#periodic-table .js-plotly-plot');
            const grid = gd.data[0].customdata;
            for (let r = 0; r < grid.length; r++) for (let c = 0; c < grid[r].length; c++) {
                if (grid[r][c] && grid[r][c][0] === symbol) {
                    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
                    return [box.left + xa._offset + xa.l2p(c), box.top + ya._offset + ya.l2p(r)];
                }
            }
        }""",
        symbol,
    )
    page.mouse.move(point[0], point[1])
    page.wait_for_selector("#periodic-table .hoverlayer .hovertext", timeout=10000)
    return page.locator("#periodic-table .hoverlayer .hovertext").text_content()


@pytest.mark.browser
def test_dashboard_in_a_browser(served, browser, store, artifacts):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    outside = []  # everything the page needs comes from the dashboard itself (no CDN)

    def only_the_dashboard(route):
        if route.request.url.startswith(served.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_dashboard)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served.url)
    page.wait_for_function(HEATMAP_READY, timeout=30000)
    page.wait_for_selector("#periodic-table .main-svg")

    # per-element numbers shown = the database's (all generations + imported)
    assert page.evaluate(TABLE_NUMBERS) == expected()
    # the layout keeps the first view's HTML table (nothing blank while plotly.js loads), hidden once the heat map is drawn
    assert page.evaluate(FIRST_VIEW_NUMBERS) == expected()
    assert not page.locator("#periodic-table-html").is_visible()
    assert page.locator("#first-view").count() == 0  # React replaced the served first view
    text = hover_text(page, "Cu")
    assert "labelled: 3" in text and "failures: 2" in text
    page.wait_for_selector("#generations tbody tr")
    rows = page.locator("#generations tbody tr")
    assert rows.count() == 3
    assert rows.nth(0).get_attribute("data-generation") == "2" and "running" in rows.nth(0).inner_text()
    link = page.locator(f'#generations a[href="http://127.0.0.1:4200/runs/flow-run/{RUN_ID}"]')
    assert link.count() == 1
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 13", timeout=30000)
    page.mouse.move(5, 5)
    page.screenshot(path=str(artifacts / f"dashboard-{store_kind(store)}.png"), full_page=True)

    # the generation filter: only generation 1, then without the imported labels
    set_range(page, 1, 1)
    page.wait_for_function(f"() => ({TABLE_TITLE})().includes('generation 1 ')", timeout=15000)
    assert page.evaluate(TABLE_NUMBERS) == expected(1, 1)
    page.locator("#imported input").uncheck()
    page.wait_for_function(f"() => !({TABLE_TITLE})().includes('imported')", timeout=15000)
    assert page.evaluate(TABLE_NUMBERS) == expected(1, 1, imported=False)
    assert "labelled: 0" in hover_text(page, "Cu")
    # the other panels follow the range too
    page.wait_for_function(
        "() => JSON.stringify(document.querySelector('#growth .js-plotly-plot').data[0].x) === '[1]'"
    )

    set_range(page, 0, 2)
    page.locator("#table-mode input[value='failures']").check()
    page.wait_for_function(f"() => ({TABLE_TITLE})().startsWith('DFT failures')", timeout=15000)
    assert page.evaluate(TABLE_NUMBERS) == expected(0, 2, imported=False)
    page.screenshot(path=str(artifacts / f"dashboard-{store_kind(store)}-failures.png"), full_page=False)
    context.close()
    assert errors == [] and outside == []


@pytest.mark.browser
def test_empty_store_in_a_browser(embedded_store, browser, artifacts):
    server = DashboardServer(ReadOnlyDatabase.current(), port=0, refresh_s=3600).start()
    try:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url)
        page.wait_for_function(HEATMAP_READY, timeout=30000)
        assert page.evaluate(TABLE_NUMBERS) == {}
        page.wait_for_selector("text=no generations yet")
        assert page.locator("text=no data yet").count() >= 3
        page.screenshot(path=str(artifacts / "dashboard-empty.png"), full_page=True)
        page.close()
        assert errors == []
    finally:
        server.shutdown()


@pytest.mark.browser
def test_first_view_needs_no_script(served, browser, store, artifacts):
    """The page's HTML alone shows the headline, the per-element numbers and the latest generations."""
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(served.url)
    assert page.evaluate(FIRST_VIEW_NUMBERS) == expected()
    assert (
        page.locator("#periodic-table-html [data-symbol='Cu']").get_attribute("title")
        == "Cu (Z=29) labelled: 3 failures: 2"
    )
    assert page.locator("#periodic-table-html [data-symbol='Cu']").is_visible()
    assert "7 labels (2 imported)" in page.locator("#summary").inner_text()
    rows = page.locator("#first-view #generations tbody tr")
    assert rows.count() == 3 and "running" in rows.nth(0).inner_text()
    page.screenshot(path=str(artifacts / f"dashboard-{store_kind(store)}-first-view.png"), full_page=True)
    context.close()


PROBE_TRACES = (
    "() => { const g = document.querySelector('#probe-errors .js-plotly-plot');"
    " return g && g.data ? g.data.map(t => [t.name, t.xaxis || 'x', t.x, t.y]) : null; }"
)


@pytest.mark.browser
def test_probe_panel_in_a_browser(embedded_store, browser, artifacts):
    """Per probe set, its errors against the labels each generation's model trained on."""
    F.fill_store()
    F.add_probe_metrics()
    server = DashboardServer(ReadOnlyDatabase.current(), port=0, refresh_s=3600).start()
    try:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url)
        page.wait_for_function(f"() => {{ const t = ({PROBE_TRACES})(); return t && t.length === 4; }}", timeout=30000)
        traces = {(name, axis): (x, y) for name, axis, x, y in page.evaluate(PROBE_TRACES)}
        assert traces["cells", "x"] == ([3, 5], [0.3, 0.15])
        assert traces["molecules", "x"] == ([3, None], [0.2, None])  # a gap, not a zero
        assert traces["cells", "x2"][1] == pytest.approx([20.0, 10.0])
        assert "Probe sets: error versus labels" in page.locator("#probe-sets h2").inner_text()
        page.locator("#probe-sets").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "dashboard-probe-sets.png"), full_page=False)
        set_range(page, 2, 2)  # generation 2 scored "cells" only
        page.wait_for_function(f"() => {{ const t = ({PROBE_TRACES})(); return t && t.length === 2; }}", timeout=15000)
        assert {name for name, *_ in page.evaluate(PROBE_TRACES)} == {"cells"}
        page.close()
        assert errors == []
    finally:
        server.shutdown()
