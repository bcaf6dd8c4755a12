"""Probe sets: fixed, labelled, held-out structure sets the models are scored on.

A probe set (:class:`~pipeline.documents.ProbeSet`) and its frames
(:class:`~pipeline.documents.ProbeFrame`) live in their own collections, ``probe_sets``
and ``probe_frames``: nothing that trains, selects or exports reads them, so a probe
structure is never learned from, never counts as "already labelled" and never leaves in a
snapshot of the training set. The report stage of every generation scores the
generation's model on each probe set whose theory the model trains on
(:func:`flows.stages.report_stage`).

Writes are all or nothing. The set's document is inserted first with ``complete=False``
(its unique name claims the name, so two concurrent adds of one name cannot both win),
then every frame, then ``complete=True``. An add that fails on the way removes what it
wrote; one killed on the way leaves an incomplete set that is never listed as usable,
never evaluated, and is removed by :func:`remove_probe_set`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import mongoengine as me
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from bson import ObjectId

from pipeline import arrays
from pipeline.atoms import check_atoms
from pipeline.documents import ProbeFrame, ProbeSet, structure_documents, utcnow
from pipeline.errors import ConfigError, InvalidStructure, StoreError

log = logging.getLogger(__name__)

#: Names become keys of ``Generation.metrics["probes"]``: no ".", no "$", no spaces.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


def check_name(name: str) -> str:
    """``name`` if it can name a probe set, else a one-line :class:`ConfigError`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"probe set name {name!r} is not allowed: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def check_name_free(name: str) -> None:
    """Raise :class:`StoreError` (one line) when a probe set ``name`` exists, complete or not."""
    existing = ProbeSet.objects(name=check_name(name)).first()
    if existing is not None:
        raise StoreError(_exists_message(existing))


@dataclass(frozen=True)
class ProbeInfo:
    """What ``selfplay probe list`` shows of one set."""

    name: str
    description: str
    theory: str
    n_frames: int
    n_atoms: int
    elements: list[str]
    labelled_here: bool
    complete: bool
    created_at: object
    id: str


def _info(doc: ProbeSet) -> ProbeInfo:
    return ProbeInfo(
        name=doc.name,
        description=doc.description or "",
        theory=doc.theory,
        n_frames=int(doc.n_frames or 0),
        n_atoms=int(doc.n_atoms or 0),
        elements=list(doc.elements or []),
        labelled_here=bool(doc.labelled_here),
        complete=bool(doc.complete),
        created_at=doc.created_at,
        id=str(doc.id),
    )


def _frame_documents(set_id, start: int, frames: list[Atoms], labels: list[tuple]) -> list[dict]:
    docs, _ = structure_documents(frames)
    for offset, (doc, (energy, forces, stress)) in enumerate(zip(docs, labels)):
        doc.update(
            probe_set=set_id,
            index=start + offset,
            energy=float(energy),
            forces=arrays.pack(forces),
            stress=None if stress is None else arrays.pack(stress),
        )
    return docs


def add_probe_set(
    name: str,
    frames: list[Atoms],
    *,
    theory: str,
    description: str = "",
    theory_spec: Optional[dict] = None,
    sources: Optional[list[dict]] = None,
    labelled_here: bool = False,
    batch_size: int = 1000,
) -> ProbeInfo:
    """Store ``frames`` (each carrying energy and forces, e.g. a SinglePointCalculator) as
    the probe set ``name`` at level of theory ``theory``; all of them or none.

    Raises :class:`ConfigError` for a bad name, :class:`InvalidStructure` (naming the
    frame) for a missing or malformed label, :class:`StoreError` when the name exists.
    """
    check_name(name)
    if not theory:
        raise ConfigError("a probe set needs a level-of-theory key")
    if not frames:
        raise InvalidStructure(f"probe set {name!r}: no frames to store")
    labels = []
    for i, atoms in enumerate(frames):
        check_atoms(atoms, f"probe set {name!r} frame {i}")
        labels.append(arrays.labels_of(atoms, f"probe set {name!r} frame {i}"))
    check_name_free(name)
    elements = sorted({chemical_symbols[z] for atoms in frames for z in set(np.asarray(atoms.numbers).tolist())})
    record = ProbeSet(
        name=name,
        description=description or "",
        theory=theory,
        theory_spec=theory_spec or {},
        n_frames=len(frames),
        n_atoms=int(sum(len(a) for a in frames)),
        elements=elements,
        sources=sources or [],
        labelled_here=labelled_here,
        complete=False,
        created_at=utcnow(),
    )
    try:
        record.save(force_insert=True)
    except me.NotUniqueError:
        raise StoreError(_exists_message(ProbeSet.objects(name=name).first())) from None
    collection = ProbeFrame._get_collection()
    try:
        for start in range(0, len(frames), batch_size):
            stop = min(start + batch_size, len(frames))
            collection.insert_many(
                _frame_documents(record.id, start, frames[start:stop], labels[start:stop]), ordered=True
            )
        ProbeSet.objects(id=record.id).update_one(set__complete=True)
    except BaseException:
        _delete(record.id)
        raise
    record.reload()
    log.info("probe set %s: %d frames at %s", name, record.n_frames, theory)
    return _info(record)


def _exists_message(existing: Optional[ProbeSet]) -> str:
    if existing is None:  # pragma: no cover - removed by another process in between
        return "a probe set of that name was being written by another process"
    if not existing.complete:
        return (
            f"probe set {existing.name!r} exists, incomplete (an interrupted add): "
            f"selfplay probe remove {existing.name} removes it"
        )
    return f"probe set {existing.name!r} exists already ({existing.n_frames} frames): choose another name or remove it first"


def _delete(set_id) -> int:
    # Incomplete first: a removal stopped halfway leaves a set nobody scores (and that
    # `probe remove` finishes), never a "complete" set with frames missing.
    ProbeSet._get_collection().update_one({"_id": set_id}, {"$set": {"complete": False}})
    removed = ProbeFrame._get_collection().delete_many({"probe_set": set_id}).deleted_count
    ProbeSet._get_collection().delete_one({"_id": set_id})
    return removed


def probe_sets(*, include_incomplete: bool = False, theories: Optional[Iterable[str]] = None) -> list[ProbeInfo]:
    """The probe sets by name (complete ones only, unless ``include_incomplete``), at
    ``theories`` if given."""
    query = {} if include_incomplete else {"complete": True}
    if theories is not None:
        query["theory__in"] = list(theories)
    return [_info(doc) for doc in ProbeSet.objects(**query).order_by("name")]


def get_probe_set(name: str) -> ProbeInfo:
    doc = ProbeSet.objects(name=name).first()
    if doc is None:
        raise StoreError(f"no probe set named {name!r} (selfplay probe list shows them)")
    if not doc.complete:
        raise StoreError(_exists_message(doc))
    return _info(doc)


def probe_atoms(name: str) -> list[Atoms]:
    """The frames of probe set ``name`` in their stored order, each with its label in a
    SinglePointCalculator."""
    info = get_probe_set(name)
    frames = [doc.to_atoms() for doc in ProbeFrame.objects(probe_set=ObjectId(info.id)).order_by("index")]
    if len(frames) != info.n_frames:
        raise StoreError(f"probe set {name!r}: {len(frames)} frames stored, {info.n_frames} expected")
    for atoms in frames:
        atoms.info["theory"] = info.theory
        atoms.info["probe_set"] = name
    return frames


def remove_probe_set(name: str) -> int:
    """Remove probe set ``name`` (complete or not) and its frames; returns the frames removed."""
    doc = ProbeSet.objects(name=name).first()
    if doc is None:
        raise StoreError(f"no probe set named {name!r} (selfplay probe list shows them)")
    removed = _delete(doc.id)
    log.info("removed probe set %s (%d frames)", name, removed)
    return removed
