"""The static report: one self-contained HTML file, readable offline.

plotly.js is inlined once (about 4.6 MB) and every figure is drawn from data embedded in
the page, so the file opens in any browser without a network and can be archived or
mailed as it is. The flow writes one after each generation
(:func:`flows.stages.write_outputs` calls :func:`write_report`).

The headline, the per-element numbers (an HTML periodic table, :mod:`.firstview`) and
the tables are plain HTML, painted at once; plotly.js is kept as inert text at the end
and run after the first paint, then the charts draw and the Plotly heat map replaces
the HTML one.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional

import plotly.io as pio
from plotly.offline import get_plotlyjs

from pipeline.dashboard import figures as F
from pipeline.dashboard.firstview import STYLE as FIRST_VIEW_STYLE
from pipeline.dashboard.firstview import periodic_table_html, to_html
from pipeline.dashboard.queries import Snapshot, take_snapshot
from pipeline.dashboard.readonly import ReadOnlyDatabase
from pipeline.errors import DataFileError

log = logging.getLogger(__name__)

GRAPH_CONFIG = {"displaylogo": False, "responsive": True}

STYLE = (
    F.SHARED_STYLE
    + FIRST_VIEW_STYLE
    + """
h1 { font-size: 22px; margin: 6px 0 2px; }
.summary { font-size: 15px; margin: 2px 0; }
.note { font-size: 12px; color: #666; }
"""
)


#: Runs plotly.js (kept as inert text in the page) only after the first paint, then draws
#: the figures queued by each graph's script: the numbers in HTML are on screen at once,
#: instead of after the several seconds a browser needs to parse 4.6 MB of JavaScript.
LOADER = """
window.__plots = window.__plots || [];
function __drawPlots() {
  var code = document.getElementById("plotly-js"), script = document.createElement("script");
  script.textContent = code.textContent;
  document.head.appendChild(script);
  code.parentNode.removeChild(code);
  window.__plots.forEach(function (draw) { draw(); });
}
// once the whole page is parsed (the inert plotly.js text included) and has been painted
document.addEventListener("DOMContentLoaded", function () {
  requestAnimationFrame(function () { setTimeout(__drawPlots, 0); });
});
"""


def _figure_html(fig, div_id: str) -> str:
    """The graph's div and a script that queues its drawing until plotly.js has run."""
    text = pio.to_html(fig, full_html=False, include_plotlyjs=False, config=GRAPH_CONFIG, div_id=div_id)
    start = text.index(">", text.index("<script")) + 1
    end = text.rindex("</script>")
    return f"{text[:start]}(window.__plots = window.__plots || []).push(function () {{{text[start:end]}}});{text[end:]}"


def _generations_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="note">no generations yet</p>'
    out = ['<table class="data" id="generations"><thead><tr>']
    out += [f"<th>{html.escape(c)}</th>" for c in F.TABLE_COLUMNS_SHOWN]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append(f'<tr data-generation="{html.escape(str(row.get("generation")))}">')
        for column in F.TABLE_COLUMNS_SHOWN:
            value = row.get(column)
            if column == "status":
                title = html.escape(row.get("error") or "", quote=True)
                out.append(
                    f'<td><span class="status status-{html.escape(str(value))}" title="{title}">{html.escape(str(value))}</span></td>'
                )
            elif column == "Prefect run":
                run_id = row.get("prefect_flow_run_id") or ""
                if value:
                    out.append(
                        f'<td><a href="{html.escape(value, quote=True)}" target="_blank" rel="noopener">{html.escape(run_id[:8])}</a></td>'
                    )
                else:
                    out.append(f"<td>{html.escape(run_id[:8])}</td>")
            else:
                text = "" if value is None else (f"{value:,}" if isinstance(value, int) else str(value))
                out.append(f"<td>{html.escape(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _reasons_table(reasons: list[tuple[str, int]]) -> str:
    if not reasons:
        return '<p class="note">no DFT failures</p>'
    rows = "".join(f'<tr><td>{n:,}</td><td class="reason">{html.escape(reason)}</td></tr>' for reason, n in reasons)
    return f'<table class="data"><thead><tr><th>failures</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>'


def render_report(snapshot: Snapshot, env: Optional[Mapping[str, str]] = None, title: str = "selfplay report") -> str:
    """The report as one HTML string (plotly.js included)."""
    numbers = snapshot.generation_numbers
    latest = numbers[-1] if numbers else None
    first, last = (numbers[0], numbers[-1]) if numbers else (None, None)
    chosen = F.default_elements(snapshot)
    graphs = {
        "periodic-table": F.periodic_table_figure(snapshot, first, last, mode="labelled"),
        "periodic-table-latest": (
            F.periodic_table_figure(snapshot, latest, latest, imported=False, mode="labelled")
            if latest is not None else F.empty_figure("Labelled frames per element — latest generation")
        ),
        "periodic-table-failures": F.periodic_table_figure(snapshot, mode="failures"),
        "growth": F.growth_figure(snapshot),
        "samplers": F.sampler_figure(snapshot),
        "element-growth": F.element_growth_figure(snapshot, elements=chosen, all_elements_in_legend=True),
        "element-heatmap": F.element_generation_heatmap(snapshot),
        "selection": F.selection_figure(snapshot),
        "model-quality": F.model_quality_figure(snapshot),
        "element-error": F.element_error_figure(snapshot, which="model"),
        "element-error-sentinel": F.element_error_figure(snapshot, which="sentinel"),
        "calibration": F.calibration_figure(snapshot),
        "probe-errors": F.probe_error_figure(snapshot),
        "dft-throughput": F.dft_throughput_figure(snapshot),
        "wall-time": F.wall_time_figure(snapshot),
        "dft-health": F.dft_health_figure(snapshot),
        "failures": F.failure_figure(snapshot),
    }  # fmt: skip
    div = {name: _figure_html(fig, name) for name, fig in graphs.items()}

    def row(*names: str) -> str:
        return '<div class="row">' + "".join(f"<div>{div[n]}</div>" for n in names) + "</div>"

    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""
<div class="page">
<h1>{html.escape(title)}</h1>
<div class="summary">{html.escape(F.summary_line(snapshot))}</div>
<div class="note">database {html.escape(snapshot.database)} · written {written} · aggregated in {snapshot.seconds:.2f} s ·
static copy: hover for numbers, click legend entries to show or hide series; <code>selfplay dashboard</code> is the live view</div>
<section><h2>Dataset per element</h2><div class="pt-wrap">{to_html(periodic_table_html(snapshot, first, last))}{div["periodic-table"]}</div>
{row("periodic-table-latest", "periodic-table-failures")}
<p class="note">A label counts once for every element of its frame.</p></section>
<section><h2>Dataset growth</h2>{row("growth", "samplers")}{row("element-growth")}{row("element-heatmap")}</section>
<section><h2>Selection</h2>{row("selection")}</section>
<section><h2>Model quality</h2>{row("model-quality", "calibration")}{row("element-error")}{row("element-error-sentinel")}</section>
<section id="probe-sets"><h2>{html.escape(F.PROBE_TITLE)}</h2>{row("probe-errors")}
<p class="note">{html.escape(F.PROBE_NOTE)}</p></section>
<section><h2>DFT cost and health</h2>{row("dft-throughput", "wall-time")}{row("dft-health", "failures")}
<h3 style="font-size:15px">Most frequent failure reasons</h3>{_reasons_table(F.top_failure_reasons(snapshot))}</section>
<section><h2>Latest generations</h2>{_generations_table(F.generation_rows(snapshot, limit=50, env=env))}</section>
</div>"""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n"
        f'<script type="text/javascript">{LOADER}</script>\n</head>\n<body>{body}\n'
        f'<script type="text/plain" id="plotly-js">{get_plotlyjs()}</script>\n</body>\n</html>\n'
    )


def write_report(
    path: Path | str,
    db: Optional[ReadOnlyDatabase] = None,
    env: Optional[Mapping[str, str]] = None,
    finishing: Optional[int] = None,
) -> Path:
    """Aggregate the connected store (or ``db``) and write the report to ``path`` atomically.

    ``finishing`` is the generation whose report stage writes this report: it is shown
    completed, as the flow records it right after the report stage.
    """
    path = Path(path)
    snapshot = take_snapshot(db or ReadOnlyDatabase.current(), finishing=finishing)
    text = render_report(snapshot, env=env)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as handle:
            handle.write(text)
            temporary = Path(handle.name)
        os.replace(temporary, path)
    except OSError as exc:
        raise DataFileError(f"cannot write report {path}: {exc.strerror or exc}") from None
    log.info("wrote dashboard report %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
