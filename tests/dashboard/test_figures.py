"""Figures and tables drawn from snapshots: the numbers they carry, and scale."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest
from ase.data import chemical_symbols

from pipeline.dashboard import figures as F
from pipeline.dashboard.queries import Snapshot, take_snapshot
from pipeline.dashboard.readonly import ReadOnlyDatabase

from . import fixtures as F_data


def cell_numbers(fig) -> dict[str, tuple[int, int]]:
    """symbol -> (labelled, failures) from the periodic table's customdata."""
    out = {}
    for row in fig.data[0].customdata:
        for cell in row:
            if cell is not None:
                out[cell[0]] = (cell[2], cell[3])
    return out


@pytest.mark.parametrize(
    "symbol, position",
    # rows/columns of the standard 18-column table (0-based), lanthanides on their own row 7
    [("H", (0, 0)), ("He", (0, 17)), ("Li", (1, 0)), ("B", (1, 12)), ("Ne", (1, 17)), ("Al", (2, 12)),
     ("K", (3, 0)), ("Fe", (3, 7)), ("Kr", (3, 17)), ("Ag", (4, 10)), ("Ba", (5, 1)), ("La", (7, 2)),
     ("Lu", (7, 16)), ("Hf", (5, 3)), ("Au", (5, 10)), ("Bi", (5, 14)), ("Rn", (5, 17))],
)  # fmt: skip
def test_table_positions(symbol, position):
    assert F.table_position(chemical_symbols.index(symbol)) == position


def test_table_positions_are_distinct():
    positions = [F.table_position(z) for z in range(1, F.TABLE_LAST_Z + 1)]
    assert len(set(positions)) == len(positions)
    assert all(0 <= r < F.TABLE_ROWS and 0 <= c < F.TABLE_COLUMNS for r, c in positions)


def test_periodic_table_carries_the_counts(embedded_store):
    F_data.fill_store()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    numbers = cell_numbers(F.periodic_table_figure(snapshot))
    assert {s: v for s, v in numbers.items() if v != (0, 0)} == {
        "H": (3, 0), "C": (1, 0), "O": (1, 3), "Al": (2, 1), "Cu": (3, 2),
    }  # fmt: skip
    assert len(numbers) == F.TABLE_LAST_Z  # every element has a cell
    gen1 = cell_numbers(F.periodic_table_figure(snapshot, 1, 1, imported=False))
    assert {s: v for s, v in gen1.items() if v != (0, 0)} == {
        "H": (1, 0),
        "C": (1, 0),
        "O": (0, 2),
        "Al": (1, 1),
        "Cu": (0, 1),
    }
    rate = F.periodic_table_figure(snapshot, mode="failure_rate")
    row, col = F.table_position(8)
    assert rate.data[0].z[row][col] == pytest.approx(3 / 4)  # O: 1 label, 3 failures


def test_generation_rows_and_prefect_links(embedded_store):
    F_data.fill_store()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    rows = F.generation_rows(snapshot, env={})
    assert [r["generation"] for r in rows] == [2, 1, 0]
    assert [r["status"] for r in rows] == ["running", "completed", "completed"]
    assert [r["labelled"] for r in rows] == [0, 2, 3] and [r["DFT failed"] for r in rows] == [0, 2, 1]
    assert rows[1]["duration"] == "3 h 00 min" and rows[1]["force MAE (eV/Å)"] == "0.210"
    assert rows[0]["stages"].startswith("train ✓ explore …")
    assert all(r["Prefect run"] is None for r in rows)
    run = "0c0ffee0-0000-4000-8000-000000000001"
    ui = F.generation_rows(snapshot, env={"PREFECT_UI_URL": "http://127.0.0.1:4200/"})
    assert ui[1]["Prefect run"] == f"http://127.0.0.1:4200/runs/flow-run/{run}"
    api = F.generation_rows(snapshot, env={"PREFECT_API_URL": "http://prefect.lan:4200/api"})
    assert api[1]["Prefect run"] == f"http://prefect.lan:4200/runs/flow-run/{run}"
    assert api[0]["Prefect run"] is None  # generation 2 has no flow run id
    cloud = F.prefect_ui_url({"PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/A/workspaces/W"})
    assert cloud == "https://app.prefect.cloud/account/A/workspace/W"


def test_rates_and_reasons(embedded_store):
    F_data.fill_store()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    throughput = F.dft_throughput_figure(snapshot)
    rates, means = throughput.data[0].y, throughput.data[1].y
    # gen 0: 3 labels in a 2 h label stage; gen 1: 2 labels in 1800 s; gen 2 has no label stage yet
    assert rates[0] == pytest.approx(1.5) and rates[1] == pytest.approx(4.0) and rates[2] is None
    assert means[0] == pytest.approx(35 / 3) and means[1] == pytest.approx(19.0)
    health = F.dft_health_figure(snapshot)
    assert health.data[0].y[:2] == pytest.approx((25.0, 50.0))  # 1 of 4, 2 of 4 attempts failed
    assert F.top_failure_reasons(snapshot) == [
        ("unconverged: SCF did not converge after 4 attempts", 2), ("timeout: no result within 600 s", 1),
    ]  # fmt: skip
    assert F.failure_kind("unconverged: SCF did not converge") == "unconverged"
    kinds = {trace.name: sum(trace.y) for trace in F.failure_figure(snapshot).data}
    assert kinds == {"unconverged": 2, "timeout": 1}


def synthetic_snapshot(generations: int, elements: int, seed: int = 0) -> Snapshot:
    """A snapshot as the database would return it for a large run (no database needed)."""
    rng = random.Random(seed)
    symbols = [chemical_symbols[z] for z in range(1, elements + 1)]
    snapshot = Snapshot(taken_at=datetime.now(timezone.utc), seconds=0.0, engine="standard", database="synthetic")
    for g in range(generations):
        for e in symbols:
            snapshot.labels_by_element[(g, e)] = rng.randint(0, 400)
            snapshot.failures_by_element[(g, e)] = rng.randint(0, 20)
        snapshot.labels_by_generation[g] = rng.randint(2000, 8000)
        snapshot.failures_by_generation[g] = rng.randint(0, 300)
        for source in ("random", "melt_quench", "substitution"):
            snapshot.frames_by_source[(g, source, "candidate")] = rng.randint(100, 2000)
            snapshot.labels_by_source[(g, source)] = rng.randint(100, 2000)
        snapshot.dft_time[g] = {"n": 100, "wall_time": 100 * rng.uniform(30, 300)}
        snapshot.scf_cycles[g] = {"n": 100, "cycles": 100 * rng.uniform(10, 30)}
        snapshot.failure_reasons[(g, "unconverged: SCF did not converge")] = rng.randint(0, 200)
        snapshot.generations.append(
            {
                "number": g, "status": "completed", "thresholds": {"lo": 0.05, "hi": 0.5},
                "counts": {"explored": 10000, "accurate": 7000, "candidate": 2500, "failed": 500, "selected": 1000},
                "ledger": {e: {"explored": 100, "accurate": 70, "candidate": 25, "failed": 5, "selected": 10} for e in symbols},
                "stages": {"label": {"status": "completed", "seconds": 3600.0}},
                "metrics": {"model": {"frames": 1000, "energy_mae_per_atom": 0.01, "force_mae": 0.1,
                                      "per_element": {e: {"force_mae": rng.uniform(0.02, 0.3), "n_atoms": 50} for e in symbols}}},
            }
        )  # fmt: skip
    for n_atoms in range(2, 65):
        snapshot.wall_time_by_size[(n_atoms, "gpu")] = {"n": 50, "wall_time": 50 * 0.05 * n_atoms**2}
    snapshot.calibration = {
        g: [{"sigma_f": rng.uniform(0.01, 1), "force_error_max": rng.uniform(0.01, 1)} for _ in range(100)]
        for g in range(generations - 20, generations)
    }
    return snapshot


def test_hundreds_of_generations_and_dozens_of_elements():
    snapshot = synthetic_snapshot(300, 80)
    fig = F.periodic_table_figure(snapshot, 100, 299)
    numbers = cell_numbers(fig)
    assert numbers["Fe"][0] == sum(snapshot.labels_by_element[(g, "Fe")] for g in range(100, 300))
    heat = F.element_generation_heatmap(snapshot)
    assert len(heat.data[0].y) == 80 and len(heat.data[0].x) == 300
    assert heat.layout.height <= 900  # stays on a screen
    growth = F.element_growth_figure(snapshot, elements=["H", "Fe"], all_elements_in_legend=True)
    assert sum(1 for t in growth.data if t.visible is True) == 2 and len(growth.data) == 80
    assert growth.data[0].y[-1] == sum(snapshot.labels_by_element[(g, "H")] for g in range(300))  # cumulative
    # about ten integer ticks on generation axes, whatever the number of generations
    assert F.growth_figure(snapshot).layout.xaxis.dtick == 50
    for build in (F.selection_figure, F.model_quality_figure, F.calibration_figure, F.dft_throughput_figure,
                  F.dft_health_figure, F.failure_figure, F.sampler_figure):  # fmt: skip
        assert build(snapshot).data, build.__name__
    assert len(F.generation_rows(snapshot)) == 20


def test_empty_snapshot_draws_placeholders():
    snapshot = Snapshot(taken_at=datetime.now(timezone.utc), seconds=0.0, engine="standard", database="empty")
    for build in (F.growth_figure, F.sampler_figure, F.element_growth_figure, F.element_generation_heatmap,
                  F.selection_figure, F.model_quality_figure, F.element_error_figure, F.calibration_figure,
                  F.dft_throughput_figure, F.dft_health_figure, F.failure_figure, F.probe_error_figure):  # fmt: skip
        fig = build(snapshot)
        assert not fig.data and fig.layout.annotations, build.__name__
    assert not F.wall_time_figure(snapshot).data
    table = F.periodic_table_figure(snapshot)
    assert set(cell_numbers(table).values()) == {(0, 0)}
    assert F.generation_rows(snapshot) == [] and F.top_failure_reasons(snapshot) == []


def test_formatting():
    assert (
        F.short(999) == "999"
        and F.short(1234) == "1.2k"
        and F.short(2_500_000) == "2.5M"
        and F.short(123_456) == "123k"
    )
    assert F.format_duration(3725) == "1 h 02 min" and F.format_duration(59) == "59 s" and F.format_duration(None) == ""
    assert [F.nice_step(r) for r in (0.3, 1, 1.5, 3, 7, 12, 30, 51)] == [1, 1, 2, 5, 10, 20, 50, 100]


def test_probe_sets_error_versus_labels(embedded_store):
    F_data.fill_store()
    assert F.probe_rows(take_snapshot(ReadOnlyDatabase.current())) == {}
    empty = F.probe_error_figure(take_snapshot(ReadOnlyDatabase.current()))
    assert not empty.data and "no model scored on a probe set yet" in empty.layout.annotations[0].text
    F_data.add_probe_metrics()
    snapshot = take_snapshot(ReadOnlyDatabase.current())
    rows = F.probe_rows(snapshot)
    assert sorted(rows) == ["cells", "molecules"]
    # the cold start (generation 0) has no row; generation 2 did not score "molecules": a gap, not a zero
    assert [(r["generation"], r["labels"], r["force_mae"]) for r in rows["cells"]] == [(1, 3, 0.30), (2, 5, 0.15)]
    assert [(r["generation"], r["labels"], r["force_mae"]) for r in rows["molecules"]] == [
        (1, 3, 0.20),
        (2, None, None),
    ]
    fig = F.probe_error_figure(snapshot)
    traces = {(t.name, t.xaxis): t for t in fig.data}
    assert sorted(traces) == [("cells", "x"), ("cells", "x2"), ("molecules", "x"), ("molecules", "x2")]
    assert list(traces["cells", "x"].x) == [3, 5] and list(traces["cells", "x"].y) == [0.30, 0.15]
    assert list(traces["cells", "x2"].y) == pytest.approx([20.0, 10.0])  # meV/atom
    assert list(traces["molecules", "x"].y) == [0.20, None] and traces["molecules", "x"].connectgaps is False
    assert [t.showlegend for t in fig.data] == [True, False, True, False]  # one legend entry per probe set
    assert fig.layout.title.text == F.PROBE_FIGURE_TITLE
    assert F.probe_rows(snapshot, 2, 2) == {"cells": [rows["cells"][1]]}  # sets the range scored
    assert F.probe_rows(snapshot, 0, 0) == {}
