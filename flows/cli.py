"""``selfplay demo`` and ``selfplay run``: generations from the command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def _print_generation(number: int) -> None:
    from rich.console import Console

    from pipeline.documents import Generation

    console = Console(soft_wrap=True)  # whole lines, also when the output is a file
    record = Generation.objects.get(number=number)
    counts = record.counts or {}
    model = (record.metrics or {}).get("model")
    sentinel = (record.metrics or {}).get("sentinel")
    train = (record.stages or {}).get("train", {}).get("result", {})
    console.print(f"[bold]generation {record.number}[/bold]: {record.status}", highlight=False)
    console.print(
        f"  trained: {train.get('model') or train.get('skipped', '-')}"
        + (f" on {train['frames']} frames" if train.get("model") else ""),
        highlight=False,
    )
    console.print(
        "  explored {explored}  accurate {accurate}  candidate {candidate}  failed {failed}  unscored {unscored}  "
        "selected {selected} (+{sentinel} sentinels)  labelled {labelled}  DFT failures {dft_failed}".format(
            **{
                k: counts.get(k, 0)
                for k in ("explored", "accurate", "candidate", "failed", "unscored", "selected", "sentinel", "labelled", "dft_failed")
            }
        ),
        highlight=False,
    )
    for name, stats in (("model error on new labels", model), ("model error on sentinels", sentinel)):
        if stats:
            console.print(
                f"  {name}: energy {stats['energy_mae_per_atom'] * 1000:.1f} meV/atom, "
                f"forces {stats['force_mae']:.3f} eV/Å MAE ({stats['frames']} frames)",
                highlight=False,
            )
    files = (record.stages or {}).get("report", {}).get("result", {}).get("files", {})
    for kind in ("hdf5", "report"):
        if files.get(kind):
            console.print(f"  {kind}: {files[kind]}", highlight=False)


def demo(
    generations: int = typer.Option(2, min=1, max=5, help="Generations to run (the first is a cold start)."),
    workdir: Path = typer.Option(Path("selfplay-demo"), help="Where models, snapshot and report land."),
    prefect: bool = typer.Option(True, help="Run through Prefect (a temporary local server if none is configured)."),
) -> None:
    """Run small, real generations on CPU on the embedded store (no database or server needed)."""
    from pipeline.config import load_config
    from pipeline.store import connect

    config = load_config(DEMO_CONFIG, workdir=workdir, mongodb_uri=None)
    connect(None, database="selfplay-demo")
    typer.echo(
        f"selfplay demo: {generations} generations of {', '.join(config.elements)} on the embedded store, "
        f"DFT {config.dft.functional}/{config.dft.basis} with PySCF, output in {workdir}/"
    )
    if prefect:
        from flows.generation import prepare_local_prefect

        prepare_local_prefect(home=str((workdir / ".prefect").resolve()))
    for _ in range(generations):
        number = _run_one(config, DEMO_CONFIG, {"workdir": str(workdir)}, prefect, require_persistent=False)
        _print_generation(number)


def _run_one(config, config_file: Optional[Path], overrides: dict, prefect: bool, require_persistent: bool) -> int:
    if prefect:
        from flows.generation import generation, prepare_local_prefect

        prepare_local_prefect()
        result = generation(
            config_file=str(config_file) if config_file else None,
            overrides=overrides,
            require_persistent_store=require_persistent,
        )
        return result["generation"]
    from pipeline.generation import run_generation

    return run_generation(config, progress=True).number


def run(
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Generation config (YAML)."),
    prefect: bool = typer.Option(True, help="Run as a Prefect flow (PREFECT_API_URL, or a temporary server)."),
) -> None:
    """Run (or resume) one generation against the configured MongoDB."""
    from pipeline.cli import State
    from pipeline.config import load_config
    from pipeline.store import connect_from_config

    path = config_file or State.config_path
    config = load_config(path)
    connect_from_config(config, require_persistent=True)  # fail before any work
    number = _run_one(config, path, {}, prefect, require_persistent=True)
    _print_generation(number)


def status() -> None:
    """The latest generations and the state of each stage."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.cli import connect_store
    from pipeline.documents import Generation
    from pipeline.generation import STAGES

    connect_store()
    table = Table(title="generations")
    for column in ("generation", "status", *STAGES, "selected", "labelled", "DFT failed", "error"):
        table.add_column(column)
    for record in Generation.objects.order_by("-number").limit(20):
        counts = record.counts or {}
        table.add_row(
            str(record.number),
            record.status,
            *[(record.stages or {}).get(s, {}).get("status", "-") for s in STAGES],
            str(counts.get("selected", "-")),
            str(counts.get("labelled", "-")),
            str(counts.get("dft_failed", "-")),
            (record.error or "")[:80],
        )
    Console().print(table)
