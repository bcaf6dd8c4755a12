"""``selfplay label``: single points of any labeller kind on structure files, as extended XYZ.

A plain function with typer-annotated parameters; flows/cli.py registers it on the
``selfplay`` app. Bad input and bad settings raise :class:`~pipeline.errors.SelfplayError`
subclasses before any single point runs.
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
WRITTEN_INFO = (
    "theory_key",
    "method",
    "rung",
    "scf_cycles",
    "charge",
    "spin",
    "smearing_used",
    "electronic_temperature_k",
    "device",
    "wall_time_s",
)


def read_structures(files: list[Path]) -> list[tuple[str, "object"]]:
    """``[(origin, atoms)]`` for every frame of every file; ``origin`` is ``file:index``.

    Files are read by :func:`pipeline.frames_io.read_frames`; each structure is checked
    by the labeller's own plan (with its own limits) before any single point.
    """
    from pipeline.frames_io import read_frames

    return [(f"{path}:{i}", atoms) for path in files for i, atoms in enumerate(read_frames(path, check=False))]


#: Options that set a field of one labeller kind's settings: option -> (field, kinds).
#: None values are options left out (the kind's own default applies).
KIND_OPTIONS = {
    "--xc": ("functional", ("pyscf",)),
    "--basis": ("basis", ("pyscf",)),
    "--pbc-basis": ("pbc_basis", ("pyscf",)),
    "--device": ("device", ("pyscf",)),
    "--method": ("method", ("xtb",)),
    "--calculator": ("calculator", ("ase",)),
    "--calculator-kwargs": ("calculator_kwargs", ("ase",)),
    "--theory": ("theory", ("ase",)),
    "--dispersion-functional": ("dispersion_functional", ("ase",)),
    "--charge": ("charge", ("pyscf", "xtb")),
    "--spin-policy": ("spin_policy", ("pyscf", "xtb")),
    "--dispersion": ("dispersion", ("pyscf", "xtb", "ase")),
    "--time-limit": ("time_limit", ("pyscf", "xtb", "ase")),
}


def settings_from_options(backend: str, given: dict[str, object]):
    """The labeller settings the command-line options describe; one ConfigError line if not.

    ``given`` maps option names of :data:`KIND_OPTIONS` to values (None = not given).
    """
    from pydantic import ValidationError

    from dft.labeller import BACKENDS, SETTINGS_ADAPTER, LabellerSettings
    from pipeline.errors import validation_message

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    data: dict[str, object] = {"backend": backend}
    field_options = {}
    for option, value in given.items():
        if value is None:
            continue
        field, kinds = KIND_OPTIONS[option]
        if backend not in kinds:
            raise ConfigError(f"{option} does not apply to --backend {backend} (only to {', '.join(kinds)})")
        # --time-limit 0 is "no limit" (None); left out, the kind's default applies.
        data[field] = None if field == "time_limit" and value == 0 else value
        field_options[field] = option
    try:
        settings: LabellerSettings = SETTINGS_ADAPTER.validate_python(data)
    except ValidationError as exc:

        def option_of(field: str) -> str:
            # The error's location starts with the kind's tag ("xtb.method"); name the option.
            parts = [p for p in field.split(".") if p not in BACKENDS]
            option = field_options.get(parts[0]) if parts else None
            return option or ".".join(parts) or "--backend"

        raise ConfigError(validation_message(exc, rename=option_of)) from None
    return settings


def _json_object(text: Optional[str], option: str) -> Optional[dict]:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object of keyword arguments, not {type(value).__name__}")
    return value


def label(
    files: List[Path] = typer.Argument(..., help="Structure files ase.io.read understands (all frames are used)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output extended XYZ with energy, forces (and stress)."),
    backend: str = typer.Option("pyscf", "--backend", help="Labeller: pyscf (DFT), xtb (tblite GFN-xTB) or ase."),
    method: Optional[str] = typer.Option(None, "--method", help="xtb: GFN2-xTB (default), GFN1-xTB or IPEA1-xTB."),
    calculator: Optional[str] = typer.Option(
        None, "--calculator", help="ase: the calculator class, module:Class (e.g. ase.calculators.emt:EMT)."
    ),
    calculator_kwargs: Optional[str] = typer.Option(
        None, "--calculator-kwargs", help="ase: keyword arguments of the calculator as a JSON object."
    ),
    theory: Optional[str] = typer.Option(None, "--theory", help="ase: name of the level of theory (part of the key)."),
    dispersion: Optional[str] = typer.Option(None, "--dispersion", help="Add d3bj or d4 dispersion (pyscf, ase)."),
    dispersion_functional: Optional[str] = typer.Option(
        None, "--dispersion-functional", help="ase: functional whose dispersion damping parameters apply."
    ),
    xc: Optional[str] = typer.Option(None, "--xc", help="pyscf: exchange-correlation functional (default PBE)."),
    basis: Optional[str] = typer.Option(
        None, "--basis", help="pyscf: Gaussian basis for molecules/clusters (default def2-SVP, def2 ECPs automatic)."
    ),
    pbc_basis: Optional[str] = typer.Option(None, "--pbc-basis", help="pyscf: basis for periodic cells."),
    device: Optional[str] = typer.Option(None, "--device", help="pyscf: auto, cpu or gpu."),
    time_limit: Optional[float] = typer.Option(
        None, "--time-limit", help="Seconds per frame (0 = none; default: the labeller's own)."
    ),
    workers: int = typer.Option(1, "--workers", "-j", help="Frames computed at once (one process each)."),
    charge: Optional[int] = typer.Option(None, "--charge", help="Net charge (unless --spin-policy from_info)."),
    spin_policy: Optional[str] = typer.Option(
        None, "--spin-policy", help="pyscf: auto, lowest, high or from_info; xtb: lowest or from_info."
    ),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="ase: folder of the per-frame calculator folders (default: OUT.calc next to OUT)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Label structures with single points: PySCF DFT (default), GFN-xTB or any ASE calculator.

    Labelled frames are appended to OUT as each finishes; frames that fail are listed in
    OUT with the suffix .failures.json. Exit code 1 when any frame failed.
    """
    from dft.labeller import check_settings
    from dft.runner import label_frames

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {workers}")
    settings = settings_from_options(
        backend,
        {
            "--xc": xc,
            "--basis": basis,
            "--pbc-basis": pbc_basis,
            "--device": device,
            "--method": method,
            "--calculator": calculator,
            "--calculator-kwargs": _json_object(calculator_kwargs, "--calculator-kwargs"),
            "--theory": theory,
            "--dispersion-functional": dispersion_functional,
            "--charge": charge,
            "--spin-policy": spin_policy,
            "--dispersion": dispersion,
            "--time-limit": time_limit,
        },
    )
    check_settings(settings)
    if out.exists() and not overwrite:
        raise DataFileError(f"{out} exists; pass --overwrite to replace it")
    failures_path = out.with_name(out.name + ".failures.json")

    frames = read_structures(files)
    for origin, atoms in frames:  # every frame checked before the first single point
        settings.plan(atoms, origin)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    if failures_path.exists():
        failures_path.unlink()
    failures: list[dict] = []
    kinds: Counter = Counter()
    labelled = 0
    import ase.io

    for index, outcome in label_frames(
        [atoms for _, atoms in frames],
        settings,
        workers=workers,
        progress=sys.stderr.isatty(),
        workdir=workdir or out.with_name(out.name + ".calc"),
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
    summary += f"; {backend} theory {settings.theory_key()}; wrote {out}"
    typer.echo(summary)
    if failures:
        raise typer.Exit(1)
