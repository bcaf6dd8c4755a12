"""``selfplay probe add|list|remove``: the probe sets (registered in :mod:`flows.cli`).

A probe set is a fixed, labelled, held-out set of structures kept in the store beside the
dataset, never trained on, selected from or exported (:mod:`pipeline.probes`); the report
stage of every generation scores the generation's model on each probe set at a level of
theory the model trains on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.errors import ConfigError, DataFileError


def add(
    files: List[Path] = typer.Argument(
        ..., help="Structure files: an HDF5 snapshot or any format ase.io.read understands."
    ),
    name: str = typer.Option(..., "--name", help="Name of the new probe set (letters, digits, '_', '-')."),
    label: bool = typer.Option(
        False,
        "--label",
        help="Label the structures once at the configured level of theory (else the files carry labels).",
    ),
    description: str = typer.Option("", "--description", help="What the set probes, in a few words."),
    theory: Optional[str] = typer.Option(
        None,
        "--theory",
        help="Level-of-theory key of the files' labels (default: the one they record, else the configured one). "
        "Not with --label.",
    ),
) -> None:
    """Add a probe set from labelled files, or label the files first (--label)."""
    from flows.commands.context import config, connect_store, console
    from pipeline.probes import add_probe_set, check_name, check_name_free

    settings = config()
    check_name(name)
    if label and theory:
        raise ConfigError(
            "--theory names the labels the files carry; with --label they get the configured level of theory"
        )
    connect_store()
    check_name_free(name)  # before reading and labelling anything
    frames, sources, names = read_structures(files, require_labels=not label)
    left_out: list[str] = []
    if label:
        frames, left_out = label_structures(settings, frames, names)
        for line in left_out:
            console.print(f"[yellow]left out:[/yellow] {line}", highlight=False, soft_wrap=True)
        if not frames:
            raise DataFileError(f"probe set {name!r}: no structure could be labelled ({len(left_out)} failed)")
    key = settings.dft.theory_key() if label else theory_of(frames, theory, settings.dft.theory_key())
    info = add_probe_set(
        name,
        frames,
        theory=key,
        description=description,
        theory_spec=settings.dft.theory_spec() if key == settings.dft.theory_key() else {},
        sources=sources,
        labelled_here=label,
    )
    console.print(
        f"probe set {info.name}: {info.n_frames} frames ({info.n_atoms} atoms; {', '.join(info.elements)}) at {info.theory}"
        + (f"; {len(left_out)} left out, their labels failed" if left_out else ""),
        highlight=False,
        soft_wrap=True,
    )


def theory_of(frames: list, theory: Optional[str], configured: str) -> str:
    """The level of theory of labelled ``frames``: ``theory`` if given, else the one the
    frames record (selfplay's snapshots, exports and ``selfplay label`` outputs do), else the configured one."""
    if theory:
        return theory
    from pipeline.frames_io import info_theory

    recorded = {info_theory(a) for a in frames}
    if recorded == {None}:
        return configured
    if len(recorded) > 1:
        found = ", ".join(sorted(str(t) for t in recorded if t)) + (" and none" if None in recorded else "")
        raise DataFileError(
            f"the frames record several levels of theory ({found}): add them as separate sets, or pass --theory"
        )
    return recorded.pop()


def read_structures(files: List[Path], *, require_labels: bool) -> tuple[list, list[dict], list[str]]:
    """Every frame of ``files`` (labels checked when required: an error names the file and
    frame), one source record per file and one display name per frame."""
    from pipeline.frames_io import read_frames

    frames, sources, names = [], [], []
    for path in files:
        found = read_frames(path, require_labels=require_labels)
        frames += found
        names += [f"{path} frame {i}" for i in range(len(found))]
        sources.append({"file": str(Path(path).resolve()), "frames": len(found)})
    return frames, sources, names


def label_structures(settings, frames: list, names: list[str]) -> tuple[list, list[str]]:
    """``frames`` labelled at ``settings.dft`` (in their order), and a line for each one left out."""
    from dft import label_frames
    from flows.stages import label_workdir

    bare = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = None
        bare.append(copy)
    labelled: dict[int, object] = {}
    left_out: dict[int, str] = {}
    outcomes = label_frames(
        bare, settings.dft, workers=settings.resources.dft_workers, progress=sys.stderr.isatty(), invalid="fail",
        workdir=label_workdir(settings),
    )  # fmt: skip
    for index, outcome in outcomes:
        if outcome.ok:
            labelled[index] = outcome.to_atoms(bare[index])
        else:
            left_out[index] = f"{names[index]}: {outcome.kind}: {outcome.reason}"
    return [labelled[i] for i in sorted(labelled)], [left_out[i] for i in sorted(left_out)]


def list_sets(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The probe sets, and whether the configured generations score their models on each."""
    import json

    from flows.commands.context import config, connect_store, console
    from flows.stages import training_theories
    from pipeline.probes import probe_sets

    theories = set(training_theories(config()))
    connect_store()
    sets = probe_sets(include_incomplete=True)
    if as_json:
        rows = [
            {**info.__dict__, "created_at": str(info.created_at), "scored": info.complete and info.theory in theories}
            for info in sets
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not sets:
        console.print("no probe sets (selfplay probe add FILES --name NAME adds one)", highlight=False)
        return
    for info in sets:
        if not info.complete:
            scored = "incomplete (an interrupted add: selfplay probe remove it)"
        else:
            scored = "scored every generation" if info.theory in theories else "not scored (a theory not trained on)"
        created = f", added {info.created_at:%Y-%m-%d %H:%M}" if info.created_at else ""
        console.print(
            f"{info.name}: {info.n_frames} frames ({info.n_atoms} atoms; {', '.join(info.elements)}) at {info.theory}, "
            f"{scored}{created}" + (f" — {info.description}" if info.description else ""),
            highlight=False,
            soft_wrap=True,
        )


def remove(name: str = typer.Argument(..., help="The probe set to remove.")) -> None:
    """Remove a probe set and its frames (metrics of past generations stay)."""
    from flows.commands.context import connect_store, console
    from pipeline.probes import remove_probe_set

    connect_store()
    removed = remove_probe_set(name)
    console.print(f"removed probe set {name} ({removed} frames)", highlight=False)
