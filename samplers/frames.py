"""Explored frames: scores, provenance, and their extended-XYZ files.

An explored frame is a clean ``ase.Atoms`` (numbers, positions, cell, pbc; no
calculator, so it can never be mistaken for a labelled frame) carrying

* ``info['provenance']``: dict with at least ``sampler``, ``params``, ``seed``,
  ``parent`` (content hash of the structure it came from, or None), ``temperature``
  (target, K, or None) and ``step``;
* when scored by a model: ``arrays['force_deviation']`` (per-atom σ_i, eV/Å),
  ``info['sigma_f']`` (max σ_i), ``info['energy_deviation']`` (std of the members' total
  energies, eV), ``info['sigma_e']`` (that per atom, eV/atom), ``info['model_energy']``,
  ``arrays['model_forces']`` (for calibration once a label exists) and
  ``info['descriptor']`` (the model's per-structure features, used for diversity).

In extended XYZ the provenance dict is stored as a JSON string (info values must be
scalars, strings or 1-d arrays there); :func:`read_frames` turns it back into a dict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pipeline.errors import DataFileError
from pipeline.frames_io import read_frames as read_frame_file
from pipeline.hashing import frame_hash
from pipeline.jsonable import json_default

#: info keys holding dicts that travel as JSON strings in extended XYZ.
JSON_INFO_KEYS = ("provenance", "stop")


def clean_copy(atoms: Atoms) -> Atoms:
    """Numbers, positions, cell and pbc only (no calculator, velocities, constraints or extra arrays)."""
    return Atoms(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
    )


def provenance(
    sampler: str,
    params: Mapping[str, Any],
    seed: int,
    parent: str | None = None,
    temperature: float | None = None,
    step: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance record every sampled frame carries (JSON-able values only)."""
    record = {
        "sampler": sampler,
        "params": json.loads(json.dumps(dict(params), default=json_default)),
        "seed": int(seed),
        "parent": parent,
        "temperature": None if temperature is None else float(temperature),
        "step": None if step is None else int(step),
    }
    record.update(json.loads(json.dumps(extra, default=json_default)))
    return record


def attach_scores(frame: Atoms, result: Mapping[str, Any] | None) -> Atoms:
    """Store a model evaluation (see module docstring) on ``frame``; returns it."""
    if result is None:
        return frame
    deviation = result.get("force_deviation")
    if deviation is not None:
        deviation = np.asarray(deviation, dtype=np.float64).reshape(-1)
        if deviation.shape != (len(frame),):
            raise ValueError(f"force_deviation has {deviation.size} entries for {len(frame)} atoms")
        frame.arrays["force_deviation"] = deviation
        frame.info["sigma_f"] = float(deviation.max()) if deviation.size else float("nan")
    if result.get("energy_deviation") is not None:
        frame.info["energy_deviation"] = float(result["energy_deviation"])
        frame.info["sigma_e"] = float(result["energy_deviation"]) / len(frame) if len(frame) else float("nan")
    if result.get("energy") is not None:
        frame.info["model_energy"] = float(result["energy"])
    # biased dynamics drive with biased ``forces`` and keep the model's own in ``model_forces``
    forces = result.get("model_forces", result.get("forces"))
    if forces is not None:
        frame.arrays["model_forces"] = np.asarray(forces, dtype=np.float64).reshape(len(frame), 3)
    if result.get("descriptor") is not None:
        frame.info["descriptor"] = np.asarray(result["descriptor"], dtype=np.float64).reshape(-1)
    return frame


def make_frame(
    atoms: Atoms,
    record: dict[str, Any],
    result: Mapping[str, Any] | None = None,
    **info: Any,
) -> Atoms:
    """A clean copy of ``atoms`` with provenance, model scores and extra info."""
    frame = clean_copy(atoms)
    frame.info["provenance"] = record
    attach_scores(frame, result)
    for key, value in info.items():
        if value is not None:
            frame.info[key] = value
    return frame


def parent_hash(atoms: Atoms) -> str:
    """Content hash recorded as ``parent`` (the structure's own stored hash when it has one)."""
    stored = atoms.info.get("frame_hash")
    return stored if isinstance(stored, str) and len(stored) == 64 else frame_hash(atoms)


def write_frames(path: Path | str, frames: Iterable[Atoms], append: bool = False) -> int:
    """Write frames as extended XYZ (dict-valued info as JSON strings); returns the count."""
    from ase.io import write

    path = Path(path)
    prepared = []
    for frame in frames:
        out = frame.copy()
        out.calc = None
        for key, value in list(out.info.items()):
            if isinstance(value, (dict, list, tuple)) or key in JSON_INFO_KEYS:
                out.info[key] = json.dumps(value, default=json_default)
            elif value is None:
                del out.info[key]
        prepared.append(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    write(path, prepared, format="extxyz", append=append)
    return len(prepared)


def read_frames(path: Path | str) -> list[Atoms]:
    """Frames of an extended XYZ file written by :func:`write_frames` (or any extxyz; an
    empty file holds none), with the JSON info values turned back into dicts.

    The file is read by :func:`pipeline.frames_io.read_frames` (an HDF5 file, by its
    magic bytes, as well); explored frames may be unphysical, so they are not checked.
    """
    path = Path(path)
    frames = read_frame_file(path, check=False, format="extxyz", allow_empty=True)
    for index, frame in enumerate(frames):
        for key in JSON_INFO_KEYS:
            value = frame.info.get(key)
            if isinstance(value, str):
                try:
                    frame.info[key] = json.loads(value)
                except json.JSONDecodeError:
                    raise DataFileError(f"{path}: frame {index}: info '{key}' is not valid JSON") from None
        if "descriptor" in frame.info:
            frame.info["descriptor"] = np.atleast_1d(np.asarray(frame.info["descriptor"], dtype=np.float64))
    return frames
