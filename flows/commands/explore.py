"""``selfplay sample`` and ``selfplay select``: exploration and selection on files.

Plain functions with typer-annotated parameters; flows/cli.py registers them on the
``selfplay`` app. Bad input raises :class:`~pipeline.errors.SelfplayError` subclasses,
which the app prints as ``error: ...``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from flows.cli_parsing import split_names
from pipeline.errors import ConfigError, DataFileError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "melt-quench", "relax", "substitute")

#: Sections of a sampler settings file (YAML or JSON); ``elements`` comes from --elements.
SECTIONS = {"random": "random", "melt-quench": "melt_quench", "relax": "relax", "substitute": "substitute"}


def _settings(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    from flows.config import read_config_file

    data = read_config_file(path)
    unknown = sorted(set(data) - set(SECTIONS.values()))
    if unknown:
        raise ConfigError(f"{path}: unknown section {unknown[0]!r}; expected {', '.join(SECTIONS.values())}")
    for name, section in data.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section {name!r} must be a mapping of settings")
        if "elements" in section:
            raise ConfigError(f"{path}: section {name!r}: give elements with --elements, not in the file")
    return data


def _start_structures(
    structures: Path | None, elements: list[str], settings: dict[str, Any], seed: int, count: int
) -> list:
    """Start structures: the given file (cycled to ``count``) or random structures."""
    from samplers.config import parse_config
    from samplers.frames import read_frames
    from samplers.random_structures import RandomStructureConfig, random_structures

    if structures is not None:
        frames = read_frames(structures)
        if not frames:
            raise DataFileError(f"{structures} holds no structures")
        return [frames[i % len(frames)] for i in range(count)]
    config = parse_config(RandomStructureConfig, "random", elements=elements, **settings.get("random", {}))
    return random_structures(config, seed, count)


def run_sampler(
    sampler: str,
    model: Any,
    elements: list[str],
    count: int,
    seed: int,
    settings: dict[str, Any] | None = None,
    structures: Path | None = None,
) -> tuple[list, list]:
    """Frames from one sampler and (for melt-quench and relax) the trajectory reports."""
    from samplers.config import parse_config
    from samplers.dynamics import MeltQuenchConfig, trajectory_frames
    from samplers.frames import read_frames
    from samplers.melt_quench import run_melt_quench
    from samplers.random_structures import RandomStructureConfig, sample_random
    from samplers.relax import RelaxConfig, relax_structures
    from samplers.substitution import SubstitutionConfig, sample_substitution

    settings = settings or {}
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if count < 1:
        raise ConfigError(f"--count must be at least 1 (got {count})")
    if sampler == "random":
        config = parse_config(RandomStructureConfig, "random", elements=elements, **settings.get("random", {}))
        return list(sample_random(model, config, seed, count)), []
    if sampler == "substitute":
        config = parse_config(SubstitutionConfig, "substitute", elements=elements, **settings.get("substitute", {}))
        seeds = read_frames(structures) if structures is not None else None
        return list(sample_substitution(model, config, seed, count, seeds)), []
    if model is None:
        raise ConfigError(f"{sampler} needs --model: the ensemble drives the dynamics and scores the frames")
    from samplers.config import check_elements

    try:
        check_elements(elements)
    except ValueError as exc:
        raise ConfigError(f"{sampler}: {exc}") from None
    if sampler == "relax":
        config = parse_config(RelaxConfig, "relax", **settings.get("relax", {}))
        starts = _start_structures(structures, elements, settings, seed, count)
        trajectories = relax_structures(model, starts, config, seed)
    else:
        config = parse_config(MeltQuenchConfig, "melt_quench", **settings.get("melt_quench", {}))
        starts = _start_structures(structures, elements, settings, seed, count)
        trajectories = run_melt_quench(model, starts, config, seed)
    return list(trajectory_frames(trajectories, config.include_stop_frames)), [t.report() for t in trajectories]


def sample(
    sampler: str = typer.Option(..., "--sampler", help="random | melt-quench | relax | substitute"),
    elements: list[str] = typer.Option(..., "--elements", help="element symbols, e.g. Cu,Al,Ni or Cu Al Ni"),
    out: Path = typer.Option(..., "--out", help="extended XYZ file to write"),
    model: Optional[Path] = typer.Option(
        None, "--model", help="ensemble checkpoint (required for melt-quench and relax)"
    ),
    count: int = typer.Option(
        10, "--count", help="structures (random, substitute, relax) or trajectories (melt-quench)"
    ),
    seed: int = typer.Option(0, "--seed"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML/JSON with sections random / melt_quench / relax / substitute"
    ),
    structures: Optional[Path] = typer.Option(
        None, "--structures", help="extended XYZ of start (melt-quench, relax) or seed (substitute) structures"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda (default: cuda when available)"),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON file for melt-quench/relax trajectory reports"),
) -> list:
    """Explore with one sampler and write the frames (σ_F, per-atom deviations, provenance)."""
    from samplers.frames import write_frames
    from samplers.model import load_model

    element_list = split_names(elements)
    settings = _settings(config)
    calculator = None
    if model is not None:
        if not Path(model).exists():
            raise DataFileError(f"model {model} does not exist")
        calculator = load_model(model, device=device)
    frames, reports = run_sampler(sampler, calculator, element_list, count, seed, settings, structures)
    if model is not None:
        for frame in frames:
            frame.info["provenance"]["model"] = str(model)
    write_frames(out, frames)
    sigma = np.array([f.info.get("sigma_f", np.nan) for f in frames], dtype=float)
    scored = sigma[np.isfinite(sigma)]
    line = f"{sampler}: wrote {len(frames)} frames to {out}"
    if scored.size:
        line += f" (σ_F median {np.median(scored):.3g}, max {scored.max():.3g} eV/Å)"
    typer.echo(line)
    if reports:
        reasons: dict[str, int] = {}
        for r in reports:
            reasons[r["stop"]["reason"]] = reasons.get(r["stop"]["reason"], 0) + 1
        typer.echo("trajectories: " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())))
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(reports, indent=1))
    return frames


def _known_hashes(path: Path | None) -> set[str]:
    """Hashes from a text file (one per line) or from the frames of an extended XYZ file."""
    if path is None:
        return set()
    if not path.exists():
        raise DataFileError(f"{path} does not exist")
    first_line = path.read_text().split("\n", 1)[0].strip()
    if len(first_line) == 64 and all(c in "0123456789abcdef" for c in first_line):
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    from pipeline.hashing import frame_hash
    from samplers.frames import read_frames

    return {frame_hash(frame) for frame in read_frames(path)}


def _stored_hashes(frames) -> set[str]:
    """Hashes of ``frames`` already stored, when a MongoDB is configured (else none)."""
    from flows.commands.context import config as cli_config
    from pipeline.hashing import frame_hash
    from pipeline.store import connect_from_config, existing_hashes

    settings = cli_config()
    if settings.uri() is None:
        return set()
    connect_from_config(settings, require_persistent=True)
    return existing_hashes(frame_hash(frame) for frame in frames)


def select(
    input: Path = typer.Argument(..., help="extended XYZ of explored frames"),
    out: Path = typer.Option(..., "--out", help="extended XYZ of the frames picked for labelling"),
    lo: float = typer.Option(0.05, "--lo", help="σ_F below: accurate (eV/Å)"),
    hi: float = typer.Option(0.5, "--hi", help="σ_F at or above: failed (eV/Å)"),
    max: int = typer.Option(100, "--max", help="cap on selected candidates"),
    known: Optional[Path] = typer.Option(
        None, "--known", help="frames already in the database: hashes one per line, or an extended XYZ"
    ),
    sentinels: int = typer.Option(0, "--sentinels", help="accurate frames to label anyway, at random"),
    seed: int = typer.Option(0, "--seed", help="seed of the sentinel draw"),
    balance: bool = typer.Option(True, "--balance/--no-balance", help="share the cap over elements, rarest first"),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON with every decision and the ledger"),
    store: bool = typer.Option(
        True, "--store/--no-store", help="also drop frames already in the configured MongoDB (when one is configured)"
    ),
):
    """Classify explored frames by σ_F, dedupe, pick diverse candidates up to the cap, write them."""
    from pipeline.selection import select_frames, selection_config
    from samplers.frames import read_frames, write_frames

    config = selection_config(lo=lo, hi=hi, max_selected=max, sentinel_count=sentinels, per_element_balance=balance)
    frames = read_frames(input)
    known_hashes = _known_hashes(known)
    if store:
        known_hashes |= _stored_hashes(frames)
    result = select_frames(frames, config, known_hashes=known_hashes, seed=seed)
    picked = result.picked_frames(frames)
    write_frames(out, picked)
    counts = result.counts
    typer.echo(
        f"{counts['explored']} frames: {counts['accurate']} accurate, {counts['candidate']} candidate, "
        f"{counts['failed']} failed, {counts['unscored']} unscored; selected {counts['selected']}"
        f" + {counts['sentinel']} sentinels -> {out}"
    )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_dict(), indent=1))
    return result
