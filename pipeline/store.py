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
from urllib.parse import urlsplit, urlunsplit

import mongoengine as me
import numpy as np
import pymongo
import pymongo.errors
from ase import Atoms
from bson import ObjectId
from pydantic import SecretStr
from pymongo import uri_parser

from pipeline import arrays
from pipeline.documents import ALL_DOCUMENTS, Failure, Frame, Label, frame_documents, utcnow
from pipeline.errors import InvalidStructure, StoreError, StoreUnavailable

# The read path (labelled frames streamed in frame order) is pipeline.reads; the store's
# public names are importable from here as well.
from pipeline.reads import iter_batches, iter_labelled, iter_records, label_query  # noqa: F401

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
AUTH_FAILED = 18


@dataclass(frozen=True)
class StoreInfo:
    uri: str  # masked
    database: str
    embedded: bool


_current: StoreInfo | None = None


def mask_uri(uri: str | SecretStr | None) -> str:
    """The URI with its password replaced by ``***`` (for logs and error messages)."""
    if uri is None:
        return "embedded"
    if isinstance(uri, SecretStr):
        uri = uri.get_secret_value()
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.password is None and "@" not in parts.netloc:
        return uri
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def connect(
    uri: str | None = None,
    *,
    database: str = "selfplay",
    timeout_ms: int = 5000,
    require_persistent: bool = False,
    alias: str = "default",
    read_only: bool = False,
) -> StoreInfo:
    """Connect mongoengine's default alias and make sure the indexes exist.

    With ``read_only=True`` no index is created, neither now nor when a document class
    first touches its collection (mongoengine's ``auto_create_index`` is switched off for
    the store's documents until the next writable ``connect``), so a MongoDB user with
    only the ``read`` role can use it: ``selfplay dashboard`` and ``selfplay report``
    connect this way.

    Raises :class:`StoreUnavailable` (one line, password masked) when the server cannot
    be reached or refuses the credentials, and :class:`StoreError` when no URI is given
    but the caller needs data to persist.
    """
    global _current
    me.disconnect(alias)
    for document in ALL_DOCUMENTS:
        # Process-wide in mongoengine (class meta), hence set on every connect, both ways.
        document._meta["auto_create_index"] = not read_only
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
                raise StoreUnavailable(
                    f"MongoDB at {masked} rejected the credentials (authentication failed)"
                ) from None
            raise StoreUnavailable(f"MongoDB at {masked} refused the connection: {_first_line(exc)}") from None
        except pymongo.errors.PyMongoError as exc:
            me.disconnect(alias)
            raise StoreUnavailable(
                f"cannot reach MongoDB at {masked} within {timeout_ms} ms: {_first_line(exc)}"
            ) from None
        info = StoreInfo(uri=masked, database=database, embedded=False)
    if not read_only:
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
    magmoms=None,
    multiplicity: int | None = None,
    smeared: bool = False,
) -> tuple[Label, bool]:
    """Store a label for ``frame`` at ``theory`` unless one exists; returns ``(label, created)``.

    ``magmoms`` (per-atom spin moments), ``multiplicity`` and ``smeared`` record the
    electronic state the number belongs to.
    """
    energy, forces, stress = arrays.label_arrays(energy, forces, stress, frame.n_atoms, f"frame {frame.hash[:12]}")
    if magmoms is not None:
        magmoms = np.asarray(magmoms, dtype=float)
        if magmoms.shape != (frame.n_atoms,) or not np.all(np.isfinite(magmoms)):
            raise InvalidStructure(
                f"frame {frame.hash[:12]}: magnetic moments must be {frame.n_atoms} finite numbers, got {magmoms.shape}"
            )
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
        magmoms=None if magmoms is None else arrays.pack(magmoms),
        multiplicity=multiplicity,
        smeared=bool(smeared),
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
    frame_ids: list  # ids of all the frames given, existing or new, in the order given
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
    **frame_fields: list | None,
) -> BulkResult:
    """Insert many frames with their labels in two round trips (import, benchmarks).

    ``frame_fields`` are the optional frame fields of :func:`add_frame` (``sigma_f``,
    ``sigma_e``, ``force_deviation``, ``selected_as``), each a list with one value (or
    None) per frame.

    Same guarantees as :func:`add_frame`/:func:`add_label`: existing frames and labels are
    kept, concurrent writers never create duplicates (the unique indexes decide), and the
    call is all or nothing: every label is checked before anything is written, and if the
    database fails half-way the documents this call wrote are removed again.

    The frame documents are built for the whole batch at once by
    :func:`pipeline.documents.frame_documents`, without mongoengine objects.
    Frames that already exist are looked up only when the insert reports them as
    duplicates, so a batch of new frames costs exactly two ``insert_many``.
    """
    if len(frames) != len(labels):
        raise InvalidStructure(f"{len(frames)} frames but {len(labels)} labels")
    if not frames:
        return BulkResult(frame_ids=[], created_frames=[], created_labels=[])
    now = utcnow()
    frame_docs = frame_documents(
        frames, source=source, generation=generation, provenance=provenance, now=now, **frame_fields
    )
    checked = [
        arrays.label_arrays(energy, forces, stress, doc["n_atoms"], f"frame {doc['hash'][:12]}")
        for doc, (energy, forces, stress) in zip(frame_docs, labels)
    ]
    frame_collection = Frame._get_collection()
    label_collection = Label._get_collection()
    label_docs: list[dict] = []
    try:
        created_frames = _insert_many_ignoring_duplicates(frame_collection, frame_docs)
        stored = _stored_frames(frame_collection, frame_docs, created_frames)
        for i, (doc, (energy, forces, stress)) in enumerate(zip(frame_docs, checked)):
            frame_id, frame_source = stored[doc["hash"]]
            label_docs.append(
                {
                    "_id": ObjectId(),
                    "frame": frame_id,
                    "frame_hash": doc["hash"],
                    "theory": theory,
                    "theory_spec": theory_spec or {},
                    "energy": energy,
                    "forces": arrays.pack(forces),
                    "stress": None if stress is None else arrays.pack(stress),
                    "n_atoms": doc["n_atoms"],
                    "elements": doc["elements"],
                    # A frame stored earlier keeps its own _id and source; the label follows it.
                    "source": frame_source,
                    "generation": label_generation[i] if label_generation else generation,
                    "info": {},
                    "created_at": now,
                }
            )
        created_labels = _insert_many_ignoring_duplicates(label_collection, label_docs)
    except BaseException:
        # Our _ids are generated here, so deleting them removes exactly what this call
        # wrote, including documents of an insert_many that failed half-way.
        remove_created([d["_id"] for d in frame_docs], [d["_id"] for d in label_docs])
        raise
    frame_ids = [stored[d["hash"]][0] for d in frame_docs]
    return BulkResult(frame_ids=frame_ids, created_frames=created_frames, created_labels=created_labels)


def _stored_frames(collection, frame_docs: list[dict], created: list) -> dict[str, tuple]:
    """hash -> (_id, source) of the stored frame for every document of the batch."""
    created_ids = set(created)
    stored = {d["hash"]: (d["_id"], d["source"]) for d in frame_docs if d["_id"] in created_ids}
    missing = list({d["hash"] for d in frame_docs if d["hash"] not in stored})
    if missing:
        # One $in query for the duplicates only: servers without a usable index for it
        # (FerretDB's SQLite backend scans the collection) pay it once per batch.
        for d in collection.find({"hash": {"$in": missing}}, {"hash": 1, "source": 1}):
            stored[d["hash"]] = (d["_id"], d.get("source"))
        gone = [h for h in missing if h not in stored]
        if gone:  # pragma: no cover - only if a concurrent writer deleted it in between
            raise StoreError(f"frame {gone[0][:12]} vanished during insert")
    return stored


def remove_created(frame_ids: list, label_ids: list) -> None:
    """Undo an import: delete these labels, then these frames unless something else
    (a label or failure written meanwhile by another process) refers to them."""
    labels = Label._get_collection()
    for chunk in _chunks(label_ids):
        labels.delete_many({"_id": {"$in": chunk}})
    for chunk in _chunks(frame_ids):
        referenced = {d["frame"] for d in labels.find({"frame": {"$in": chunk}}, {"frame": 1})}
        referenced |= {d["frame"] for d in Failure._get_collection().find({"frame": {"$in": chunk}}, {"frame": 1})}
        doomed = [i for i in chunk if i not in referenced]
        if doomed:
            Frame._get_collection().delete_many({"_id": {"$in": doomed}})


def _chunks(items: list, size: int = 10_000):
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
