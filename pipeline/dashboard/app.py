"""The live dashboard: a Plotly Dash app over a snapshot refreshed in the background.

A :class:`SnapshotSource` re-runs the aggregations of :mod:`pipeline.dashboard.queries`
in a background thread every ``refresh_s`` seconds (longer when the database is slow),
and the page's callbacks only draw from the latest snapshot: moving the generation range
or choosing elements never waits on the database, and a slow database delays freshness,
not the page. The page polls for a new snapshot and redraws when one arrives.

The page Dash serves carries the first view (:mod:`pipeline.dashboard.firstview`: the
headline, labelled frames per element as an HTML periodic table, the latest generations)
in place of Dash's "Loading...", so real numbers are painted from the first response;
React then mounts the layout, which holds the same HTML table until the Plotly heat map
has drawn over it (plotly.js alone takes seconds to parse on a slow machine).

Served by werkzeug on 127.0.0.1 unless told otherwise; there is no authentication, so
binding another address logs a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Callable, Optional

from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from pipeline.dashboard import figures as F
from pipeline.dashboard.firstview import STYLE as FIRST_VIEW_STYLE
from pipeline.dashboard.firstview import periodic_table_html, to_html
from pipeline.dashboard.queries import Snapshot, take_snapshot
from pipeline.dashboard.readonly import ReadOnlyDatabase

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
DEFAULT_REFRESH_S = 60.0
#: How often the page asks whether a new snapshot exists (cheap: no database access).
POLL_MS = 3000

GRAPH_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class Drawings:
    """The figures and tables of one snapshot, each drawn once per distinct set of arguments.

    Plotly figures cost tens of milliseconds each to build; memoising them per snapshot
    makes every page load after the first (and the first, after :meth:`warm`) a lookup.
    """

    LIMIT = 512

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self._cache: dict = {}
        self._lock = threading.Lock()

    def __call__(self, function, *args):
        key = (function.__name__, *(_freeze(a) for a in args))
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        drawn = function(self.snapshot, *args)
        with self._lock:
            if len(self._cache) >= self.LIMIT:
                self._cache.clear()
            self._cache[key] = drawn
        return drawn

    def span(self, value) -> tuple[Optional[int], Optional[int]]:
        """The generation range of a slider value (None, None when there are no generations)."""
        if not self.snapshot.generation_numbers or not value:
            return None, None
        return int(value[0]), int(value[1])

    def per_generation(self, first, last) -> tuple:
        return (
            self(F.growth_figure, first, last),
            self(F.sampler_figure, first, last),
            self(F.element_generation_heatmap, first, last),
            self(F.model_quality_figure, first, last),
            self(F.calibration_figure, first, last),
            self(F.dft_throughput_figure, first, last),
            self(F.wall_time_figure),
            self(F.dft_health_figure, first, last),
            self(F.failure_figure, first, last),
            reasons_table(self(F.top_failure_reasons, first, last)),
            generations_table(F.generation_rows(self.snapshot)),  # not cached: Prefect links follow the environment
        )

    def warm(self) -> "Drawings":
        """Draw what a fresh page shows (the full range, default choices)."""
        first, last = self.span(_slider_props(self.snapshot)["value"])
        self(F.periodic_table_figure, first, last, True, "labelled")
        self(periodic_table_html, first, last)
        self.per_generation(first, last)
        self(F.element_growth_figure, first, last, F.default_elements(self.snapshot), True)
        self(F.selection_figure, first, last, None)
        self(F.element_error_figure, first, last, "model")
        self(F.probe_error_figure, first, last)
        return self


class SnapshotSource:
    """The latest :class:`Snapshot` of a read-only database, refreshed in a daemon thread."""

    def __init__(self, db: ReadOnlyDatabase, refresh_s: float = DEFAULT_REFRESH_S):
        self.db = db
        self.refresh_s = float(refresh_s)
        self._drawings: Optional[Drawings] = None
        self._version = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.last_error: Optional[str] = None

    @property
    def version(self) -> int:
        return self._version

    def latest(self) -> Optional[Snapshot]:
        drawings = self._drawings
        return drawings.snapshot if drawings else None

    def drawings(self) -> Optional[Drawings]:
        return self._drawings

    def refresh(self) -> Optional[Snapshot]:
        """Aggregate now; on a database error keep the previous snapshot and remember why."""
        with self._lock:
            try:
                snapshot = take_snapshot(self.db)
            except Exception as exc:  # shown on the page; the next refresh tries again
                self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                log.warning("dashboard refresh failed: %s", self.last_error)
                return self.latest()
            # Published only once the default view is drawn, so no page load waits on Plotly.
            self._drawings = Drawings(snapshot).warm()
            self._version += 1
            self.last_error = None
            return snapshot

    def start(self) -> "SnapshotSource":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dashboard-refresh", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.refresh()
            took = time.perf_counter() - started
            # A slow database is asked at most a third of the time.
            self._stop.wait(max(self.refresh_s, 3 * took))


# ------------------------------------------------------------------------ layout

INDEX = (
    """<!DOCTYPE html>
<html lang="en">
<head>
{%metas%}
<title>{%title%}</title>
{%favicon%}
{%css%}
<style>
/* shared */
header h1 { font-size: 22px; margin: 6px 0 2px; }
.summary { font-size: 15px; margin: 2px 0; }
.freshness { font-size: 12px; color: #666; }
.error { color: #b2182b; font-weight: 600; }
.controls { position: sticky; top: 0; z-index: 10; background: #ffffffee; border: 1px solid #ddd; border-radius: 8px;
            padding: 10px 16px 4px; margin: 10px 0; display: grid; grid-template-columns: 110px 1fr 220px; gap: 10px;
            align-items: center; }
.controls label.title { font-weight: 600; }
.option-row { display: flex; gap: 24px; align-items: center; flex-wrap: wrap; font-size: 14px; margin: 4px 0; }
.option-row .dash-dropdown, .option-row .Select { min-width: 320px; }
.note { font-size: 12px; color: #666; }
/* first view */
</style>
</head>
<body>
{%app_entry%}
<footer>{%config%}{%scripts%}{%renderer%}</footer>
</body>
</html>"""
    # The rules this page shares with the static report live in one place.
    .replace("/* shared */\n", F.SHARED_STYLE).replace("/* first view */\n", FIRST_VIEW_STYLE)
)


def _slider_props(snapshot: Optional[Snapshot]) -> dict:
    numbers = snapshot.generation_numbers if snapshot else []
    if not numbers:
        return {"min": 0, "max": 1, "value": [0, 1], "marks": {}, "disabled": True}
    lo, hi = numbers[0], numbers[-1]
    if lo == hi:
        return {"min": lo, "max": lo + 1, "value": [lo, lo], "marks": {lo: str(lo)}, "disabled": True}
    step = F.nice_step((hi - lo) / 10)
    marks = {g: str(g) for g in range(lo - lo % step + (step if lo % step else 0), hi + 1, step)}
    marks.update({lo: str(lo), hi: str(hi)})
    return {"min": lo, "max": hi, "value": [lo, hi], "marks": marks, "disabled": False}


#: What a graph shows until its callback answers (a plain dict: building a Figure per graph
#: and page load costs Plotly's validation every time).
PLACEHOLDER = {
    "data": [],
    "layout": {
        "xaxis": {"visible": False},
        "yaxis": {"visible": False},
        "height": 300,
        "template": {"layout": {"paper_bgcolor": "white", "plot_bgcolor": "white"}},
        "annotations": [{"text": "loading…", "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper", "showarrow": False,
                         "font": {"size": 15, "color": "#777"}}],
    },
}  # fmt: skip


def _graph(graph_id: str) -> dcc.Graph:
    return dcc.Graph(id=graph_id, config=GRAPH_CONFIG, figure=PLACEHOLDER)


def _element_options(snapshot: Optional[Snapshot]) -> list[dict]:
    return [{"label": e, "value": e} for e in (snapshot.elements if snapshot else [])]


def _header(source: SnapshotSource) -> html.Header:
    return html.Header(
        [
            html.H1("selfplay — dataset dashboard"),
            html.Div(_summary(source), id="summary", className="summary"),
            html.Div(_freshness(source), id="freshness", className="freshness"),
        ]
    )


def _first_view_parts(source: SnapshotSource) -> tuple:
    """The periodic table as HTML (and the figure that replaces it) and the generations table."""
    drawings = source.drawings()
    if drawings is None:
        return periodic_table_html(None), PLACEHOLDER, generations_table([])
    first, last = drawings.span(_slider_props(drawings.snapshot)["value"])
    return (
        drawings(periodic_table_html, first, last),
        drawings(F.periodic_table_figure, first, last, True, "labelled"),
        generations_table(F.generation_rows(drawings.snapshot)),
    )


def first_view_html(source: SnapshotSource) -> str:
    """What the browser paints before any script has run: headline, periodic table, latest generations."""
    table, _, generations = _first_view_parts(source)
    view = [
        _header(source),
        html.Div(
            html.Div("loading the interactive page…", className="note"),
            className="controls",
            style={"display": "block", "minHeight": "50px"},
        ),  # fmt: skip
        html.Section([html.H2("Dataset per element"), html.Div(table, className="pt-wrap")]),
        html.Section([html.H2("Latest generations"), html.Div(generations, id="first-view-generations")]),
    ]
    return to_html(html.Div(view, className="page", id="first-view"))


def _radio(radio_id: str, options: list[tuple[str, str]], value: str) -> dcc.RadioItems:
    """Inline radio buttons: ``options`` are (label, value) pairs."""
    return dcc.RadioItems(
        id=radio_id, options=[{"label": f" {label}", "value": v} for label, v in options], value=value, inline=True,
        inputStyle={"marginLeft": "14px"},
    )  # fmt: skip


def _controls(slider: dict) -> html.Div:
    """The sticky bar: the generation range and whether imported labels count."""
    return html.Div(
        className="controls",
        children=[
            html.Label("Generations", className="title", htmlFor="gen-range"),
            dcc.RangeSlider(
                id="gen-range",
                step=1,
                allowCross=False,
                updatemode="mouseup",
                tooltip={"placement": "bottom", "always_visible": False},
                **slider,
            ),  # fmt: skip
            dcc.Checklist(
                id="imported", options=[{"label": " include imported labels", "value": "imported"}], value=["imported"]
            ),
        ],
    )


def _dataset_section(table_html, table_figure) -> html.Section:
    modes = [("labelled frames", "labelled"), ("DFT failures", "failures"), ("failure rate", "failure_rate")]
    return html.Section(
        [
            html.H2("Dataset per element"),
            html.Div(className="option-row", children=_radio("table-mode", modes, "labelled")),
            html.Div(
                className="pt-wrap",
                children=[table_html, dcc.Graph(id="periodic-table", config=GRAPH_CONFIG, figure=table_figure)],
            ),
            html.Div(
                "A label counts once for every element of its frame. Hover an element for its numbers.",
                className="note",
            ),
        ]
    )


def _growth_section(snapshot: Optional[Snapshot]) -> html.Section:
    elements = F.default_elements(snapshot) if snapshot else []
    return html.Section(
        [
            html.H2("Dataset growth"),
            html.Div(className="row", children=[_graph("growth"), _graph("samplers")]),
            html.Div(
                className="option-row",
                children=[
                    dcc.Dropdown(
                        id="elements",
                        options=_element_options(snapshot),
                        value=elements,
                        multi=True,
                        placeholder="elements to plot",
                        style={"minWidth": "420px"},
                    ),  # fmt: skip
                    _radio("element-mode", [("cumulative", "cumulative"), ("per generation", "per")], "cumulative"),
                ],
            ),
            _graph("element-growth"),
            _graph("element-heatmap"),
        ]
    )


def _selection_section(snapshot: Optional[Snapshot]) -> html.Section:
    return html.Section(
        [
            html.H2("Selection"),
            html.Div(
                className="option-row",
                children=dcc.Dropdown(
                    id="selection-element",
                    options=_element_options(snapshot),
                    value=None,
                    placeholder="all frames (or choose an element)",
                    style={"minWidth": "320px"},
                ),  # fmt: skip
            ),
            _graph("selection"),
        ]
    )


def _model_section() -> html.Section:
    return html.Section(
        [
            html.H2("Model quality"),
            html.Div(className="row", children=[_graph("model-quality"), _graph("calibration")]),
            html.Div(
                className="option-row",
                children=_radio("error-set", [("new labels", "model"), ("sentinels", "sentinel")], "model"),
            ),
            _graph("element-error"),
        ]
    )


def _probe_section() -> html.Section:
    return html.Section(
        [html.H2(F.PROBE_TITLE), _graph("probe-errors"), html.Div(F.PROBE_NOTE, className="note")], id="probe-sets"
    )


def _dft_section() -> html.Section:
    return html.Section(
        [
            html.H2("DFT cost and health"),
            html.Div(className="row", children=[_graph("dft-throughput"), _graph("wall-time")]),
            html.Div(className="row", children=[_graph("dft-health"), _graph("failures")]),
            html.H3("Most frequent failure reasons", style={"fontSize": "15px"}),
            html.Div(id="failure-reasons"),
        ]
    )


def build_layout(source: SnapshotSource) -> html.Div:
    snapshot = source.latest()
    slider = _slider_props(snapshot)
    table_html, table_figure, generations = _first_view_parts(source)
    return html.Div(
        className="page",
        children=[
            _header(source),
            _controls(slider),
            _dataset_section(table_html, table_figure),
            _growth_section(snapshot),
            _selection_section(snapshot),
            _model_section(),
            _probe_section(),
            _dft_section(),
            html.Section([html.H2("Latest generations"), html.Div(generations, id="generations-table")]),
            dcc.Interval(id="tick", interval=POLL_MS),
            dcc.Store(id="version", data=source.version),
            dcc.Store(id="bounds", data=[slider["min"], slider["max"]]),
        ],
    )


def _summary(source: SnapshotSource) -> str:
    snapshot = source.latest()
    return F.summary_line(snapshot) if snapshot else "aggregating the store… (the page fills in when it is done)"


def _freshness(source: SnapshotSource) -> list:
    snapshot = source.latest()
    parts = []
    if snapshot:
        parts.append(
            f"database {snapshot.database} ({snapshot.engine}) · aggregated {snapshot.taken_at:%Y-%m-%d %H:%M:%S} UTC "
            f"in {snapshot.seconds:.2f} s · refreshed every {source.refresh_s:.0f} s or more · read-only"
        )
    if snapshot and snapshot.unsummarised_completed:
        n = len(snapshot.unsummarised_completed)
        parts.append(f" · {n} completed generation{'s' if n != 1 else ''} without a summary, aggregated live "
                     "(selfplay db summarise makes refreshes faster)")  # fmt: skip
    if source.last_error:
        parts.append(html.Span(f" · last refresh failed: {source.last_error}", className="error"))
    return parts


def generations_table(rows: list[dict]) -> html.Table | html.Div:
    if not rows:
        return html.Div("no generations yet", className="note")
    header = html.Tr([html.Th(c) for c in F.TABLE_COLUMNS_SHOWN])
    body = []
    for row in rows:
        cells = []
        for column in F.TABLE_COLUMNS_SHOWN:
            value = row.get(column)
            if column == "status":
                cell = html.Td(html.Span(value, className=f"status status-{value}", title=row.get("error") or ""))
            elif column == "Prefect run":
                run_id = row.get("prefect_flow_run_id")
                if value:
                    cell = html.Td(html.A(run_id[:8], href=value, target="_blank", rel="noopener"))
                elif run_id:
                    cell = html.Td(run_id[:8], title="set PREFECT_UI_URL or PREFECT_API_URL to link the run")
                else:
                    cell = html.Td("")
            else:
                cell = html.Td("" if value is None else (f"{value:,}" if isinstance(value, int) else str(value)))
            cells.append(cell)
        body.append(html.Tr(cells, **{"data-generation": str(row.get("generation"))}))
    return html.Table([html.Thead(header), html.Tbody(body)], className="data", id="generations")


def reasons_table(reasons: list[tuple[str, int]]) -> html.Table | html.Div:
    if not reasons:
        return html.Div("no DFT failures in this range", className="note")
    return html.Table(
        [html.Thead(html.Tr([html.Th("failures"), html.Th("reason")]))]
        + [html.Tbody([html.Tr([html.Td(f"{n:,}"), html.Td(reason, className="reason")]) for reason, n in reasons])],
        className="data",
    )


# --------------------------------------------------------------------------- app


class DashboardApp(Dash):
    """Dash, with the first view painted from the page's HTML instead of "Loading...".

    React renders into the same element and replaces it with the layout, which holds the
    same periodic table and generations table, so the numbers stay on screen throughout.
    """

    def __init__(self, source: SnapshotSource, **kwargs):
        super().__init__(__name__, **kwargs)
        self.source = source

    def interpolate_index(self, **kwargs) -> str:
        kwargs["app_entry"] = f'<div id="react-entry-point">{first_view_html(self.source)}</div>'
        return super().interpolate_index(**kwargs)


def create_app(source: SnapshotSource) -> Dash:
    app = DashboardApp(source, title="selfplay dashboard", update_title=None, index_string=INDEX)
    app.layout = lambda: build_layout(source)
    _snapshot_callbacks(app, source)

    def current() -> Drawings:
        drawings = source.drawings()
        if drawings is None:
            raise PreventUpdate
        return drawings

    _range_callbacks(app, current)
    _choice_callbacks(app, current)
    return app


def _kept_range(props: dict, value, bounds) -> list:
    """The slider's value after a refresh: the range chosen, clamped to the new bounds; an
    end that was at its bound follows the bound (a new generation comes into view)."""
    if not (value and bounds and not props["disabled"]):
        return props["value"]
    old_lo, old_hi = bounds
    lo = max(props["min"], min(int(value[0]), props["max"]))
    hi = props["max"] if int(value[1]) >= old_hi else max(lo, min(int(value[1]), props["max"]))
    if int(value[0]) <= old_lo:
        lo = props["min"]
    return [lo, hi]


def _snapshot_callbacks(app: Dash, source: SnapshotSource) -> None:
    """Polling for a new snapshot, and the controls and headline that follow it."""

    @app.callback(Output("version", "data"), Input("tick", "n_intervals"), State("version", "data"))
    def poll(_, known):
        if source.version == known:
            raise PreventUpdate
        return source.version

    @app.callback(
        Output("gen-range", "min"), Output("gen-range", "max"), Output("gen-range", "marks"),
        Output("gen-range", "value"), Output("gen-range", "disabled"), Output("bounds", "data"),
        Output("elements", "options"), Output("elements", "value"), Output("selection-element", "options"),
        Output("summary", "children"), Output("freshness", "children"),
        Input("version", "data"), State("gen-range", "value"), State("bounds", "data"), State("elements", "value"),
        prevent_initial_call=True,
    )  # fmt: skip
    def on_new_snapshot(_, value, bounds, chosen):
        snapshot = source.latest()
        props = _slider_props(snapshot)
        props["value"] = _kept_range(props, value, bounds)
        options = _element_options(snapshot)
        known = {o["value"] for o in options}
        chosen = [e for e in (chosen or []) if e in known] or (F.default_elements(snapshot) if snapshot else [])
        return (
            props["min"], props["max"], props["marks"], props["value"], props["disabled"], [props["min"], props["max"]],
            options, chosen, options, _summary(source), _freshness(source),
        )  # fmt: skip


def _range_callbacks(app: Dash, current: Callable[[], Drawings]) -> None:
    """The figures that follow the generation range alone (and the periodic table's mode)."""

    @app.callback(
        Output("periodic-table", "figure"),
        Input("version", "data"), Input("gen-range", "value"), Input("imported", "value"), Input("table-mode", "value"),
    )  # fmt: skip
    def periodic_table(_, value, imported, mode):
        draw = current()
        first, last = draw.span(value)
        return draw(F.periodic_table_figure, first, last, bool(imported), mode or "labelled")

    @app.callback(
        Output("growth", "figure"), Output("samplers", "figure"), Output("element-heatmap", "figure"),
        Output("model-quality", "figure"), Output("calibration", "figure"), Output("dft-throughput", "figure"),
        Output("wall-time", "figure"), Output("dft-health", "figure"), Output("failures", "figure"),
        Output("failure-reasons", "children"), Output("generations-table", "children"),
        Input("version", "data"), Input("gen-range", "value"),
    )  # fmt: skip
    def per_generation(_, value):
        draw = current()
        return draw.per_generation(*draw.span(value))

    @app.callback(Output("probe-errors", "figure"), Input("version", "data"), Input("gen-range", "value"))
    def probe_errors(_, value):
        draw = current()
        return draw(F.probe_error_figure, *draw.span(value))


def _choice_callbacks(app: Dash, current: Callable[[], Drawings]) -> None:
    """The figures that also follow a choice of their own (elements, error set)."""

    @app.callback(
        Output("element-growth", "figure"),
        Input("version", "data"), Input("gen-range", "value"), Input("elements", "value"), Input("element-mode", "value"),
    )  # fmt: skip
    def element_growth(_, value, elements, mode):
        draw = current()
        first, last = draw.span(value)
        return draw(F.element_growth_figure, first, last, elements or [], mode != "per")

    @app.callback(
        Output("selection", "figure"),
        Input("version", "data"), Input("gen-range", "value"), Input("selection-element", "value"),
    )  # fmt: skip
    def selection(_, value, element):
        draw = current()
        first, last = draw.span(value)
        return draw(F.selection_figure, first, last, element or None)

    @app.callback(
        Output("element-error", "figure"),
        Input("version", "data"), Input("gen-range", "value"), Input("error-set", "value"),
    )  # fmt: skip
    def element_error(_, value, which):
        draw = current()
        first, last = draw.span(value)
        return draw(F.element_error_figure, first, last, which or "model")


# ------------------------------------------------------------------------ server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """The app served by werkzeug (threaded), startable in a background thread for tests."""

    def __init__(
        self,
        db: ReadOnlyDatabase,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        refresh_s: float = DEFAULT_REFRESH_S,
    ):
        from werkzeug.serving import make_server

        if not is_loopback(host):
            log.warning("dashboard bound to %s: reachable from other machines, and it has no authentication", host)
        # One line per HTTP request (the page polls every few seconds) is noise in a terminal.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.source = SnapshotSource(db, refresh_s)
        self.app = create_app(self.source)
        self.server = make_server(host, port, self.app.server, threaded=True)
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

    def serve_forever(self) -> None:
        self.source.start()
        try:
            self.server.serve_forever()
        finally:
            self.source.stop()

    def start(self) -> "DashboardServer":
        self.source.start()
        self._thread = threading.Thread(target=self.server.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> Snapshot:
        deadline = time.time() + timeout
        while time.time() < deadline:
            snapshot = self.source.latest()
            if snapshot is not None:
                return snapshot
            time.sleep(0.05)
        raise TimeoutError(f"no dashboard snapshot after {timeout} s")

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.source.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
