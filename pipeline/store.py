"""Connecting to the store and idempotent writes.

``connect()`` takes a ``mongodb://`` URI, or nothing for the embedded in-process store
(mongomock-ng), which lives only as long as the process: commands whose data must
outlive the process call it with ``require_persistent=True`` and get a plain error
instead of a store that silently vanishes.

Writes are idempotent and safe from many processes at once: uniqueness is enforced by
the database's unique indexes (``Frame.hash``; ``Label``/``Failure`` on (frame, theory)),
and a duplicate-key error simply means another writer got there first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import mongoengine as me
import numpy as np
import pymongo
import pymongo.errors
from ase import Atoms
from pymongo import uri_parser

from pipeline import arrays
from pipeline.config import mask_uri
from pipeline.documents import ALL_DOCUMENTS, Failure, Frame, Label, frame_fields, utcnow
from pipeline.errors import InvalidStructure, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
AUTH_FAILED = 18


@dataclass(frozen=True)
class StoreInfo:
    uri: str  # masked
    database: str
    embedded: bool


_current: StoreInfo | None = None


def connect(
    uri: str | None = None,
    *,
    database: str = "selfplay",
    timeout_ms: int = 5000,
    require_persistent: bool = False,
    alias: str = "default",
) -> StoreInfo:
    """Connect mongoengine's default alias and make sure the indexes exist.

    Raises :class:`StoreUnavailable` (one line, password masked) when the server cannot
    be reached or refuses the credentials, and :class:`StoreError` when no URI is given
    but the caller needs data to persist.
    """
    global _current
    me.disconnect(alias)
    if uri in (None, "", "embedded"):
        if require_persistent:
            raise StoreError(
                "no MongoDB configured: set SELFPLAY_MONGODB_URI (or mongodb_uri in the config file); "
                "the embedded store lives only inside one process"
            )
        import mongomock_ng
        from mongomock_ng.gridfs import enable_gridfs_integration

        enable_gridfs_integration()
        me.connect(db=database, alias=alias, host="mongodb://localhost", mongo_client_class=mongomock_ng.MongoClient)
        info = StoreInfo(uri="embedded", database=database, embedded=True)
    else:
        masked = mask_uri(uri)
        try:
            parsed = uri_parser.parse_uri(uri)
        except (pymongo.errors.InvalidURI, pymongo.errors.ConfigurationError, ValueError) as exc:
            raise StoreUnavailable(f"invalid MongoDB URI {masked}: {_first_line(exc)}") from None
        database = parsed.get("database") or database
        me.connect(
            db=database,
            alias=alias,
            host=uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            uuidRepresentation="standard",
        )
        try:
            db = me.get_db(alias)
            db.client.admin.command("ping")
            # ping needs no authentication; listing collections does, so bad credentials surface here.
            db.list_collection_names()
        except pymongo.errors.OperationFailure as exc:
            me.disconnect(alias)
            if exc.code == AUTH_FAILED or "auth" in str(exc).lower():
                raise StoreUnavailable(f"MongoDB at {masked} rejected the credentials (authentication failed)") from None
            raise StoreUnavailable(f"MongoDB at {masked} refused the connection: {_first_line(exc)}") from None
        except pymongo.errors.PyMongoError as exc:
            me.disconnect(alias)
            raise StoreUnavailable(
                f"cannot reach MongoDB at {masked} within {timeout_ms} ms: {_first_line(exc)}"
            ) from None
        info = StoreInfo(uri=masked, database=database, embedded=False)
    for document in ALL_DOCUMENTS:
        document.ensure_indexes()
    _current = info
    log.info("connected to %s (database %s)", info.uri, info.database)
    return info


def connect_from_config(config, *, require_persistent: bool = False) -> StoreInfo:
    return connect(
        config.uri(),
        database=config.database,
        timeout_ms=config.db_timeout_ms,
        require_persistent=require_persistent,
    )


def current() -> StoreInfo | None:
    return _current


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # pymongo's topology descriptions are long; the first clause says what went wrong.
    return (text[0] if text else type(exc).__name__).split(", Timeout:")[0][:300]


# ---------------------------------------------------------------------------- writes


def add_frame(atoms: Atoms, *, source: str, **fields) -> tuple[Frame, bool]:
    """Insert ``atoms`` unless a frame with the same content hash exists.

    Returns ``(frame, created)``; ``created`` is False when the frame was already there
    (inserted earlier, or by a concurrent writer).
    """
    frame = Frame.from_atoms(atoms, source=source, **fields)
    try:
        frame.save(force_insert=True)
        return frame, True
    except me.NotUniqueError:
        existing = Frame.objects(hash=frame.hash).first()
        if existing is None:  # pragma: no cover - only if a concurrent writer deleted it
            raise StoreError(f"frame {frame.hash[:12]} vanished during insert") from None
        return existing, False


def _check_label_arrays(frame: Frame, energy: float, forces, stress) -> tuple[np.ndarray, np.ndarray | None]:
    if not np.isfinite(energy):
        raise InvalidStructure(f"frame {frame.hash[:12]}: energy is not finite")
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (frame.n_atoms, 3):
        raise InvalidStructure(
            f"frame {frame.hash[:12]}: forces have shape {forces.shape}, expected ({frame.n_atoms}, 3)"
        )
    if not np.all(np.isfinite(forces)):
        raise InvalidStructure(f"frame {frame.hash[:12]}: forces contain NaN or infinite values")
    if stress is not None:
        stress = arrays.voigt(stress)
        if stress.shape != (6,):
            raise InvalidStructure(f"frame {frame.hash[:12]}: stress has shape {stress.shape}, expected (6,) or (3, 3)")
        if not np.all(np.isfinite(stress)):
            raise InvalidStructure(f"frame {frame.hash[:12]}: stress contains NaN or infinite values")
    return forces, stress


def add_label(
    frame: Frame,
    *,
    theory: str,
    energy: float,
    forces,
    stress=None,
    theory_spec: dict | None = None,
    info: dict | None = None,
    wall_time: float | None = None,
    generation: int | None = None,
) -> tuple[Label, bool]:
    """Store a label for ``frame`` at ``theory`` unless one exists; returns ``(label, created)``."""
    forces, stress = _check_label_arrays(frame, float(energy), forces, stress)
    label = Label(
        frame=frame,
        frame_hash=frame.hash,
        theory=theory,
        theory_spec=theory_spec or {},
        energy=float(energy),
        forces=arrays.pack(forces),
        stress=None if stress is None else arrays.pack(stress),
        n_atoms=frame.n_atoms,
        elements=list(frame.elements),
        source=frame.source,
        generation=generation,
        info=info or {},
        wall_time=wall_time,
    )
    try:
        label.save(force_insert=True)
        return label, True
    except me.NotUniqueError:
        return Label.objects(frame=frame, theory=theory).first(), False


def add_failure(
    frame: Frame,
    *,
    theory: str,
    reason: str,
    attempts: list[dict] | None = None,
    generation: int | None = None,
) -> tuple[Failure, bool]:
    failure = Failure(
        frame=frame,
        frame_hash=frame.hash,
        theory=theory,
        reason=reason,
        attempts=attempts or [],
        elements=list(frame.elements),
        generation=generation,
    )
    try:
        failure.save(force_insert=True)
        return failure, True
    except me.NotUniqueError:
        return Failure.objects(frame=frame, theory=theory).first(), False


def _insert_many_ignoring_duplicates(collection, documents: list[dict]) -> list:
    """Insert unordered; returns the ``_id`` of each document this call created."""
    if not documents:
        return []
    try:
        collection.insert_many(documents, ordered=False)
        return [d["_id"] for d in documents]
    except pymongo.errors.BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        other = [e for e in errors if e.get("code") != DUPLICATE_KEY]
        if other:
            raise StoreError(f"bulk insert into {collection.name} failed: {other[0].get('errmsg', other[0])}") from None
        failed = {e["index"] for e in errors}
        return [d["_id"] for i, d in enumerate(documents) if i not in failed]


@dataclass
class BulkResult:
    frame_ids: list  # ids of all the frames given, existing or new
    created_frames: list
    created_labels: list


def add_labelled_frames(
    frames: list[Atoms],
    labels: list[tuple[float, np.ndarray, np.ndarray | None]],
    *,
    theory: str,
    source: str,
    theory_spec: dict | None = None,
    provenance: list[dict] | None = None,
    generation: int | None = None,
    label_generation: list[int | None] | None = None,
) -> BulkResult:
    """Insert many frames with their labels in a few round trips (import, benchmarks).

    Same guarantees as :func:`add_frame`/:func:`add_label`: existing frames and labels are
    kept, concurrent writers never create duplicates.
    """
    from bson import ObjectId

    now = utcnow()
    frame_docs = []
    for i, atoms in enumerate(frames):
        fields = frame_fields(atoms, source=source, generation=generation, provenance=provenance[i] if provenance else None)
        # Unset optional fields are left out, as mongoengine does.
        doc = {"_id": ObjectId(), **{k: v for k, v in fields.items() if v is not None}, "created_at": now}
        frame_docs.append(doc)
    created_frames = _insert_many_ignoring_duplicates(Frame._get_collection(), frame_docs)
    try:
        created_labels = _insert_labels(frame_docs, labels, theory, theory_spec, generation, label_generation)
    except BaseException:
        Frame._get_collection().delete_many({"_id": {"$in": created_frames}})  # all or nothing
        raise
    ids = [d["_id"] for d in Frame._get_collection().find({"hash": {"$in": [d["hash"] for d in frame_docs]}}, {"_id": 1})]
    return BulkResult(frame_ids=ids, created_frames=created_frames, created_labels=created_labels)


def _insert_labels(frame_docs, labels, theory, theory_spec, generation, label_generation) -> list:
    from bson import ObjectId

    hashes = [d["hash"] for d in frame_docs]
    # A frame stored earlier keeps its own _id and source; the label follows the stored frame.
    stored = {d["hash"]: d for d in Frame._get_collection().find({"hash": {"$in": hashes}}, {"hash": 1, "source": 1})}
    label_docs = []
    for i, (doc, (energy, forces, stress)) in enumerate(zip(frame_docs, labels)):
        frame = Frame(hash=doc["hash"], n_atoms=doc["n_atoms"])
        forces, stress = _check_label_arrays(frame, float(energy), forces, stress)
        label_docs.append(
            {
                "_id": ObjectId(),
                "frame": stored[doc["hash"]]["_id"],
                "frame_hash": doc["hash"],
                "theory": theory,
                "theory_spec": theory_spec or {},
                "energy": float(energy),
                "forces": arrays.pack(forces),
                "stress": None if stress is None else arrays.pack(stress),
                "n_atoms": doc["n_atoms"],
                "elements": doc["elements"],
                "source": stored[doc["hash"]].get("source"),
                "generation": label_generation[i] if label_generation else generation,
                "info": {},
                "created_at": doc["created_at"],
            }
        )
    return _insert_many_ignoring_duplicates(Label._get_collection(), label_docs)


# ----------------------------------------------------------------------------- reads


def existing_hashes(hashes: Iterable[str]) -> set[str]:
    """The subset of ``hashes`` already stored as frames."""
    hashes = list(dict.fromkeys(hashes))
    found: set[str] = set()
    for start in range(0, len(hashes), 5000):
        chunk = hashes[start : start + 5000]
        found.update(d["hash"] for d in Frame._get_collection().find({"hash": {"$in": chunk}}, {"hash": 1, "_id": 0}))
    return found


def done_hashes(theory: str) -> set[str]:
    """Hashes of frames that already have a label or a recorded failure at ``theory``."""
    done = {d["frame_hash"] for d in Label._get_collection().find({"theory": theory}, {"frame_hash": 1, "_id": 0})}
    done |= {d["frame_hash"] for d in Failure._get_collection().find({"theory": theory}, {"frame_hash": 1, "_id": 0})}
    return done
