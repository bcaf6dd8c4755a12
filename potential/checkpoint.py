"""Checkpoints: ``weights.safetensors`` (stacked member weights) + ``model.json``.

The JSON carries the format name and version, the model hyperparameters, the number of
members, the per-element reference energies and the data statistics the network was
built with, so a directory alone rebuilds the ensemble. Nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from pipeline.atoms import MAX_Z
from pipeline.errors import DataFileError, validation_message
from potential.config import ModelConfig
from potential.model import DTYPES, N_ELEMENTS, EnsemblePotential, resolve_device

log = logging.getLogger(__name__)

FORMAT = "selfplay-potential"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"


def save_ensemble(ensemble: EnsemblePotential, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the ensemble to ``directory`` (created); returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: value.detach().cpu().contiguous() for name, value in ensemble.state_dict().items()}
    refs = ensemble.element_refs.cpu().numpy()
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_config": ensemble.config.model_dump(),
        "n_members": ensemble.n_members,
        "element_refs": {str(z): float(refs[z]) for z in range(1, N_ELEMENTS) if refs[z] != 0.0},
        "energy_scale": ensemble.energy_scale,
        "avg_num_neighbors": ensemble.avg_num_neighbors,
        "units": {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å^3"},
    }
    if extra:
        meta["extra"] = extra
    # weights first, metadata last: a directory with a model.json is complete
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def _checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (META_FILE, WEIGHTS_FILE):
        path = path.parent
    if not path.is_dir():
        raise DataFileError(f"model checkpoint {path} does not exist (expected a directory with {META_FILE})")
    for name in (META_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise DataFileError(f"model checkpoint {path} has no {name}")
    return path


def read_metadata(path: str | Path) -> dict:
    directory = _checkpoint_dir(path)
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFileError(f"model checkpoint {directory}: unreadable {META_FILE} ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise DataFileError(f"model checkpoint {directory}: not a {FORMAT} checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise DataFileError(
            f"model checkpoint {directory}: format version {meta.get('version')} unsupported (expected {FORMAT_VERSION})"
        )
    return meta


def load_ensemble(
    path: str | Path, device: str | torch.device | None = None, dtype: str | None = None
) -> EnsemblePotential:
    """Rebuild a saved ensemble; ``dtype`` ("float32"/"float64") overrides the saved one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = _checkpoint_dir(path)
    meta = read_metadata(directory)
    try:
        config = ModelConfig.model_validate(meta["model_config"])
        if dtype is not None:
            config = config.model_copy(update={"dtype": dtype})
            ModelConfig.model_validate(config.model_dump())
        refs = np.zeros(N_ELEMENTS)
        for z, value in meta.get("element_refs", {}).items():
            if not 1 <= int(z) <= MAX_Z:
                raise ValueError(f"element reference for Z={z}")
            refs[int(z)] = float(value)
        ensemble = EnsemblePotential(
            config,
            int(meta["n_members"]),
            element_refs=refs,
            energy_scale=float(meta["energy_scale"]),
            avg_num_neighbors=float(meta["avg_num_neighbors"]),
        )
    except ValidationError as exc:
        raise DataFileError(validation_message(exc, f"model checkpoint {directory}: inconsistent {META_FILE}")) from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise DataFileError(f"model checkpoint {directory}: inconsistent {META_FILE} ({exc})".splitlines()[0]) from exc
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise DataFileError(f"model checkpoint {directory}: unreadable weights ({exc})") from exc
    expected = ensemble.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [n for n in expected if n in state and state[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        raise DataFileError(
            f"model checkpoint {directory}: weights do not match {META_FILE} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    ensemble.load_state_dict(state)
    return ensemble.to(device=resolve_device(device), dtype=DTYPES[config.dtype])
