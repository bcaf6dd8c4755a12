"""Dashboard cost: database aggregation (snapshot), drawing, static report, first paint.

Fills a fresh database with synthetic generations (frames, labels with force arrays of
realistic size, failures, Generation documents with ledger and metrics), then times

* ``snapshot``: every aggregation the dashboard runs (what grows with the data),
* ``figures``: all figures and tables drawn from the snapshot (server side, Python),
* ``report``: the static HTML report (render only, and its size),
* ``first paint``: headless Chromium (Playwright) from navigation until every graph has
  drawn and the generations table is there, with the snapshot already taken — which is
  how the served page works (the snapshot is refreshed in the background),
* ``--summaries``: the snapshot again after writing per-generation summaries (checked
  equal to the live numbers), the time to rebuild them all and to write one,
* ``--first-view N``: first contentful paint, per-element numbers visible, React mounted,
  heat map and all charts drawn, for the dashboard and the static report, on a synthetic
  snapshot of N labels (no database: what the page costs depends on the snapshot only).

Against the embedded store (mongomock-ng, in-process) or a MongoDB-wire server
(``--uri``, or ``--ferretdb BIN`` to start FerretDB v1 on loopback here). Several
sizes (``--labels-per-generation 10,50,200``) show how the snapshot scales with frames.

    python benchmarks/bench_dashboard.py --ferretdb /tmp/ferretbin/ferretdb \
        --generations 100 --elements 60 --labels-per-generation 10,30 --browser \
        --out benchmarks/results/dashboard.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psutil
from bson import ObjectId

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAILURE_REASONS = [
    "unconverged: SCF did not converge after 4 attempts (damping, level shift, newton, smearing)",
    "timeout: no result within 600 s",
    "out_of_memory: CUDA out of memory",
    "error: basis set has no entry for the element",
]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ferretdb(binary: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [binary, "--handler=sqlite", f"--sqlite-url=file:{workdir}/", f"--state-dir={workdir}",
         f"--listen-addr=127.0.0.1:{port}", f"--debug-addr=127.0.0.1:{free_port()}", "--telemetry=disable",
         "--log-level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"mongodb://127.0.0.1:{port}"
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("FerretDB did not start")


def fill(db, generations: int, n_elements: int, per_generation: int, seed: int = 0) -> dict:
    """Insert synthetic documents with raw pymongo (same fields as pipeline.documents)."""
    from ase.data import chemical_symbols

    rng = np.random.default_rng(seed)
    symbols = [chemical_symbols[z] for z in range(1, n_elements + 1)]
    weights = 1.0 / np.arange(1, n_elements + 1) ** 0.7  # light elements are more common
    weights /= weights.sum()
    samplers = ["random", "melt_quench", "substitution"]
    start = datetime(2025, 1, 1)
    counts = {"frames": 0, "labels": 0, "failures": 0}
    t0 = time.perf_counter()

    def frame_doc(generation, source, selected_as):
        n_atoms = int(rng.integers(4, 65))
        elements = sorted(set(rng.choice(symbols, size=int(rng.integers(1, 4)), p=weights)), key=symbols.index)
        return {
            "_id": ObjectId(), "hash": uuid.uuid4().hex + uuid.uuid4().hex, "n_atoms": n_atoms,
            "numbers": rng.integers(1, 80, n_atoms).astype(np.uint8).tobytes(), "positions": rng.random(n_atoms * 3).tobytes(),
            "cell": np.eye(3).tobytes(), "pbc": [True] * 3, "elements": elements, "formula": "".join(elements),
            "generation": generation, "source": source, "provenance": {"sampler": source, "seed": int(rng.integers(1 << 30))},
            "sigma_f": float(rng.uniform(0.05, 0.5)), "selected_as": selected_as, "created_at": start,
        }  # fmt: skip

    for g in [None] + list(range(generations)):
        frames, labels, failures = [], [], []
        for i in range(per_generation):
            source = "import" if g is None else samplers[i % 3]
            frame = frame_doc(g, source, None if g is None else ("sentinel" if i % 10 == 0 else "candidate"))
            frames.append(frame)
            base = {"frame": frame["_id"], "frame_hash": frame["hash"], "theory": "bench", "elements": frame["elements"],
                    "generation": g, "created_at": start + timedelta(hours=(g or 0))}  # fmt: skip
            if g is not None and rng.random() < 0.05:
                failures.append(
                    {
                        **base,
                        "reason": FAILURE_REASONS[int(rng.integers(len(FAILURE_REASONS)))],
                        "attempts": [{"rung": 0}],
                    }
                )
            else:
                n = frame["n_atoms"]
                info = (
                    {}
                    if g is None
                    else {
                        "device": "gpu" if i % 2 else "cpu",
                        "scf_cycles": int(rng.integers(8, 30)),
                        "converged": True,
                    }
                )
                labels.append({**base, "energy": float(rng.normal()), "forces": rng.normal(size=n * 3).tobytes(), "n_atoms": n,
                               "info": info, "wall_time": None if g is None else float(0.02 * n**2 * rng.uniform(0.5, 2))})  # fmt: skip
        db["frames"].insert_many(frames, ordered=False)
        if labels:
            db["labels"].insert_many(labels, ordered=False)
        if failures:
            db["failures"].insert_many(failures, ordered=False)
        counts["frames"] += len(frames)
        counts["labels"] += len(labels)
        counts["failures"] += len(failures)
        if g is None:
            continue
        ledger = {e: {"explored": int(rng.integers(50, 500)), "accurate": 40, "candidate": 8, "failed": 2, "selected": 5,
                      "labelled": 4, "dft_failed": 1} for e in symbols}  # fmt: skip
        db["generations"].insert_one(
            {
                "number": g, "status": "completed" if g < generations - 1 else "running",
                "thresholds": {"lo": 0.05, "hi": 0.5},
                "counts": {"explored": 20 * per_generation, "accurate": 14 * per_generation, "candidate": 5 * per_generation,
                           "failed": per_generation, "selected": per_generation, "sentinel": per_generation // 10,
                           "labelled": len(labels), "dft_failed": len(failures)},
                "ledger": ledger,
                "stages": {s: {"status": "completed", "seconds": 600.0} for s in ("train", "explore", "select", "label", "report")},
                "metrics": {
                    "model": {"frames": len(labels), "energy_mae_per_atom": float(rng.uniform(0.002, 0.02)),
                              "force_mae": float(rng.uniform(0.05, 0.3)),
                              "per_element": {e: {"force_mae": float(rng.uniform(0.02, 0.4)), "n_atoms": 100} for e in symbols}},
                    "sentinel": {"frames": 10, "energy_mae_per_atom": 0.004, "force_mae": float(rng.uniform(0.02, 0.1)),
                                 "per_element": {e: {"force_mae": float(rng.uniform(0.02, 0.2)), "n_atoms": 20} for e in symbols}},
                    "calibration": [{"sigma_f": float(s), "force_error_max": float(s * rng.lognormal(0, 0.5)),
                                     "selected_as": "candidate"} for s in rng.uniform(0.03, 0.6, 100)],
                    "sigma_f_sample": [float(x) for x in rng.uniform(0, 1, 1000)],  # as flows.stages
                    "sigma_f_quantiles": {"q50": 0.08, "q90": 0.3},
                },
                "prefect_flow_run_id": str(uuid.uuid4()),
                "started_at": start + timedelta(hours=g), "finished_at": start + timedelta(hours=g, minutes=50),
            }
        )  # fmt: skip
    counts["insert_s"] = time.perf_counter() - t0
    return counts


def cpu_seconds(processes) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def browser_processes() -> list:
    """Chromium processes started by Playwright under this process."""
    return [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]


def time_first_paint(server, repeats: int, screenshot: Path | None) -> dict:
    """Wall seconds from navigation to everything drawn, and CPU seconds that took.

    CPU seconds (browser processes + this Python process serving the callbacks) say what
    the page costs on an idle machine, where wall time approaches them; on a shared,
    loaded machine wall time is several times larger.
    """
    from playwright.sync_api import sync_playwright

    ready = (
        "() => { const g = document.querySelectorAll('.js-plotly-plot');"
        " return g.length >= 13 && [...g].every(d => d._fullLayout && d.querySelector('.main-svg'))"
        " && document.querySelector('#generations tbody tr') !== null; }"
    )
    times, browser_cpu, server_cpu, top = [], [], [], []
    top_ready = (
        "() => { const g = document.querySelector('#periodic-table .js-plotly-plot');"
        " return g && g._fullLayout && g.querySelector('.main-svg') && g.data.length; }"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("SELFPLAY_CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        for attempt in range(repeats + 1):  # the first load warms the browser's cache of the JS bundles
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            processes = browser_processes()
            cpu0, own0 = cpu_seconds(processes), time.process_time()
            start = time.perf_counter()
            page.goto(server.url, wait_until="commit")
            page.wait_for_function(top_ready, timeout=120000, polling=20)
            table = time.perf_counter() - start
            page.wait_for_function(ready, timeout=120000, polling=20)
            elapsed = time.perf_counter() - start
            cpu1, own1 = cpu_seconds(browser_processes()), time.process_time()
            if attempt:
                times.append(elapsed)
                top.append(table)
                browser_cpu.append(cpu1 - cpu0)
                server_cpu.append(own1 - own0)
            if screenshot and attempt == repeats:
                page.screenshot(path=str(screenshot), full_page=True)
            page.close()
        browser.close()
    return {"periodic_table_wall_s": top, "all_wall_s": times, "browser_cpu_s": browser_cpu, "server_cpu_s": server_cpu}


FIRST_VIEW_MARKS = """
window.__marks = {};
(() => {
  const mark = (name) => { if (!(name in window.__marks)) window.__marks[name] = performance.now(); };
  const check = () => {
    // requestAnimationFrame callbacks run just before a frame is painted
    const cell = document.querySelector('.pt-cell[data-labelled]');
    if (cell && cell.getBoundingClientRect().height > 0 && getComputedStyle(cell).visibility === 'visible'
        && cell.closest('.pt-html') && getComputedStyle(cell.closest('.pt-html')).display !== 'none') mark('numbers_visible');
    if (document.querySelector('#summary') && !document.querySelector('#first-view')) mark('react_mounted');
    if (document.querySelector('#periodic-table .js-plotly-plot .main-svg')) mark('heatmap_drawn');
    const graphs = document.querySelectorAll('.js-plotly-plot');
    if (graphs.length >= 13 && [...graphs].every(d => d._fullLayout && d.querySelector('.main-svg'))
        && document.querySelector('#generations tbody tr')) mark('all_drawn');
    if (!('all_drawn' in window.__marks)) requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();
"""


REPORT_MARKS = """
window.__marks = {};
(() => {
  const mark = (name) => { if (!(name in window.__marks)) window.__marks[name] = performance.now(); };
  const check = () => {
    const cell = document.querySelector('.pt-cell[data-labelled]');
    if (cell && cell.getBoundingClientRect().height > 0) mark('numbers_visible');
    const graphs = document.querySelectorAll('.js-plotly-plot');
    if (graphs.length >= 16 && [...graphs].every(d => d._fullLayout && d.querySelector('.main-svg'))) mark('all_drawn');
    if (!('all_drawn' in window.__marks)) requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();
"""


def synthetic_snapshot(generations: int, n_elements: int, labels: int, seed: int = 0):
    """A snapshot as 100 generations x 60 elements x ``labels`` would reduce to (no database)."""
    from ase.data import chemical_symbols

    from pipeline.dashboard.queries import Snapshot

    rng = np.random.default_rng(seed)
    symbols = [chemical_symbols[z] for z in range(1, n_elements + 1)]
    weights = 1.0 / np.arange(1, n_elements + 1) ** 0.7
    weights /= weights.sum()
    per_generation = labels // generations
    snapshot = Snapshot(taken_at=datetime.now(timezone.utc), seconds=0.0, engine="synthetic", database="synthetic")
    samplers = ("random", "melt_quench", "substitution")
    for g in range(generations):
        for e, n in zip(symbols, rng.multinomial(int(per_generation * 1.8), weights)):  # ~1.8 elements per frame
            snapshot.labels_by_element[(g, e)] = int(n)
            snapshot.failures_by_element[(g, e)] = int(n // 20)
        for source, n in zip(samplers, rng.multinomial(per_generation, [0.5, 0.3, 0.2])):
            snapshot.labels_by_source[(g, source)] = int(n)
            snapshot.frames_by_source[(g, source, "candidate")] = int(n * 1.05)
        snapshot.labels_by_generation[g] = per_generation
        snapshot.failures_by_generation[g] = per_generation // 20
        snapshot.dft_time[g] = {"n": per_generation, "wall_time": per_generation * float(rng.uniform(30, 300))}
        snapshot.scf_cycles[g] = {"n": per_generation, "cycles": per_generation * float(rng.uniform(10, 30))}
        for reason in FAILURE_REASONS:
            snapshot.failure_reasons[(g, reason)] = per_generation // 80
        snapshot.generations.append(
            {
                "number": g, "status": "completed" if g < generations - 1 else "running",
                "thresholds": {"lo": 0.05, "hi": 0.5},
                "counts": {"explored": 20 * per_generation, "accurate": 14 * per_generation, "candidate": 5 * per_generation,
                           "failed": per_generation, "selected": per_generation},
                "ledger": {e: {"explored": 100, "accurate": 70, "candidate": 25, "failed": 5, "selected": 10} for e in symbols},
                "stages": {st: {"status": "completed", "seconds": 3600.0} for st in ("train", "explore", "select", "label", "report")},
                "metrics": {"model": {"frames": 1000, "energy_mae_per_atom": 0.01, "force_mae": float(rng.uniform(0.05, 0.3)),
                                      "per_element": {e: {"force_mae": float(rng.uniform(0.02, 0.3)), "n_atoms": 50} for e in symbols}},
                            "sentinel": {"frames": 10, "energy_mae_per_atom": 0.004, "force_mae": 0.05,
                                         "per_element": {e: {"force_mae": float(rng.uniform(0.02, 0.2)), "n_atoms": 20} for e in symbols}},
                            "sigma_f_quantiles": {"q50": 0.08, "q90": 0.3}},
                "prefect_flow_run_id": str(uuid.UUID(int=g)),
                "started_at": datetime(2025, 1, 1) + timedelta(days=g),
                "finished_at": datetime(2025, 1, 1) + timedelta(days=g, hours=5),
            }
        )  # fmt: skip
    for n_atoms in range(2, 65):
        for device in ("cpu", "gpu"):
            snapshot.wall_time_by_size[(n_atoms, device)] = {"n": 50, "wall_time": 50 * 0.05 * n_atoms**2}
    snapshot.calibration = {
        g: [{"sigma_f": float(x), "force_error_max": float(x * rng.lognormal(0, 0.5)), "selected_as": "candidate"}
            for x in rng.uniform(0.03, 0.6, 100)]
        for g in range(generations - 20, generations)
    }  # fmt: skip
    return snapshot


def first_view_benchmark(generations: int, n_elements: int, labels: int, repeat: int, screenshot_dir) -> dict:
    """Navigation -> first contentful paint, per-element numbers visible, React mounted, heat map, all charts."""
    from playwright.sync_api import sync_playwright

    from pipeline.dashboard.app import DashboardServer, Drawings
    from pipeline.dashboard.readonly import ReadOnlyDatabase

    snapshot = synthetic_snapshot(generations, n_elements, labels)
    server = DashboardServer(ReadOnlyDatabase(None), port=0, refresh_s=3600)
    server.source._drawings = Drawings(snapshot).warm()  # as the refresh thread publishes it
    server.source._version = 1
    thread = __import__("threading").Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    runs = []
    try:
        import urllib.request

        index_kb = len(urllib.request.urlopen(server.url, timeout=60).read()) / 1e3
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=os.environ.get("SELFPLAY_CHROMIUM", "/usr/bin/chromium"),
                                                 args=CHROMIUM_ARGS)  # fmt: skip
            for attempt in range(repeat + 1):  # the first load warms the browser's cache of the JS bundles
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.add_init_script(FIRST_VIEW_MARKS)
                load0 = os.getloadavg()[0]
                page.goto(server.url, wait_until="commit")
                page.wait_for_function("() => 'all_drawn' in window.__marks", timeout=180000, polling=50)
                marks = page.evaluate("() => window.__marks")
                paints = page.evaluate(
                    "() => Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"
                )
                numbers = page.evaluate(
                    "() => Object.fromEntries([...document.querySelectorAll('#periodic-table-html [data-symbol]')]"
                    ".map(c => [c.dataset.symbol, +c.dataset.labelled]))"
                )  # fmt: skip
                if attempt:
                    runs.append({**{k: v / 1000 for k, v in paints.items()}, **{k: v / 1000 for k, v in marks.items()},
                                 "load_average_1min": load0})  # fmt: skip
                if attempt == 1 and screenshot_dir:
                    page.screenshot(path=str(screenshot_dir / "first-view-drawn.png"))
                page.close()
            # the static report of the same snapshot, opened from a file
            from pipeline.dashboard.report import render_report

            report_runs = []
            with tempfile.TemporaryDirectory() as directory:
                report = Path(directory) / "report.html"
                report.write_text(render_report(snapshot), encoding="utf-8")
                for _ in range(repeat):
                    page = browser.new_page(viewport={"width": 1400, "height": 900})
                    page.add_init_script(REPORT_MARKS)
                    page.goto(report.as_uri(), wait_until="commit")
                    page.wait_for_function("() => 'all_drawn' in window.__marks", timeout=180000, polling=50)
                    marks = page.evaluate("() => window.__marks")
                    paints = page.evaluate(
                        "() => Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))"
                    )
                    report_runs.append({**{k: v / 1000 for k, v in paints.items()}, **{k: v / 1000 for k, v in marks.items()},
                                        "load_average_1min": os.getloadavg()[0]})  # fmt: skip
                    page.close()
            # what the first paint shows: the page with scripts disabled
            context = browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(server.url)
            if screenshot_dir:
                page.screenshot(path=str(screenshot_dir / "first-view-no-script.png"), full_page=True)
            context.close()
            browser.close()
    finally:
        server.server.shutdown()
        server.server.server_close()
    expected = snapshot.element_totals("labels")
    assert all(numbers.get(e) == n for e, n in expected.items()), "first view numbers differ from the snapshot"
    return {"kind": "first_view", "generations": generations, "elements": n_elements, "labels": sum(snapshot.labels_by_generation.values()),
            "index_html_kb": index_kb, "runs": runs, "report_runs": report_runs}  # fmt: skip


def chromium_version() -> str:
    try:
        return subprocess.run([os.environ.get("SELFPLAY_CHROMIUM", "/usr/bin/chromium"), "--version"], capture_output=True,
                              text=True, timeout=30).stdout.strip()  # fmt: skip
    except OSError:
        return "?"


def package_version(name: str) -> str:
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return "?"


def run_size(
    uri, generations, elements, per_generation, repeat, browser, screenshot_dir, database_process=None, summaries=False
) -> dict:
    import mongoengine as me

    from pipeline.dashboard import figures as F
    from pipeline.dashboard.app import DashboardServer
    from pipeline.dashboard.queries import take_snapshot
    from pipeline.dashboard.readonly import ReadOnlyDatabase
    from pipeline.dashboard.report import render_report
    from pipeline.store import connect

    name = f"bench_dash_{uuid.uuid4().hex[:8]}"
    connect(None if uri is None else f"{uri}/{name}", database=name, timeout_ms=20000)
    raw = me.get_db()
    try:
        counts = fill(raw, generations, elements, per_generation)
        db = ReadOnlyDatabase.current()
        snapshot_s, snapshot_cpu, server_cpu = [], [], []
        for _ in range(repeat):
            start, cpu = time.perf_counter(), time.process_time()
            db_cpu = cpu_seconds([database_process]) if database_process else 0.0
            snapshot = take_snapshot(db)
            snapshot_s.append(time.perf_counter() - start)
            snapshot_cpu.append(time.process_time() - cpu)
            if database_process:
                server_cpu.append(cpu_seconds([database_process]) - db_cpu)
        if summaries:
            from pipeline.dashboard.summaries import write_generation_summary, write_summaries

            live_snapshot = snapshot
            db_cpu = cpu_seconds([database_process]) if database_process else 0.0
            start = time.perf_counter()
            written = write_summaries()  # old data: one pass over everything, split per generation
            result_summaries = {"rebuild_all_s": time.perf_counter() - start, "generations_summarised": len(written),
                                "rebuild_database_cpu_s": (cpu_seconds([database_process]) - db_cpu) if database_process else None}  # fmt: skip
            start = time.perf_counter()
            write_generation_summary(written[-1])  # what one report stage adds
            result_summaries["one_generation_s"] = time.perf_counter() - start
            with_s, with_db = [], []
            for _ in range(repeat):
                db_cpu = cpu_seconds([database_process]) if database_process else 0.0
                start = time.perf_counter()
                snapshot = take_snapshot(db)
                with_s.append(time.perf_counter() - start)
                if database_process:
                    with_db.append(cpu_seconds([database_process]) - db_cpu)
            result_summaries.update(
                snapshot_s=with_s, snapshot_database_cpu_s=with_db, summarised=len(snapshot.summarised)
            )
            for name in ("labels_by_element", "failures_by_element", "labels_by_source", "frames_by_source", "dft_time",
                         "scf_cycles", "wall_time_by_size", "failure_reasons", "labels_by_generation"):  # fmt: skip
                mine, live = getattr(snapshot, name), getattr(live_snapshot, name)
                same = mine.keys() == live.keys() and all(
                    (
                        abs(mine[k]["wall_time"] - live[k]["wall_time"]) < 1e-6 * max(1, abs(live[k]["wall_time"]))
                        and mine[k]["n"] == live[k]["n"]
                    )
                    if isinstance(live[k], dict) and "wall_time" in live[k]
                    else mine[k] == live[k]
                    for k in live
                )  # sums of floats may differ in the last bits with the order of addition
                assert same, f"summaries differ from the live aggregation in {name}"
            result_summaries["same_numbers_as_live"] = True
        start = time.process_time()
        for _ in range(repeat):
            numbers = snapshot.generation_numbers
            F.periodic_table_figure(snapshot), F.growth_figure(snapshot), F.sampler_figure(snapshot)
            F.element_growth_figure(snapshot), F.element_generation_heatmap(snapshot), F.selection_figure(snapshot)
            F.model_quality_figure(snapshot), F.element_error_figure(snapshot), F.calibration_figure(snapshot)
            F.dft_throughput_figure(snapshot), F.dft_health_figure(snapshot), F.wall_time_figure(snapshot)
            (
                F.failure_figure(snapshot),
                F.generation_rows(snapshot),
                F.periodic_table_figure(snapshot, numbers[-1], numbers[-1]),
            )
        figures_s = (time.process_time() - start) / repeat
        start = time.process_time()
        html = render_report(snapshot)
        report_s = time.process_time() - start
        result = {
            "store": db.engine if uri else "embedded (mongomock-ng)",
            "generations": generations, "elements": elements, "labels_per_generation": per_generation, **counts,
            "snapshot_s": snapshot_s, "snapshot_python_cpu_s": snapshot_cpu, "snapshot_database_cpu_s": server_cpu,
            "snapshot_rows": {
                "labels_by_element": len(snapshot.labels_by_element), "frames_by_source": len(snapshot.frames_by_source),
                "wall_time_by_size": len(snapshot.wall_time_by_size), "generations": len(snapshot.generations)},
            "figures_cpu_s": figures_s, "report_render_cpu_s": report_s, "report_mb": len(html.encode()) / 1e6,
        }  # fmt: skip
        if summaries:
            result["with_summaries"] = result_summaries
        if browser:
            server = DashboardServer(db, port=0, refresh_s=3600).start()
            try:
                server.wait_ready(timeout=3600)
                shot = screenshot_dir / f"dashboard-{generations}x{elements}.png" if screenshot_dir else None
                result["first_paint"] = time_first_paint(server, repeat, shot)
            finally:
                server.shutdown()
        return result
    finally:
        raw.client.drop_database(name)
        me.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uri", help="mongodb:// server (no database part); default: the embedded store")
    parser.add_argument("--ferretdb", help="start this FerretDB v1 binary on loopback and use it")
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--elements", type=int, default=60)
    parser.add_argument("--labels-per-generation", default="10,30", help="comma-separated sizes to run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also time first paint in headless Chromium")
    parser.add_argument("--screenshots", type=Path, help="directory for a full-page screenshot per size")
    parser.add_argument(
        "--summaries",
        action="store_true",
        help="also write per-generation summaries and time the snapshot that reads them",
    )
    parser.add_argument(
        "--first-view",
        type=int,
        default=0,
        metavar="LABELS",
        help="only time first paint (first view and charts) on a synthetic snapshot of this many labels",
    )
    parser.add_argument("--out", type=Path, help="append results to this JSON file")
    args = parser.parse_args()
    if args.first_view:
        result = first_view_benchmark(args.generations, args.elements, args.first_view, args.repeat, args.screenshots)
        print(json.dumps(result), flush=True)
        record(args, [result])
        return

    ferret = None
    uri = args.uri.rstrip("/") if args.uri else None
    workdir = tempfile.TemporaryDirectory(prefix="bench-dashboard-")
    if args.ferretdb:
        ferret, uri = start_ferretdb(args.ferretdb, Path(workdir.name))
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for size in [int(s) for s in args.labels_per_generation.split(",")]:
            result = run_size(uri, args.generations, args.elements, size, args.repeat, args.browser, args.screenshots,
                              psutil.Process(ferret.pid) if ferret else None, summaries=args.summaries)  # fmt: skip
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        if ferret is not None:
            ferret.terminate()
            ferret.wait(10)
        workdir.cleanup()
    record(args, results)


def record(args, results: list) -> None:
    import dash
    import plotly

    meta = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "python": platform.python_version(), "dash": dash.__version__, "plotly": plotly.__version__,
        "server": "none: a synthetic snapshot served from memory" if args.first_view
        else ("FerretDB v1 (SQLite)" if args.ferretdb else (args.uri or "embedded")),
        "chromium": chromium_version(), "playwright": package_version("playwright"),
    }  # fmt: skip
    if args.out:
        existing = json.loads(args.out.read_text()) if args.out.exists() else []
        existing.append({"meta": meta, "results": results})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(existing, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
