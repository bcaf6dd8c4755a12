"""The first view: the numbers as plain HTML, on screen before any JavaScript has run.

The dashboard's charts need plotly.js (4.6 MB of JavaScript; several seconds to parse on
a slow machine) and Dash's React bundles. What a user checks first — the headline
counts, labelled frames per element, the latest generations — needs neither, so it is
built here as Dash ``html`` components from the snapshot and used twice:

* serialised to HTML by :func:`to_html` and put into the page Dash serves, inside the
  element React renders into, so the browser paints it straight from the first response;
* inside the Dash layout itself, at the same places, so nothing blinks when React takes
  over. The HTML periodic table stays until the Plotly heat map (hover, range filter,
  modes) has drawn over it, then CSS hides it (``:has(.main-svg)``).

Cells carry ``data-symbol``, ``data-labelled`` and ``data-failures`` so tests and tools
can read the numbers without parsing text.
"""

from __future__ import annotations

import html as _html
import math
from typing import Any, Iterable, Optional

from ase.data import chemical_symbols
from dash import html

from pipeline.dashboard import figures as F
from pipeline.dashboard.queries import Snapshot

#: Blues of the Plotly heat map's "labelled" colour scale, light to dark.
BLUES = ("#deebf7", "#9ecae1", "#4292c6", "#08519c")
ZERO = "#eeeeee"

#: Rules for the first view (added to the dashboard page's style sheet).
STYLE = """
.pt-wrap { position: relative; }
.pt-html { font-size: 12px; padding: 4px 10px 10px; }
.pt-html .pt-title { font-size: 16px; margin: 8px 0 10px; color: #2a3f5f; }
.pt-grid { display: grid; grid-template-columns: repeat(18, minmax(0, 1fr)); gap: 2px; max-width: 1100px; }
.pt-cell { text-align: center; padding: 3px 0; border-radius: 2px; line-height: 1.25; min-height: 30px; }
.pt-cell.pt-dark { color: white; }
.pt-cell.pt-unsupported { color: #bbb; background: none; }
.pt-gap { grid-column: 1 / span 18; height: 8px; }
/* The Plotly heat map replaces the HTML table once drawn (until then it is laid out
   invisibly, at full width, so that it draws at its final size). */
.pt-wrap:has(#periodic-table .main-svg) .pt-html { display: none; }
.pt-wrap:not(:has(#periodic-table .main-svg)) #periodic-table { position: absolute; left: 0; right: 0; top: 0;
  visibility: hidden; }
"""


def _mix(a: str, b: str, t: float) -> str:
    x = [int(a[i : i + 2], 16) for i in (1, 3, 5)]
    y = [int(b[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(p + (q - p) * t):02x}" for p, q in zip(x, y))


def cell_colour(n: int, lo: float, hi: float) -> tuple[str, bool]:
    """Background of a count on the heat map's log scale, and whether it is dark."""
    if n <= 0:
        return ZERO, False
    f = 1.0 if hi <= lo else min(max((math.log10(n) - lo) / (hi - lo), 0.0), 1.0)
    position = f * (len(BLUES) - 1)
    i = min(int(position), len(BLUES) - 2)
    return _mix(BLUES[i], BLUES[i + 1], position - i), f > 0.55


def periodic_table_html(
    snapshot: Optional[Snapshot], first: Optional[int] = None, last: Optional[int] = None
) -> html.Div:
    """Labelled frames per element (all generations and imported labels by default) as a grid of cells."""
    labels = snapshot.element_totals("labels", first, last) if snapshot else {}
    failures = snapshot.element_totals("failures", first, last) if snapshot else {}
    nonzero = [n for s, n in labels.items() if n > 0]
    hi = math.log10(max(nonzero)) if nonzero else 1.0
    lo = min(math.log10(min(nonzero)) if nonzero else 0.0, hi - 1.0)
    cells = []
    for z in range(1, F.TABLE_LAST_Z + 1):
        symbol = chemical_symbols[z]
        row, col = F.table_position(z)
        grid_row = row + 1 if row < 6 else row + 2  # a gap row before the lanthanides
        n, failed = labels.get(symbol, 0), failures.get(symbol, 0)
        style = {"gridRow": str(grid_row), "gridColumn": str(col + 1)}
        attributes = {"data-symbol": symbol, "data-labelled": str(n), "data-failures": str(failed)}
        if z > F.MAX_SUPPORTED_Z:
            cells.append(
                html.Div(symbol, className="pt-cell pt-unsupported", style=style, title=f"{symbol}: not supported")
            )
            continue
        colour, dark = cell_colour(n, lo, hi)
        style["background"] = colour
        cells.append(
            html.Div(
                [html.B(symbol), html.Br(), F.short(n) if n else ""],
                className="pt-cell pt-dark" if dark else "pt-cell",
                style=style,
                title=f"{symbol} (Z={z}) labelled: {n:,} failures: {failed:,}",
                **attributes,
            )
        )
    cells.append(html.Div(className="pt-gap", style={"gridRow": "7"}))
    if snapshot is None:
        title = "Labelled frames per element — aggregating the store…"
    elif snapshot.generation_numbers:
        title = f"Labelled frames per element — {F._range_text(first, last, snapshot)} + imported"
    else:
        title = "Labelled frames per element — imported data"
    return html.Div(
        [html.Div(title, className="pt-title"), html.Div(cells, className="pt-grid")],
        className="pt-html",
        id="periodic-table-html",
    )


# ------------------------------------------------------------------ to HTML


_VOID = {"br", "hr", "img", "input", "meta", "link"}
_RENAMED = {"className": "class", "htmlFor": "for"}


def _css_name(name: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in name)


def to_html(node: Any) -> str:
    """A tree of ``dash.html`` components (and strings, numbers, lists) as HTML.

    Enough for what the first view uses: tag, id, class, style, title, href, target,
    rel, ``data-*`` attributes and children. Other components (``dcc``) are left out.
    """
    if node is None:
        return ""
    if isinstance(node, (list, tuple)):
        return "".join(to_html(child) for child in node)
    if isinstance(node, (str, int, float)):
        return _html.escape(str(node))
    if getattr(node, "_namespace", None) != "dash_html_components":
        return ""
    tag = node._type.lower()
    attributes = []
    for name in ("id", "className", "title", "href", "target", "rel", "htmlFor", "colSpan"):
        value = getattr(node, name, None)
        if value is not None:
            attributes.append(f'{_RENAMED.get(name, name.lower())}="{_html.escape(str(value), quote=True)}"')
    style = getattr(node, "style", None)
    if style:
        css = ";".join(f"{_css_name(k)}:{v}" for k, v in style.items())
        attributes.append(f'style="{_html.escape(css, quote=True)}"')
    for name, value in _data_attributes(node):
        attributes.append(f'{name}="{_html.escape(str(value), quote=True)}"')
    opening = f"<{tag}{''.join(' ' + a for a in attributes)}>"
    if tag in _VOID:
        return opening
    return f"{opening}{to_html(getattr(node, 'children', None))}</{tag}>"


def _data_attributes(node) -> Iterable[tuple[str, Any]]:
    return sorted((k, v) for k, v in node.to_plotly_json()["props"].items() if k.startswith(("data-", "aria-")))
