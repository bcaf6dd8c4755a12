"""The ``selfplay`` command line.

The root of the application: the commands are in :mod:`flows.commands` (one module per
area: generation, model, label, explore, probe, dashboard), registered here from one table and
imported lazily, so that ``selfplay --help`` stays fast. Every :class:`~pipeline.errors.SelfplayError` becomes one
line on stderr and a non-zero exit; every usage mistake (unknown option, missing or extra
argument, bad value) the usage line, one error line and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_parsing import SelfplayCommand, SelfplayGroup, split_names
from flows.commands.context import State, config, connect_store, console
from pipeline.errors import SelfplayError

log = logging.getLogger("selfplay")
__all__ = ["State", "app", "config", "connect_store", "console", "main"]

app = typer.Typer(
    name="selfplay",
    help="Active-learning self-play DFT dataset generator for universal interatomic potentials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=SelfplayGroup,
)
db_app = typer.Typer(help="Inspect the store and import existing data.", no_args_is_help=True, cls=SelfplayGroup)
app.add_typer(db_app, name="db")
probe_app = typer.Typer(
    help="Probe sets: fixed, labelled, held-out structures every generation's model is scored on.",
    no_args_is_help=True,
    cls=SelfplayGroup,
)
app.add_typer(probe_app, name="probe")


@app.callback()
def _main(
    config_file: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML configuration file (default: $SELFPLAY_CONFIG).", envvar="SELFPLAY_CONFIG"
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-vv for debug)."),
) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING - 10 * min(verbose, 2)  # -v info, -vv debug
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=Console(stderr=True), show_path=False)]
    )
    for noisy in ("pymongo", "httpx", "httpcore", "urllib3", "asyncio", "numexpr", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    State.config_path = config_file


# ----------------------------------------------------------------------------- db


@db_app.command("import", cls=SelfplayCommand)
def db_import(
    files: List[Path] = typer.Argument(..., help="Files ase.io.read understands, with energies and forces."),
    theory: Optional[str] = typer.Option(None, help="Level-of-theory key for these labels (default: import:<format>)."),
) -> None:
    """Import labelled frames (extxyz, OUTCAR, vasprun.xml, FHI-aims, CASTEP, HDF5 snapshots...)."""
    from pipeline.importer import import_file

    connect_store()
    failed = 0
    for path in files:
        try:
            report = import_file(path, theory=theory)
        except SelfplayError as exc:
            failed += 1
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            continue
        console.print(
            f"{path}: {report.frames} frames, {report.new_frames} new frames, {report.new_labels} new labels "
            f"({report.theory})",
            highlight=False,
        )
    if failed:
        raise typer.Exit(2)


def print_summary(summary: dict) -> None:
    console.print(
        f"frames {summary['frames']}  labels {summary['labels']}  failures {summary['failures']}", highlight=False
    )
    if summary["theories"]:
        console.print("labels per theory: " + ", ".join(f"{k} {v}" for k, v in summary["theories"].items()))
    table = Table(title="per element")
    for column in ("element", "frames", "labels", "failures"):
        table.add_column(column, justify="right")
    for element, row in summary["per_element"].items():
        table.add_row(element, str(row["frames"]), str(row["labels"]), str(row["failures"]))
    console.print(table)
    table = Table(title="per generation")
    for column in ("generation", "status", "stages", "frames", "labels", "failures", "error"):
        table.add_column(column, justify="right")
    generations = {g["number"]: g for g in summary["generations"]}
    numbers = set(summary["per_generation"]) | set(generations)
    for number in sorted(numbers, key=lambda n: (n is None, n or 0)):
        row = summary["per_generation"].get(number, {"frames": 0, "labels": 0, "failures": 0})
        record = generations.get(number, {})
        stages = " ".join(
            f"{name}:{state}" for name, state in (record.get("stages") or {}).items() if state != "completed"
        )
        table.add_row(
            "imported" if number is None else str(number),
            record.get("status", "-"),
            stages or ("all completed" if record else "-"),
            str(row["frames"]),
            str(row["labels"]),
            str(row["failures"]),
            (record.get("error") or "")[:80],
        )
    console.print(table)


@app.command("status", cls=SelfplayCommand)
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The store: frames, labels and failures per theory, element and generation; each stage's state."""
    import json

    from pipeline.stats import dataset_summary

    info = connect_store()
    summary = dataset_summary()
    if as_json:
        summary["per_generation"] = {("imported" if k is None else k): v for k, v in summary["per_generation"].items()}
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    console.print(f"store: {info.uri} (database {info.database})", highlight=False)
    print_summary(summary)


@app.command("export", cls=SelfplayCommand)
def export(
    out: Path = typer.Option(..., "--out", "-o", help="Output file."),
    format: str = typer.Option("hdf5", "--format", "-f", help="hdf5 or extxyz."),
    generation: Optional[int] = typer.Option(None, help="Only labels made in this generation."),
    until: Optional[int] = typer.Option(None, help="Only labels made up to this generation."),
    elements: Optional[List[str]] = typer.Option(
        None, help="Only frames made of these elements, e.g. H,C,N,O or H C N O."
    ),
    theory: Optional[List[str]] = typer.Option(
        None, help="Only these level-of-theory keys, e.g. KEY1,KEY2 or KEY1 KEY2."
    ),
) -> None:
    """Write a snapshot of the labelled dataset (streaming)."""
    from pipeline.export import export_snapshot

    connect_store()
    summary = export_snapshot(
        out,
        format=format,
        generation=generation,
        until_generation=until,
        elements=split_names(elements) or None,
        theories=split_names(theory) or None,
        progress=sys.stderr.isatty(),
    )
    console.print(f"wrote {summary.n_frames} frames ({summary.n_atoms} atoms) to {summary.path}", highlight=False)


# ------------------------------------------------------- commands of other packages


#: (command, module, function). Those modules keep heavy imports (torch, pyscf, prefect)
#: inside the functions, so registering them costs nothing at start-up.
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "flows.commands.generation", "demo"),
    ("run", "flows.commands.generation", "run"),
    ("train", "flows.commands.model", "train"),
    ("predict", "flows.commands.model", "predict"),
    ("label", "flows.commands.label", "label"),
    ("sample", "flows.commands.explore", "sample"),
    ("select", "flows.commands.explore", "select"),
    ("dashboard", "flows.commands.dashboard", "dashboard"),
    ("report", "flows.commands.dashboard", "report"),
]


#: The same for the ``selfplay db`` group.
DB_COMMANDS: list[tuple[str, str, str]] = [
    ("summarise", "flows.commands.dashboard", "summarise"),
]

#: The same for the ``selfplay probe`` group.
PROBE_COMMANDS: list[tuple[str, str, str]] = [
    ("add", "flows.commands.probe", "add"),
    ("list", "flows.commands.probe", "list_sets"),
    ("remove", "flows.commands.probe", "remove"),
]


def _register_commands() -> None:
    for group, commands in ((app, COMMANDS), (db_app, DB_COMMANDS), (probe_app, PROBE_COMMANDS)):
        for name, module, function in commands:
            group.command(name, cls=SelfplayCommand)(getattr(importlib.import_module(module), function))


_register_commands()


def main() -> None:
    # Not standalone: typer would draw click's errors in a panel of several lines; here
    # they are shown the way click shows them (usage, help hint, one error line).
    try:
        code = app(standalone_mode=False)
    except SelfplayError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        Console(stderr=True).print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:
        # Usage errors (exit code 2) and the other errors of click. typer parses with its
        # own copy of click, whose exceptions derive from typer.TyperException and not from
        # those of the `click` package; show() prints the usage line and "Error: ...".
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    # `python -m flows.cli` runs this file as __main__; run the imported module's app
    # so that commands importing flows.cli see the same state.
    from flows.cli import main as _imported_main

    _imported_main()
