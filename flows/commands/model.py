"""``selfplay train`` and ``selfplay predict`` (registered by flows/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from flows.cli_parsing import split_names
from pipeline.errors import ConfigError, DataFileError


def _console():
    from rich.console import Console

    return Console()


def train(
    data: Optional[List[Path]] = typer.Option(
        None, "--data", help="Labelled frames: extxyz or HDF5 export (file or directory); omit to train on the store."
    ),
    theory: Optional[List[str]] = typer.Option(
        None, "--theory", help="With the store: only labels at these level-of-theory keys (default: all), e.g. K1,K2."
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the trained ensemble (weights + model.json + metrics)."),
    epochs: int = typer.Option(60, "--epochs", min=1, help="Maximum training epochs."),
    ensemble: int = typer.Option(4, "--ensemble", min=1, help="Ensemble members."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    warm_start: Optional[Path] = typer.Option(None, "--warm-start", help="Continue from this saved ensemble."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Structures per mini-batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, bootstrap and split."),
) -> None:
    """Train an ensemble of equivariant potentials on labelled frames."""
    from pydantic import ValidationError

    from pipeline.errors import validation_message
    from potential.config import TrainConfig
    from potential.data import read_frames
    from potential.train import train_ensemble

    if data:
        frames = [atoms for path in data for atoms in read_frames(path)]
        if not frames:
            raise DataFileError(f"no frames in {', '.join(map(str, data))}")
    else:
        from flows.commands.context import connect_store
        from pipeline.reads import iter_labelled

        connect_store()  # the configured MongoDB; a plain error when none is configured
        theories = split_names(theory)
        frames = list(iter_labelled(theories=theories or None))
        if not frames:
            raise DataFileError(
                "the store holds no labelled frames" + (f" at {', '.join(theories)}" if theories else "")
            )
    try:
        config = TrainConfig(epochs=epochs, ensemble_size=ensemble, batch_size=batch_size, seed=seed)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "invalid training option")) from None
    result = train_ensemble(frames, config, out, warm_start=warm_start, device=None if device == "auto" else device)
    best = result.best
    console = _console()
    console.print(
        f"trained {ensemble} members on {result.n_train} frames ({result.n_val} validation) in {result.seconds:.0f} s; "
        f"best epoch {result.best_epoch}",
        highlight=False,
    )
    if best.val_force_mae is not None:
        console.print(
            f"validation: force MAE {best.val_force_mae:.4f} eV/Å (mean-force baseline "
            f"{result.val_force_baseline_mae:.4f}), energy MAE {1000 * best.val_energy_mae_per_atom:.1f} meV/atom",
            highlight=False,
        )
    console.print(f"saved to {out}", highlight=False)


def predict(
    model: Path = typer.Argument(..., help="Directory of a saved ensemble."),
    files: List[Path] = typer.Argument(..., help="Structure files (anything ase.io.read reads, or HDF5 export)."),
    out: Path = typer.Option(..., "--out", help="extxyz file to write predictions to."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
) -> None:
    """Predict energies, forces, stress and ensemble deviation; write extxyz.

    Per frame: energy (calculator), info ``energy_deviation`` and ``max_force_deviation``;
    per atom: forces and the array ``force_deviation``. Reference labels already in the
    input are kept as info ``ref_energy`` and array ``ref_forces``.
    """
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from pipeline.frames_io import read_frames
    from potential.checkpoint import load_ensemble

    ensemble = load_ensemble(model, device=None if device == "auto" else device)
    frames = [atoms for path in files for atoms in read_frames(path, check=False)]
    if not frames:
        raise DataFileError("no structures in the input files")
    results = ensemble.evaluate(frames)
    written = []
    for atoms, result in zip(frames, results):
        copy = atoms.copy()
        old = atoms.calc.results if atoms.calc is not None else {}
        if "energy" in old:
            copy.info["ref_energy"] = float(old["energy"])
        if "forces" in old:
            copy.arrays["ref_forces"] = np.asarray(old["forces"], dtype=float)
        copy.arrays["force_deviation"] = result["force_deviation"]
        copy.info["energy_deviation"] = result["energy_deviation"]
        copy.info["max_force_deviation"] = float(result["force_deviation"].max())
        labels = {"energy": result["energy"], "forces": result["forces"]}
        if "stress" in result:
            labels["stress"] = result["stress"]
        copy.calc = SinglePointCalculator(copy, **labels)
        written.append(copy)
    out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(out, written, format="extxyz")
    sigma = np.array([w.info["max_force_deviation"] for w in written])
    _console().print(
        f"{len(written)} frames -> {out}; max force deviation median {np.median(sigma):.3f}, max {sigma.max():.3f} eV/Å",
        highlight=False,
    )
