"""``selfplay label``: DFT single points on structure files, written as extended XYZ.

A plain function with typer-annotated parameters; the lead registers it on the
``selfplay`` app. Bad input raises :class:`~pipeline.errors.SelfplayError` subclasses
before any SCF runs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer

from pipeline.errors import ConfigError, DataFileError

log = logging.getLogger(__name__)

#: atoms.info keys written with each labelled frame (besides energy/forces/stress).
WRITTEN_INFO = ("theory_key", "rung", "scf_cycles", "charge", "spin", "smearing_used", "device", "wall_time_s")


def read_structures(files: list[Path]) -> list[tuple[str, "object"]]:
    """``[(origin, atoms)]`` for every frame of every file; ``origin`` is ``file:index``."""
    import ase.io

    frames = []
    for path in files:
        if not path.is_file():
            raise DataFileError(f"{path}: no such file")
        try:
            images = ase.io.read(str(path), index=":")
        except Exception as exc:  # ase raises many types for unreadable files
            raise DataFileError(f"{path}: cannot read structures ({type(exc).__name__}: {exc})") from None
        if not isinstance(images, list):
            images = [images]
        if not images:
            raise DataFileError(f"{path}: holds no structures")
        frames.extend((f"{path}:{i}", atoms) for i, atoms in enumerate(images))
    return frames


def label(
    files: List[Path] = typer.Argument(..., help="Structure files ase.io.read understands (all frames are used)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output extended XYZ with energy, forces (and stress)."),
    xc: str = typer.Option("PBE", "--xc", help="Exchange-correlation functional."),
    basis: str = typer.Option("def2-SVP", "--basis", help="Gaussian basis for molecules/clusters (def2 ECPs automatic)."),
    pbc_basis: str = typer.Option("gth-dzvp-molopt-sr", "--pbc-basis", help="Basis for periodic cells."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or gpu."),
    time_limit: Optional[float] = typer.Option(3600.0, "--time-limit", help="Seconds per frame (0 = none)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Frames computed at once (one process each)."),
    charge: int = typer.Option(0, "--charge", help="Net charge (unless --spin-policy from_info)."),
    spin_policy: str = typer.Option("lowest", "--spin-policy", help="lowest, high or from_info."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Label structures with DFT single points (PySCF on CPU, GPU4PySCF on a GPU).

    Labelled frames are appended to OUT as each finishes; frames that fail are listed in
    OUT with the suffix .failures.json. Exit code 1 when any frame failed.
    """
    from pydantic import ValidationError

    from dft.runner import label_frames
    from dft.settings import DFTSettings
    from dft.validate import plan_frame

    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"--device must be auto, cpu or gpu, not {device!r}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {workers}")
    try:
        settings = DFTSettings(
            functional=xc,
            basis=basis,
            pbc_basis=pbc_basis,
            device=device,
            time_limit=time_limit or None,
            charge=charge,
            spin_policy=spin_policy,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    settings.check()
    if out.exists() and not overwrite:
        raise DataFileError(f"{out} exists; pass --overwrite to replace it")
    failures_path = out.with_name(out.name + ".failures.json")

    frames = read_structures(files)
    for origin, atoms in frames:  # every frame checked before the first SCF
        plan_frame(atoms, settings, origin)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    if failures_path.exists():
        failures_path.unlink()
    failures: list[dict] = []
    kinds: Counter = Counter()
    labelled = 0
    import ase.io

    for index, outcome in label_frames(
        [atoms for _, atoms in frames], settings, workers=workers, progress=sys.stderr.isatty()
    ):
        origin, atoms = frames[index]
        if outcome.ok:
            labelled_atoms = outcome.to_atoms(atoms)
            labelled_atoms.info["source"] = origin
            for key in WRITTEN_INFO:
                value = outcome.info.get(key)
                if value is not None:
                    labelled_atoms.info[f"dft_{key}"] = value
            with open(out, "a") as handle:
                ase.io.write(handle, labelled_atoms, format="extxyz")
            labelled += 1
        else:
            kinds[outcome.kind] += 1
            failures.append(
                {"source": origin, "kind": outcome.kind, "reason": outcome.reason, "attempts": outcome.attempts}
            )
            failures_path.write_text(json.dumps(failures, indent=1, default=str))
    summary = f"labelled {labelled} of {len(frames)} frames"
    if failures:
        summary += " (" + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) + f"; see {failures_path})"
    summary += f"; theory {settings.theory_key()}; wrote {out}"
    typer.echo(summary)
    if failures:
        raise typer.Exit(1)
