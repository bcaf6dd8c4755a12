"""Plotly figures and tables built from a :class:`~pipeline.dashboard.queries.Snapshot`.

Shared by the live app and the static report. Every function takes the snapshot and a
generation range (``first``/``last``, inclusive, None for open ends) and works only on
the snapshot's reduced tables, so drawing costs nothing that grows with the frames.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Optional

import plotly.colors
import plotly.graph_objects as go
from ase.data import atomic_numbers, chemical_symbols
from plotly.subplots import make_subplots

from pipeline.dashboard.queries import Snapshot, element_order

#: Page rules shared by the live dashboard and the static report.
SHARED_STYLE = """
body { margin: 0; background: #f4f5f7; color: #222; font-family: Inter, "Segoe UI", Helvetica, Arial, sans-serif; }
.page { max-width: 1500px; margin: 0 auto; padding: 12px 20px 40px; }
section { background: white; border: 1px solid #e2e2e2; border-radius: 8px; padding: 8px 14px 12px; margin: 14px 0; }
section h2 { font-size: 17px; margin: 6px 0 8px; }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 10px; align-items: start; }
table.data { border-collapse: collapse; width: 100%; font-size: 13px; }
table.data th { text-align: left; border-bottom: 2px solid #ccc; padding: 5px 8px; background: #fafafa; }
table.data td { border-bottom: 1px solid #eee; padding: 4px 8px; white-space: nowrap; }
table.data td.reason { white-space: normal; }
.status { padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.status-completed { background: #e5f5e0; color: #1b5e20; }
.status-running { background: #e3f2fd; color: #0d47a1; }
.status-failed { background: #fde0dd; color: #b71c1c; }
.status-pending { background: #eeeeee; color: #555; }
"""

#: Elements the project supports (pipeline.atoms: Z <= 83); the table shows through Rn.
MAX_SUPPORTED_Z = 83
TABLE_LAST_Z = 86

COLORS = {
    "labelled": "#1f77b4",
    "failures": "#d62728",
    "accurate": "#2ca02c",
    "candidate": "#ff7f0e",
    "failed": "#d62728",
    "unscored": "#9e9e9e",
    "selected": "#17becf",
    "sentinel": "#9467bd",
    "lo": "#2ca02c",
    "hi": "#d62728",
}
SELECTION_CLASSES = ("accurate", "candidate", "failed", "unscored")
#: Calibration points drawn at most (SVG stays responsive).
MAX_CALIBRATION_POINTS = 1500
STAGE_MARKS = {"completed": "✓", "running": "…", "failed": "✗", "pending": "·"}
FONT = dict(family="Inter, 'Segoe UI', Helvetica, Arial, sans-serif", size=13)


# ----------------------------------------------------------------------- helpers


def short(n: float) -> str:
    """1234 -> '1.2k', 2_500_000 -> '2.5M'."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            value = n / limit
            return f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return f"{n:.0f}"


def in_range(generation: Optional[int], first: Optional[int], last: Optional[int]) -> bool:
    return generation is not None and (first is None or generation >= first) and (last is None or generation <= last)


def as_datetime(value) -> Optional[datetime]:
    """Datetimes are stored naive in UTC, or as ISO strings in stage records."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def format_time(value) -> str:
    moment = as_datetime(value)
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours:02d} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _style(fig: go.Figure, title: str, height: int = 360, legend: bool = True) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)),
        template="plotly_white",
        font=FONT,
        height=height,
        margin=dict(l=60, r=20, t=60 if legend else 45, b=45),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"),
        showlegend=legend,
        hoverlabel=dict(font_size=13),
    )
    return fig


def empty_figure(title: str, message: str = "no data yet", height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font=dict(size=15, color="#777")
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height=height, legend=False)


def nice_step(raw: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50... at least ``raw``."""
    if raw <= 1:
        return 1
    exponent = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * exponent:
            return int(factor * exponent)
    return int(10 * exponent)


def _generation_axis(fig: go.Figure, numbers: list[int]) -> None:
    """Integer generation ticks (about ten of them) spanning exactly the generations shown."""
    fig.update_xaxes(title_text="generation", tickformat="d")
    if numbers:
        lo, hi = min(numbers), max(numbers)
        fig.update_xaxes(range=[lo - 0.6, hi + 0.6], tick0=0, dtick=nice_step((hi - lo) / 10))


def _count_axis(fig: go.Figure, values: Iterable, **kwargs) -> None:
    """A count axis from zero; integer ticks when the counts are small."""
    largest = max([v for v in values if v is not None] + [0])
    ticks = {"tickmode": "linear", "tick0": 0, "dtick": 1} if largest <= 6 else {"tickmode": "auto"}
    fig.update_yaxes(rangemode="tozero", **ticks, **kwargs)


def _numbers(snapshot: Snapshot, first: Optional[int], last: Optional[int]) -> list[int]:
    return [g for g in snapshot.generation_numbers if in_range(g, first, last)]


# --------------------------------------------------------------- periodic table


def table_position(z: int) -> tuple[int, int]:
    """(row, column) of element ``z`` (1..86) in the 18-column table; lanthanides on row 7."""
    if z == 1:
        return 0, 0
    if z == 2:
        return 0, 17
    for row, (start, end) in enumerate(((3, 10), (11, 18)), start=1):
        if start <= z <= end:
            offset = z - start
            return row, offset if offset < 2 else offset + 10
    if 19 <= z <= 36:
        return 3, z - 19
    if 37 <= z <= 54:
        return 4, z - 37
    if z in (55, 56):
        return 5, z - 55
    if 57 <= z <= 71:
        return 7, z - 57 + 2
    if 72 <= z <= TABLE_LAST_Z:
        return 5, z - 72 + 3
    raise ValueError(f"element {z} is outside the table shown (1..{TABLE_LAST_Z})")


TABLE_ROWS, TABLE_COLUMNS = 8, 18


@dataclass(frozen=True)
class _LogScale:
    """The colour range of a count heat map: log10 of the smallest and largest non-zero
    counts (at least one decade apart), and the value drawn for zero, a grey band below."""

    nonzero: tuple[int, ...]
    lo: float
    hi: float
    zero_z: float

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> "_LogScale":
        nonzero = tuple(
            n for symbol, n in counts.items() if n > 0 and atomic_numbers.get(symbol, 999) <= MAX_SUPPORTED_Z
        )
        hi = math.log10(max(nonzero)) if nonzero else 1.0
        lo = min(math.log10(min(nonzero)) if nonzero else 0.0, hi - 1.0)
        return cls(nonzero=nonzero, lo=lo, hi=hi, zero_z=lo - 0.12 / 0.88 * (hi - lo))


@dataclass
class _TableCells:
    """The heat map's grids (rows × columns of the table) and the plain symbols drawn on it."""

    z: list = field(default_factory=lambda: [[None] * TABLE_COLUMNS for _ in range(TABLE_ROWS)])
    text: list = field(default_factory=lambda: [[""] * TABLE_COLUMNS for _ in range(TABLE_ROWS)])
    custom: list = field(default_factory=lambda: [[None] * TABLE_COLUMNS for _ in range(TABLE_ROWS)])
    #: (row, column, symbol, colour) of cells without a value (unsupported, or nothing attempted).
    annotations: list = field(default_factory=list)


def _table_cells(labels: Mapping[str, int], failures: Mapping[str, int], mode: str, zero_z: float) -> _TableCells:
    cells = _TableCells()
    for z in range(1, TABLE_LAST_Z + 1):
        symbol = chemical_symbols[z]
        row, col = table_position(z)
        n_labels, n_failures = labels.get(symbol, 0), failures.get(symbol, 0)
        cells.custom[row][col] = [symbol, z, n_labels, n_failures]
        if z > MAX_SUPPORTED_Z:
            cells.annotations.append((row, col, symbol, "#bbbbbb"))
            continue
        if mode == "failure_rate":
            attempted = n_labels + n_failures
            if attempted == 0:
                cells.annotations.append((row, col, symbol, "#999999"))
                continue
            cells.z[row][col] = n_failures / attempted
            cells.text[row][col] = f"<b>{symbol}</b><br>{100 * n_failures / attempted:.0f}%"
        else:
            n = n_labels if mode == "labelled" else n_failures
            cells.z[row][col] = math.log10(n) if n > 0 else zero_z
            cells.text[row][col] = f"<b>{symbol}</b><br>{short(n)}" if n else f"<b>{symbol}</b>"
    return cells


def _table_colours(mode: str, scale: _LogScale) -> tuple[list, dict, float, float]:
    """(colour scale, colour bar, zmin, zmax) of the periodic table in ``mode``."""
    if mode == "failure_rate":
        colorscale = [[0, "#f7fcf5"], [0.1, "#fee08b"], [0.3, "#fc8d59"], [1, "#b2182b"]]
        return colorscale, dict(title="failed", tickformat=".0%", thickness=14), 0.0, 1.0
    nonzero, lo, hi, zero_z = scale.nonzero, scale.lo, scale.hi, scale.zero_z
    base = (
        ["#deebf7", "#9ecae1", "#4292c6", "#08519c"]
        if mode == "labelled"
        else ["#fee0d2", "#fc9272", "#de2d26", "#a50f15"]
    )
    colorscale = [[0, "#eeeeee"], [0.12, "#eeeeee"], [0.12, base[0]]]
    colorscale += [[0.12 + 0.88 * f, c] for f, c in zip((0.33, 0.66, 1.0), base[1:])]
    ticks = [(zero_z, "0")]
    if nonzero:
        ticks.append((math.log10(min(nonzero)), short(min(nonzero))))
        ticks += [(t, short(10**t)) for t in range(math.ceil(lo), math.floor(hi) + 1)]
        ticks.append((hi, short(max(nonzero))))
    kept = []
    for value, label in sorted(ticks):  # drop labels that would overlap
        if not kept or value - kept[-1][0] > 0.07 * (hi - zero_z):
            kept.append((value, label))
    colorbar = dict(title=mode, tickvals=[v for v, _ in kept], ticktext=[t for _, t in kept], thickness=14)
    return colorscale, colorbar, zero_z, hi


def _table_title(snapshot: Snapshot, first: Optional[int], last: Optional[int], imported: bool, mode: str) -> str:
    span = _range_text(first, last, snapshot)
    what = {"labelled": "Labelled frames", "failures": "DFT failures", "failure_rate": "DFT failure rate"}[mode]
    if not snapshot.generation_numbers:
        span = "imported data" if imported else "no generations yet"
    elif imported:
        span += " + imported"
    return f"{what} per element — {span}"


def periodic_table_figure(
    snapshot: Snapshot,
    first: Optional[int] = None,
    last: Optional[int] = None,
    imported: bool = True,
    mode: str = "labelled",
    title: Optional[str] = None,
) -> go.Figure:
    """Heat map on the periodic table: labelled frames, failures or failure rate per element.

    Hover shows, per element, the labelled and failed counts in the range. Trace 0's
    ``customdata`` holds ``[symbol, Z, labelled, failures]`` for every element cell.
    """
    labels = snapshot.element_totals("labels", first, last, imported)
    failures = snapshot.element_totals("failures", first, last, imported)
    scale = _LogScale.of(labels if mode == "labelled" else failures)
    cells = _table_cells(labels, failures, mode, scale.zero_z)
    colorscale, colorbar, zmin, zmax = _table_colours(mode, scale)
    hover = (
        "<b>%{customdata[0]}</b> (Z=%{customdata[1]})<br>labelled: %{customdata[2]:,}"
        "<br>failures: %{customdata[3]:,}<extra></extra>"
    )
    fig = go.Figure(
        go.Heatmap(
            z=cells.z, text=cells.text, texttemplate="%{text}", textfont=dict(size=11), customdata=cells.custom,
            hovertemplate=hover, hoverongaps=False, colorscale=colorscale, zmin=zmin, zmax=zmax, colorbar=colorbar,
            xgap=2, ygap=2, name=mode,
        )
    )  # fmt: skip
    for row, col, symbol, color in cells.annotations:
        fig.add_annotation(x=col, y=row, text=symbol, showarrow=False, font=dict(size=11, color=color))
    fig.update_xaxes(visible=False, range=[-0.5, TABLE_COLUMNS - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constrain="domain")
    fig = _style(fig, title or _table_title(snapshot, first, last, imported, mode), height=470, legend=False)
    fig.update_layout(margin=dict(l=10, r=10, t=45, b=10), plot_bgcolor="white")
    return fig


def _range_text(first: Optional[int], last: Optional[int], snapshot: Snapshot) -> str:
    numbers = snapshot.generation_numbers
    if not numbers:
        return "no generations yet"
    lo = numbers[0] if first is None else max(first, numbers[0])
    hi = numbers[-1] if last is None else min(last, numbers[-1])
    return f"generation {lo}" if lo == hi else f"generations {lo}–{hi}"


# ----------------------------------------------------------------------- growth


def growth_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Labels and failures per generation, and the cumulative number of labels (with imports)."""
    numbers = _numbers(snapshot, first, last)
    if not numbers and not snapshot.labels_by_generation:
        return empty_figure("Dataset growth")
    cumulative = {}
    running = snapshot.labels_by_generation.get(None, 0)
    for g in snapshot.generation_numbers:
        running += snapshot.labels_by_generation.get(g, 0)
        cumulative[g] = running
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=numbers, y=[snapshot.labels_by_generation.get(g, 0) for g in numbers], name="labelled",
                marker_color=COLORS["labelled"], hovertemplate="generation %{x}<br>labelled %{y:,}<extra></extra>")  # fmt: skip
    fig.add_bar(x=numbers, y=[snapshot.failures_by_generation.get(g, 0) for g in numbers], name="DFT failed",
                marker_color=COLORS["failures"], hovertemplate="generation %{x}<br>failed %{y:,}<extra></extra>")  # fmt: skip
    fig.add_scatter(x=numbers, y=[cumulative[g] for g in numbers], name="labels in total", mode="lines+markers",
                    line=dict(color="#333", width=2), marker=dict(size=5), secondary_y=True,
                    hovertemplate="after generation %{x}<br>%{y:,} labels in total<extra></extra>")  # fmt: skip
    imported = snapshot.labels_by_generation.get(None, 0)
    fig.update_layout(barmode="stack", bargap=0.15)
    _generation_axis(fig, numbers)
    per_generation = [
        snapshot.labels_by_generation.get(g, 0) + snapshot.failures_by_generation.get(g, 0) for g in numbers
    ]
    _count_axis(fig, per_generation, title_text="per generation", secondary_y=False)
    _count_axis(fig, [cumulative[g] for g in numbers], title_text="total (incl. imported)" if imported else "total",
                secondary_y=True, showgrid=False)  # fmt: skip
    title = "Dataset growth" + (f" (total starts from {imported:,} imported labels)" if imported else "")
    return _style(fig, title)


def default_elements(snapshot: Snapshot, count: int = 6) -> list[str]:
    """The ``count`` elements with the most labels."""
    totals = snapshot.element_totals("labels")
    return sorted(sorted(totals, key=totals.get, reverse=True)[:count], key=element_order)


def element_growth_figure(
    snapshot: Snapshot,
    first: Optional[int] = None,
    last: Optional[int] = None,
    elements: Optional[Iterable[str]] = None,
    cumulative: bool = True,
    all_elements_in_legend: bool = False,
) -> go.Figure:
    """Labels per element and generation (cumulative: including imported labels).

    ``all_elements_in_legend`` adds every element as a trace, hidden unless in
    ``elements`` (for the static report, where the legend is the selector).
    """
    numbers = _numbers(snapshot, first, last)
    chosen = list(elements) if elements is not None else default_elements(snapshot)
    shown = snapshot.elements if all_elements_in_legend else [e for e in snapshot.elements if e in chosen]
    title = "Labels per element" + (" (cumulative)" if cumulative else " per generation")
    if not numbers or not shown:
        return empty_figure(title, "no labels yet" if not snapshot.elements else "choose elements above")
    per = defaultdict(int)
    for (g, e), n in snapshot.labels_by_element.items():
        per[(g, e)] += n
    fig = go.Figure()
    for element in shown:
        running = per.get((None, element), 0)
        values = {}
        for g in snapshot.generation_numbers:
            running += per.get((g, element), 0)
            values[g] = running if cumulative else per.get((g, element), 0)
        fig.add_scatter(
            x=numbers, y=[values[g] for g in numbers], name=element, mode="lines+markers", marker=dict(size=5),
            visible=True if element in chosen else "legendonly",
            hovertemplate=f"{element}<br>generation %{{x}}<br>%{{y:,}} labels<extra></extra>",
        )  # fmt: skip
    _generation_axis(fig, numbers)
    _count_axis(fig, [v for trace in fig.data if trace.visible is True for v in trace.y], title_text="labels")
    fig = _style(fig, title)
    fig.update_layout(legend=dict(orientation="v", y=1, x=1.02, xanchor="left", yanchor="top"), margin=dict(r=90))
    return fig


def element_generation_heatmap(
    snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None
) -> go.Figure:
    """Labels per generation (x) and element (y): which chemistries each generation reached."""
    numbers = _numbers(snapshot, first, last)
    elements = snapshot.elements
    title = "Labels per generation and element"
    if not numbers or not elements:
        return empty_figure(title)
    z = [[snapshot.labels_by_element.get((g, e), 0) for g in numbers] for e in elements]
    fig = go.Figure(
        go.Heatmap(
            x=numbers, y=elements, z=[[math.log10(v) if v else None for v in row] for row in z], customdata=z,
            colorscale=[[0, "#c6dbef"], [0.5, "#4292c6"], [1, "#08306b"]], zmin=0, hoverongaps=False,
            xgap=1 if len(numbers) < 60 else 0, ygap=1,
            hovertemplate="%{y} generation %{x}<br>%{customdata:,} labels<extra></extra>",
            colorbar=dict(title="labels", tickvals=list(range(0, 8)), ticktext=[short(10**t) for t in range(8)], thickness=14),
        )
    )  # fmt: skip
    _generation_axis(fig, numbers)
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=11 if len(elements) <= 40 else 9))
    return _style(fig, title, height=max(300, min(900, 120 + 16 * len(elements))), legend=False)


def _stacked_per_generation(numbers: list[int], table: dict[str, dict[int, int]], title: str, unit: str) -> go.Figure:
    """Bars per generation, one stacked trace per key of ``table`` ({key: {generation: n}}),
    the largest first."""
    fig = go.Figure()
    for key in sorted(table, key=lambda k: -sum(table[k].values())):
        fig.add_bar(x=numbers, y=[table[key].get(g, 0) for g in numbers], name=key,
                    hovertemplate=f"{key}<br>generation %{{x}}<br>%{{y:,}} {unit}<extra></extra>")  # fmt: skip
    fig.update_layout(barmode="stack", bargap=0.15)
    _generation_axis(fig, numbers)
    _count_axis(fig, [sum(table[k].get(g, 0) for k in table) for g in numbers], title_text=unit)
    return _style(fig, title)


#: How labels written before labels carried their frame's source are shown per sampler.
UNKNOWN_SOURCE = "unknown (label predates sources)"


def sampler_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Labels per generation, stacked by the sampler (or import) that produced their frames."""
    numbers = _numbers(snapshot, first, last)
    table: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (g, source), n in snapshot.labels_by_source.items():
        if g is not None and in_range(g, first, last):
            table[source or UNKNOWN_SOURCE][g] += n
    title = "Labelled frames per generation, per sampler"
    if not numbers or not table:
        return empty_figure(title)
    return _stacked_per_generation(numbers, table, title, "labels")


# -------------------------------------------------------------------- selection


def selection_figure(
    snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None, element: Optional[str] = None
) -> go.Figure:
    """Explored frames by σ_F class, selected and sentinel counts, and the trust window."""
    docs = [d for d in snapshot.generations if in_range(d.get("number"), first, last)]
    title = "Selection per generation" + (f" — frames containing {element}" if element else "")
    if not docs:
        return empty_figure(title)

    def counts(doc: Mapping) -> Mapping:
        return ((doc.get("ledger") or {}).get(element) or {}) if element else (doc.get("counts") or {})

    x = [d["number"] for d in docs]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for cls in SELECTION_CLASSES:
        values = [counts(d).get(cls) for d in docs]
        if any(values):
            fig.add_bar(x=x, y=values, name=cls, marker_color=COLORS[cls],
                        hovertemplate=f"generation %{{x}}<br>{cls} %{{y:,}}<extra></extra>")  # fmt: skip
    for column, symbol in (("selected", "diamond"), ("sentinel", "circle")):
        values = [counts(d).get(column) for d in docs]
        if any(v is not None for v in values):
            fig.add_scatter(x=x, y=values, name=column, mode="lines+markers", line=dict(color=COLORS[column], width=2),
                            marker=dict(symbol=symbol, size=7),
                            hovertemplate=f"generation %{{x}}<br>{column} %{{y:,}}<extra></extra>")  # fmt: skip
    for key, label in (("lo", "lo threshold"), ("hi", "hi threshold")):
        values = [(d.get("thresholds") or {}).get(key) for d in docs]
        if any(v is not None for v in values):
            fig.add_scatter(x=x, y=values, name=label, mode="lines", line=dict(color=COLORS[key], dash="dash", shape="hv"),
                            secondary_y=True, hovertemplate=f"generation %{{x}}<br>{label} %{{y:.3f}} eV/Å<extra></extra>")  # fmt: skip
    for key, label in (("q50", "σ_F median"), ("q90", "σ_F 90%")):
        values = [_quantile(d, key) for d in docs]
        if any(v is not None for v in values):
            fig.add_scatter(x=x, y=values, name=label, mode="lines", line=dict(color="#555", dash="dot", width=1),
                            secondary_y=True, hovertemplate=f"generation %{{x}}<br>{label} %{{y:.3f}} eV/Å<extra></extra>")  # fmt: skip
    fig.update_layout(barmode="stack", bargap=0.15)
    _generation_axis(fig, x)
    _count_axis(
        fig,
        [sum(counts(d).get(c) or 0 for c in SELECTION_CLASSES) for d in docs],
        title_text="explored frames",
        secondary_y=False,
    )
    fig.update_yaxes(title_text="σ_F (eV/Å)", secondary_y=True, showgrid=False, rangemode="tozero", tickmode="auto")
    return _style(fig, title, height=380)


def _quantile(doc: Mapping, key: str) -> Optional[float]:
    """σ_F quantile ``q50`` (also stored as ``"0.5"`` by earlier flows)."""
    quantiles = (doc.get("metrics") or {}).get("sigma_f_quantiles") or {}
    if key in quantiles:
        return quantiles[key]
    legacy = str(int(key[1:]) / 100)
    return quantiles.get(legacy)


# ---------------------------------------------------------------- model quality


def _error_block(doc: Mapping, which: str) -> Mapping:
    return ((doc.get("metrics") or {}).get(which)) or {}


def model_quality_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Energy and force errors of each generation's ensemble on its new labels and sentinels."""
    docs = [d for d in snapshot.generations if in_range(d.get("number"), first, last)]
    title = "Model error on newly labelled frames and on sentinels"
    if not any(_error_block(d, w) for d in docs for w in ("model", "sentinel")):
        return empty_figure(title, "no model errors recorded yet")
    x = [d["number"] for d in docs]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("energy MAE (meV/atom)", "force MAE (eV/Å)"), horizontal_spacing=0.1
    )
    for which, name, dash in (("model", "new labels", "solid"), ("sentinel", "sentinels", "dash")):
        color = COLORS["candidate"] if which == "model" else COLORS["sentinel"]
        energy = [_scaled(_error_block(d, which).get("energy_mae_per_atom"), 1000) for d in docs]
        force = [_error_block(d, which).get("force_mae") for d in docs]
        frames = [_error_block(d, which).get("frames") for d in docs]
        fig.add_scatter(x=x, y=energy, customdata=frames, name=name, legendgroup=which, mode="lines+markers",
                        line=dict(color=color, dash=dash), connectgaps=False, row=1, col=1,
                        hovertemplate=f"{name}<br>generation %{{x}}<br>%{{y:.2f}} meV/atom (%{{customdata}} frames)<extra></extra>")  # fmt: skip
        fig.add_scatter(x=x, y=force, customdata=frames, name=name, legendgroup=which, showlegend=False, mode="lines+markers",
                        line=dict(color=color, dash=dash), connectgaps=False, row=1, col=2,
                        hovertemplate=f"{name}<br>generation %{{x}}<br>%{{y:.3f}} eV/Å (%{{customdata}} frames)<extra></extra>")  # fmt: skip
    _generation_axis(fig, x)
    fig.update_yaxes(rangemode="tozero")
    fig = _style(fig, title)
    fig.update_layout(margin=dict(t=85), legend=dict(y=1.12))
    return fig


def _scaled(value, factor):
    return None if value is None else value * factor


def element_error_figure(
    snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None, which: str = "model"
) -> go.Figure:
    """Force MAE per element and generation, on new labels (``model``) or sentinels."""
    docs = [d for d in snapshot.generations if in_range(d.get("number"), first, last)]
    name = "new labels" if which == "model" else "sentinels"
    title = f"Force MAE per element on {name} (eV/Å)"
    per = {d["number"]: _error_block(d, which).get("per_element") or {} for d in docs}
    elements = sorted({e for row in per.values() for e in row}, key=element_order)
    if not elements:
        return empty_figure(title, "no per-element errors recorded yet")
    x = [d["number"] for d in docs]
    z = [[(per[g].get(e) or {}).get("force_mae") for g in x] for e in elements]
    atoms = [[(per[g].get(e) or {}).get("n_atoms") for g in x] for e in elements]
    fig = go.Figure(
        go.Heatmap(
            x=x, y=elements, z=z, customdata=atoms, colorscale="Viridis", hoverongaps=False,
            xgap=1 if len(x) < 60 else 0, ygap=1, colorbar=dict(title="eV/Å", thickness=14),
            hovertemplate="%{y} generation %{x}<br>force MAE %{z:.3f} eV/Å<br>%{customdata} atoms<extra></extra>",
        )
    )  # fmt: skip
    _generation_axis(fig, x)
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=11 if len(elements) <= 40 else 9))
    return _style(fig, title, height=max(300, min(900, 120 + 16 * len(elements))), legend=False)


#: The panel's heading (the live page and the report); the figure has its own title.
PROBE_TITLE = "Probe sets: error versus labels"
PROBE_FIGURE_TITLE = "Each generation's model on every probe set, against the labels it trained on"
#: Under the probe-set panel, in the report and the live page.
PROBE_NOTE = (
    "Each generation's model scored on fixed, held-out probe sets (selfplay probe add) at a level of theory it "
    "trains on; a gap is a generation that did not score that set."
)


def probe_rows(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> dict[str, list[dict]]:
    """probe set -> one row per generation of the range that scored its model on probe sets
    (``metrics.probes``): ``generation``, ``labels`` (that the model trained on),
    ``force_mae``, ``energy_mae_per_atom``, ``frames``.

    A generation that scored other probe sets but not this one gives a row of Nones: a gap
    in the line, never a zero. Generations without ``metrics.probes`` (cold starts, or
    before probe sets existed) give no row.
    """
    scored = []
    for doc in snapshot.generations:
        probes = (doc.get("metrics") or {}).get("probes")
        if in_range(doc.get("number"), first, last) and isinstance(probes, Mapping):
            scored.append((doc["number"], {k: v for k, v in probes.items() if isinstance(v, Mapping)}))
    rows: dict[str, list[dict]] = {}
    for name in sorted({name for _, probes in scored for name in probes}):
        for generation, probes in scored:
            entry = probes.get(name) or {}
            rows.setdefault(name, []).append(
                {
                    "generation": generation,
                    "labels": entry.get("trained_on_labels") if entry else None,
                    "force_mae": entry.get("force_mae"),
                    "energy_mae_per_atom": entry.get("energy_mae_per_atom"),
                    "frames": entry.get("frames"),
                }
            )
    return rows


def probe_error_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Force MAE and energy MAE per atom of each generation's model on every probe set,
    against the number of labels the model trained on: one line per probe set."""
    rows = probe_rows(snapshot, first, last)
    if not rows:
        return empty_figure(PROBE_FIGURE_TITLE, "no model scored on a probe set yet")
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("force MAE (eV/Å)", "energy MAE (meV/atom)"), horizontal_spacing=0.1
    )
    palette = plotly.colors.qualitative.Plotly
    for index, (name, points) in enumerate(rows.items()):
        color = palette[index % len(palette)]
        x = [p["labels"] for p in points]
        custom = [[p["generation"], p["frames"]] for p in points]
        for col, key, factor, unit in ((1, "force_mae", 1, "eV/Å"), (2, "energy_mae_per_atom", 1000, "meV/atom")):
            fig.add_scatter(
                x=x, y=[_scaled(p[key], factor) for p in points], customdata=custom, name=name, legendgroup=name,
                showlegend=col == 1, mode="lines+markers", line=dict(color=color), connectgaps=False, row=1, col=col,
                hovertemplate=f"{name}<br>generation %{{customdata[0]}}, %{{x:,}} labels<br>%{{y:.3f}} {unit}"
                              f" on %{{customdata[1]}} frames<extra></extra>",
            )  # fmt: skip
    fig.update_xaxes(title_text="labels the model trained on", rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    fig = _style(fig, PROBE_FIGURE_TITLE)
    fig.update_layout(margin=dict(t=85), legend=dict(y=1.12))
    return fig


def calibration_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Ensemble deviation σ_F against the true force error, per labelled frame."""
    title = "Calibration: ensemble deviation vs. true force error"
    points = [(g, p) for g, ps in sorted(snapshot.calibration.items()) if in_range(g, first, last) for p in ps]
    points = [
        (g, p) for g, p in points
        if _positive(p.get("sigma_f")) and _positive(p.get("force_error_max", p.get("force_error")))
    ]  # fmt: skip
    if not points:
        return empty_figure(title, "no calibration points in this range yet")
    total = len(points)
    binned = _binned_median(
        [p["sigma_f"] for _, p in points], [p.get("force_error_max", p.get("force_error")) for _, p in points]
    )
    if total > MAX_CALIBRATION_POINTS:  # an even thinning keeps every generation represented
        stride = total / MAX_CALIBRATION_POINTS
        points = [points[int(i * stride)] for i in range(MAX_CALIBRATION_POINTS)]
    fig = go.Figure()
    generations = [g for g, _ in points]
    for role, symbol in (("candidate", "circle"), ("sentinel", "diamond")):
        chosen = [(g, p) for g, p in points if (p.get("selected_as") or "candidate") == role]
        if not chosen:
            continue
        fig.add_scattergl(
            x=[p["sigma_f"] for _, p in chosen],
            y=[p.get("force_error_max", p.get("force_error")) for _, p in chosen],
            customdata=[g for g, _ in chosen], mode="markers", name=role + "s",
            marker=dict(symbol=symbol, size=7, opacity=0.75, color=[g for g, _ in chosen], colorscale="Viridis",
                        cmin=min(generations), cmax=max(generations) if max(generations) > min(generations) else min(generations) + 1,
                        colorbar=dict(title="generation", thickness=14) if role == "candidate" else None),
            hovertemplate="generation %{customdata}<br>σ_F %{x:.3f} eV/Å<br>max force error %{y:.3f} eV/Å<extra>%{fullData.name}</extra>",
        )  # fmt: skip
    values = [p["sigma_f"] for _, p in points] + [p.get("force_error_max", p.get("force_error")) for _, p in points]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    fig.add_scatter(
        x=[lo, hi], y=[lo, hi], mode="lines", name="error = σ_F", line=dict(color="#888", dash="dash"), hoverinfo="skip"
    )
    if binned:
        fig.add_scatter(x=[b[0] for b in binned], y=[b[1] for b in binned], customdata=[b[2] for b in binned],
                        mode="lines+markers", name="median error", line=dict(color="#d62728", width=2.5),
                        hovertemplate="σ_F ≈ %{x:.3f} eV/Å<br>median error %{y:.3f} eV/Å<br>%{customdata} frames<extra></extra>")  # fmt: skip
    fig.update_xaxes(type="log", dtick="D2", title_text="σ_F, ensemble max per-atom deviation (eV/Å)")
    fig.update_yaxes(type="log", dtick="D2", title_text="max per-atom force error (eV/Å)")
    shown = sorted(set(generations))
    span = f"generation {shown[0]}" if len(shown) == 1 else f"generations {shown[0]}–{shown[-1]}"
    if total > len(points):
        span += f", {len(points):,} of {total:,} points"
    fig = _style(fig, f"{title} ({span})", height=420)
    fig.update_layout(margin=dict(t=80), legend=dict(x=0, xanchor="left"))
    return fig


def _binned_median(
    sigma: list[float], error: list[float], bins: int = 10, least: int = 3
) -> list[tuple[float, float, int]]:
    """(geometric bin centre, median error, count) over log-spaced σ_F bins with enough points."""
    lo, hi = math.log10(min(sigma)), math.log10(max(sigma))
    if hi - lo < 1e-9:
        return []
    width = (hi - lo) / bins
    groups: dict[int, list[float]] = defaultdict(list)
    for s, e in zip(sigma, error):
        groups[min(int((math.log10(s) - lo) / width), bins - 1)].append(e)
    out = []
    for index in sorted(groups):
        values = sorted(groups[index])
        if len(values) >= least:
            middle = len(values) // 2
            median = values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])
            out.append((10 ** (lo + (index + 0.5) * width), median, len(values)))
    return out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0 and math.isfinite(value)


# ------------------------------------------------------------------------- DFT


def label_stage_hours(doc: Mapping, now: Optional[datetime] = None) -> Optional[float]:
    """Wall-clock hours of a generation's label stage (running: so far)."""
    stage = (doc.get("stages") or {}).get("label") or {}
    if stage.get("seconds"):
        return float(stage["seconds"]) / 3600
    start, end = as_datetime(stage.get("started_at")), as_datetime(stage.get("finished_at"))
    if start is None:
        return None
    end = end or (now or datetime.now(timezone.utc))
    hours = (end - start).total_seconds() / 3600
    return hours if hours > 0 else None


def dft_throughput_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Labels per hour of the label stage, and mean DFT wall time per label."""
    numbers = _numbers(snapshot, first, last)
    title = "DFT throughput"
    rates, means = [], []
    for g in numbers:
        doc = snapshot.generation(g) or {}
        hours = label_stage_hours(doc)
        labels = snapshot.labels_by_generation.get(g, 0)
        rates.append(labels / hours if hours and labels else None)
        timed = snapshot.dft_time.get(g)
        means.append(timed["wall_time"] / timed["n"] if timed and timed["n"] else None)
    if not any(v is not None for v in rates + means):
        return empty_figure(title, "no DFT labels with timings yet")
    return _bars_and_line(
        numbers, title,
        bars=(rates, "labels per hour", COLORS["labelled"], "%{y:,.1f} labels per hour", "labels per hour"),
        line=(means, "mean wall time per label", "%{y:,.1f} s per label", "s per label"),
    )  # fmt: skip


def dft_health_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """Share of DFT attempts that failed, and mean SCF cycles of the converged ones."""
    numbers = _numbers(snapshot, first, last)
    title = "DFT health"
    rate, cycles = [], []
    for g in numbers:
        labels, failures = snapshot.labels_by_generation.get(g, 0), snapshot.failures_by_generation.get(g, 0)
        rate.append(100 * failures / (labels + failures) if labels + failures else None)
        scf = snapshot.scf_cycles.get(g)
        cycles.append(scf["cycles"] / scf["n"] if scf and scf["n"] else None)
    if not any(v is not None for v in rate + cycles):
        return empty_figure(title, "no DFT results yet")
    return _bars_and_line(
        numbers, title,
        bars=(rate, "failed (%)", COLORS["failures"], "%{y:.1f}% of DFT attempts failed", "failed (%)"),
        line=(cycles, "mean SCF cycles", "%{y:.1f} SCF cycles", "SCF cycles"),
    )  # fmt: skip


def _bars_and_line(numbers: list[int], title: str, *, bars: tuple, line: tuple) -> go.Figure:
    """Bars per generation on the left axis and a line on the right one.

    ``bars`` = (values, name, colour, hover text, axis title); ``line`` = (values, name,
    hover text, axis title); the hover texts follow "generation N<br>".
    """
    bar_values, bar_name, colour, bar_hover, bar_axis = bars
    line_values, line_name, line_hover, line_axis = line
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=numbers, y=bar_values, name=bar_name, marker_color=colour,
                hovertemplate=f"generation %{{x}}<br>{bar_hover}<extra></extra>")  # fmt: skip
    fig.add_scatter(x=numbers, y=line_values, name=line_name, mode="lines+markers", secondary_y=True,
                    line=dict(color="#333"), hovertemplate=f"generation %{{x}}<br>{line_hover}<extra></extra>")  # fmt: skip
    _generation_axis(fig, numbers)
    fig.update_yaxes(title_text=bar_axis, secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text=line_axis, secondary_y=True, showgrid=False, rangemode="tozero", tickmode="auto")
    return _style(fig, title)


def wall_time_figure(snapshot: Snapshot) -> go.Figure:
    """Mean wall time per label against the number of atoms, per device (all generations)."""
    title = "DFT wall time per label vs. atoms"
    by_device: dict[str, list] = defaultdict(list)
    for (n_atoms, device), values in snapshot.wall_time_by_size.items():
        if n_atoms and values["n"]:
            by_device[device or "unknown"].append((n_atoms, values["wall_time"] / values["n"], values["n"]))
    if not by_device:
        return empty_figure(title, "no DFT labels with timings yet")
    largest = max(n for rows in by_device.values() for _, _, n in rows)
    fig = go.Figure()
    for device, rows in sorted(by_device.items()):
        rows.sort()
        fig.add_scatter(
            x=[r[0] for r in rows], y=[r[1] for r in rows], customdata=[r[2] for r in rows], name=device,
            mode="lines+markers", line=dict(width=1),
            marker=dict(size=[6 + 14 * math.sqrt(r[2] / largest) for r in rows], line=dict(width=0.5, color="#333")),
            hovertemplate=f"{device}<br>%{{x}} atoms<br>mean %{{y:,.1f}} s over %{{customdata:,}} labels<extra></extra>",
        )  # fmt: skip
    sizes = [r[0] for rows in by_device.values() for r in rows]
    fig.update_xaxes(
        title_text="atoms in frame", tickformat="d", **({"dtick": 1} if max(sizes) - min(sizes) <= 8 else {})
    )
    fig.update_yaxes(title_text="mean wall time (s)", type="log")
    return _style(fig, title)


def failure_kind(reason: str) -> str:
    """``"unconverged: SCF did not ..."`` -> ``"unconverged"``."""
    head = (reason or "unknown").split(":", 1)[0].strip()
    return head if head and len(head) <= 40 else "other"


def failure_figure(snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None) -> go.Figure:
    """DFT failures per generation, stacked by kind (the reason's prefix)."""
    numbers = _numbers(snapshot, first, last)
    table: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (g, reason), n in snapshot.failure_reasons.items():
        if in_range(g, first, last):
            table[failure_kind(reason)][g] += n
    title = "DFT failures by kind"
    if not table:
        return empty_figure(title, "no DFT failures in this range")
    return _stacked_per_generation(numbers, table, title, "failures")


def top_failure_reasons(
    snapshot: Snapshot, first: Optional[int] = None, last: Optional[int] = None, count: int = 8
) -> list[tuple[str, int]]:
    """The most frequent failure reasons in the range (imported failures included)."""
    totals: dict[str, int] = defaultdict(int)
    for (g, reason), n in snapshot.failure_reasons.items():
        if g is None or in_range(g, first, last):
            totals[reason or "unknown"] += n
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:count]


# ------------------------------------------------------------ generations table


def prefect_ui_url(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Base URL of the Prefect UI from PREFECT_UI_URL, else derived from PREFECT_API_URL."""
    env = os.environ if env is None else env
    ui = (env.get("PREFECT_UI_URL") or "").strip()
    if ui:
        return ui.rstrip("/")
    api = (env.get("PREFECT_API_URL") or "").strip().rstrip("/")
    if not api:
        return None
    if "api.prefect.cloud" in api:  # .../api/accounts/A/workspaces/W -> app.../account/A/workspace/W
        return api.replace("https://api.prefect.cloud/api/accounts/", "https://app.prefect.cloud/account/").replace(
            "/workspaces/", "/workspace/"
        )
    return api[: -len("/api")] if api.endswith("/api") else api


def prefect_run_url(run_id: Optional[str], env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    base = prefect_ui_url(env)
    return f"{base}/runs/flow-run/{run_id}" if base and run_id else None


TABLE_COLUMNS_SHOWN = (
    "generation", "status", "stages", "started", "duration", "explored", "selected", "labelled", "DFT failed",
    "force MAE (eV/Å)", "Prefect run",
)  # fmt: skip


def generation_rows(snapshot: Snapshot, limit: int = 20, env: Optional[Mapping[str, str]] = None) -> list[dict]:
    """The latest ``limit`` generations, newest first, as display rows."""
    now = datetime.now(timezone.utc)
    rows = []
    for doc in reversed(snapshot.generations[-limit:] if limit else snapshot.generations):
        stages = doc.get("stages") or {}
        started, finished = as_datetime(doc.get("started_at")), as_datetime(doc.get("finished_at"))
        status = doc.get("status") or "pending"
        duration = None
        if started is not None:
            duration = ((finished or now) - started).total_seconds() if (finished or status == "running") else None
        counts = doc.get("counts") or {}
        number = doc.get("number")
        force = _error_block(doc, "model").get("force_mae")
        rows.append(
            {
                "generation": number,
                "status": status,
                "stages": " ".join(
                    # The stages the generation was opened with, in table order (flows.stages).
                    f"{name} {STAGE_MARKS.get((state or {}).get('status') or 'pending', '?')}"
                    for name, state in stages.items()
                ),
                "started": format_time(started),
                "duration": format_duration(duration),
                "explored": counts.get("explored"),
                "selected": counts.get("selected"),
                "labelled": snapshot.labels_by_generation.get(number, 0),
                "DFT failed": snapshot.failures_by_generation.get(number, 0),
                "force MAE (eV/Å)": None if force is None else f"{force:.3f}",
                "Prefect run": prefect_run_url(doc.get("prefect_flow_run_id"), env),
                "prefect_flow_run_id": doc.get("prefect_flow_run_id"),
                "error": doc.get("error"),
            }
        )
    return rows


def summary_line(snapshot: Snapshot) -> str:
    totals = snapshot.totals
    numbers = snapshot.generation_numbers
    latest = snapshot.generation(numbers[-1]) if numbers else None
    parts = [
        f"{totals['generations']} generation{'s' if totals['generations'] != 1 else ''}",
        f"{totals['labels']:,} labels ({totals['imported_labels']:,} imported)",
        f"{totals['failures']:,} DFT failures",
        f"{totals['frames']:,} frames",
        f"{len(snapshot.elements)} elements",
    ]
    if latest:
        parts.append(f"latest: generation {latest['number']} {latest.get('status', '')}")
    return " · ".join(parts)
