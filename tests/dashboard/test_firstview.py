"""The first view: per-element numbers as HTML, before any script."""

from __future__ import annotations

import re

from dash import html

from pipeline.dashboard.firstview import cell_colour, periodic_table_html, to_html
from pipeline.dashboard.queries import take_snapshot
from pipeline.dashboard.readonly import ReadOnlyDatabase

from . import fixtures as F


def cells(markup: str) -> dict:
    out = {}
    for tag in re.findall(r"<div [^>]*data-symbol=[^>]*>", markup):
        attributes = dict(re.findall(r'(data-\w+)="([^"]*)"', tag))
        if "data-labelled" in attributes:
            out[attributes["data-symbol"]] = (int(attributes["data-labelled"]), int(attributes["data-failures"]))
    return out


def test_periodic_table_html_shows_the_hand_counts(embedded_store):
    F.fill_store()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    shown = {s: v for s, v in cells(to_html(periodic_table_html(snapshot))).items() if any(v)}
    assert shown == {"H": (3, 0), "C": (1, 0), "O": (1, 3), "Al": (2, 1), "Cu": (3, 2)}
    only_gen1 = {s: v for s, v in cells(to_html(periodic_table_html(snapshot, 1, 1))).items() if any(v)}
    assert only_gen1 == {"H": (2, 0), "C": (1, 0), "O": (0, 2), "Al": (1, 1), "Cu": (1, 1)}  # + imported Cu, H
    assert len(cells(to_html(periodic_table_html(None)))) == 83  # supported elements, all zero


def test_to_html_escapes_and_renders_attributes():
    node = html.Div(
        [html.B("<b>"), html.Br(), 'say "hi"'], className="a b", style={"gridRow": "2", "background": "#fff"},
        title='x"y', **{"data-symbol": "Cu"},
    )  # fmt: skip
    assert to_html(node) == (
        '<div class="a b" title="x&quot;y" style="grid-row:2;background:#fff" data-symbol="Cu">'
        "<b>&lt;b&gt;</b><br>say &quot;hi&quot;</div>"
    )


def test_colours_follow_the_log_scale():
    assert cell_colour(0, 0.0, 3.0) == ("#eeeeee", False)
    assert cell_colour(1, 0.0, 3.0) == ("#deebf7", False)
    assert cell_colour(1000, 0.0, 3.0) == ("#08519c", True)
