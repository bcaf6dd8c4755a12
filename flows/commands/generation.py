"""``selfplay demo`` and ``selfplay run``: generations from the command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)

#: The demo's configuration per labeller kind: PySCF DFT (minutes per generation) or
#: GFN2-xTB through tblite (seconds per generation, so many of them).
_FLOWS = Path(__file__).resolve().parent.parent
DEMO_CONFIGS = {"pyscf": _FLOWS / "demo.yaml", "xtb": _FLOWS / "demo_xtb.yaml"}
DEMO_GENERATIONS = {"pyscf": 2, "xtb": 12}


def _print_generation(number: int) -> None:
    from rich.console import Console

    from flows.stages import count_columns
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
            **{column: counts.get(column, 0) for column in count_columns()}
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
    _print_files(number)


def _print_files(number: int) -> None:
    """The snapshot and report a generation wrote."""
    from pipeline.documents import Generation

    record = Generation.objects.get(number=number)
    files = (record.stages or {}).get("report", {}).get("result", {}).get("files", {})
    for kind in ("hdf5", "report"):
        if files.get(kind):
            typer.echo(f"  {kind}: {files[kind]}")


#: Columns of the per-generation table of ``selfplay demo --backend xtb``: (title, width).
TABLE_COLUMNS = (
    ("gen", 3),
    ("trained on", 10),
    ("explored", 8),
    ("selected", 8),
    ("labelled", 8),
    ("failed", 6),
    ("force MAE eV/Å", 14),
    ("energy MAE meV/atom", 19),
    ("seconds", 7),
)


def _table_line(cells) -> str:
    return "  ".join(str(cell).rjust(width) for cell, (_, width) in zip(cells, TABLE_COLUMNS))


def _table_row(number: int) -> str:
    """One generation as a row: what it trained on, found, labelled, and the model's error on its new labels."""
    from pipeline.documents import Generation

    record = Generation.objects.get(number=number)
    counts = record.counts or {}
    model = (record.metrics or {}).get("model")
    train = (record.stages or {}).get("train", {}).get("result", {})
    seconds = sum((stage or {}).get("seconds") or 0.0 for stage in (record.stages or {}).values())
    return _table_line(
        [
            record.number,
            train.get("frames", "-") if train.get("model") else "-",
            counts.get("explored", 0),
            counts.get("selected", 0),
            counts.get("labelled", 0),
            counts.get("dft_failed", 0),
            f"{model['force_mae']:.3f}" if model else "-",
            f"{model['energy_mae_per_atom'] * 1000:.1f}" if model else "-",
            f"{seconds:.0f}",
        ]
    )


def _describe_labeller(settings) -> str:
    if settings.backend == "xtb":
        return f"{settings.method} with tblite"
    return f"DFT {settings.functional}/{settings.basis} with PySCF"


def demo(
    generations: Optional[int] = typer.Option(
        None,
        min=1,
        max=40,
        help="Generations to run, the first a cold start (default: 2 with pyscf, 12 with xtb).",
    ),
    backend: str = typer.Option(
        "pyscf",
        "--backend",
        help="pyscf: DFT labels, minutes a generation; xtb: GFN2-xTB labels, seconds a generation.",
    ),
    workdir: Path = typer.Option(Path("selfplay-demo"), help="Where models, snapshot and report land."),
    prefect: Optional[bool] = typer.Option(
        None,
        help="Run through Prefect (a temporary local server if no PREFECT_API_URL is configured); "
        "default: with pyscf yes, with xtb no (Prefect's per-task overhead would outweigh the labels).",
    ),
) -> None:
    """Run small, real generations on CPU on the embedded store (no database or server needed)."""
    from dft.labeller import check_settings
    from flows.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.store import connect

    if backend not in DEMO_CONFIGS:
        raise ConfigError(f"--backend must be one of {', '.join(DEMO_CONFIGS)}, not {backend!r}")
    config_file = DEMO_CONFIGS[backend]
    generations = generations or DEMO_GENERATIONS[backend]
    if prefect is None:
        prefect = backend == "pyscf"
    config = load_config(config_file, workdir=workdir, mongodb_uri=None)
    check_settings(config.dft)  # tblite missing: one line now, not a failed label stage later
    connect(None, database="selfplay-demo")
    typer.echo(
        f"selfplay demo: {generations} generations of {', '.join(config.elements)} on the embedded store, "
        f"{_describe_labeller(config.dft)}, output in {workdir}/"
    )
    if prefect:
        from flows.temporary_server import ensure_prefect_api

        ensure_prefect_api(home=workdir / ".prefect")
    as_table = backend != "pyscf"  # many short generations: one row each
    if as_table:
        typer.echo(_table_line([title for title, _ in TABLE_COLUMNS]))
    for _ in range(generations):
        number = _run_one(
            config, config_file, {"workdir": str(workdir)}, prefect, require_persistent=False, progress=not as_table
        )
        if as_table:
            typer.echo(_table_row(number))
        else:
            _print_generation(number)
    if as_table:
        _print_files(number)


def _run_one(
    config, config_file: Optional[Path], overrides: dict, prefect: bool, require_persistent: bool, progress: bool = True
) -> int:
    if prefect:
        from flows.temporary_server import ensure_prefect_api

        ensure_prefect_api()  # the configured API or a temporary server; one line if neither answers
        from flows.generation import generation

        result = generation(
            config_file=str(config_file) if config_file else None,
            overrides=overrides,
            require_persistent_store=require_persistent,
        )
        return result["generation"]
    from flows.stages import run_generation

    return run_generation(config, progress=progress).number


def run(
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="Generation config (YAML)."),
    prefect: bool = typer.Option(True, help="Run as a Prefect flow (PREFECT_API_URL, or a temporary server)."),
) -> None:
    """Run (or resume) one generation against the configured MongoDB."""
    from flows.commands.context import State
    from flows.config import load_config
    from pipeline.store import connect_from_config

    path = config_file or State.config_path
    config = load_config(path)
    connect_from_config(config, require_persistent=True)  # fail before any work
    number = _run_one(config, path, {}, prefect, require_persistent=True)
    _print_generation(number)
