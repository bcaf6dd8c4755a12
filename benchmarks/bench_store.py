"""Ingest and export throughput of the store (frames/s), next to the raw driver's ceiling.

Synthetic labelled frames of 10-200 atoms (random positions on a jittered grid so no two
atoms overlap, random forces) are ingested with the bulk path used by ``selfplay db
import`` (``add_labelled_frames``) and exported with ``selfplay export`` to HDF5 and
extxyz, against the embedded store and against a MongoDB-wire server (``--uri``, e.g.
FerretDB). Frames are generated and ingested batch by batch, so memory stays bounded on
our side whatever ``--frames`` is (the embedded store itself holds everything in memory).

The exported HDF5 file is checked bit for bit against what was ingested (a SHA-256 over
positions, forces and energies in insertion order), outside the timings.

Ceilings (``raw_*``): the same documents our bulk path builds, written with plain
``insert_many`` into a fresh database with the same indexes, and both collections read
back with plain ``find`` (C BSON decoding, no processing) in the order the export reads
them. They measure the server plus the driver, i.e. the most any code of ours could reach.

    python benchmarks/bench_store.py --frames 20000 --embedded-frames 3000 \\
        --uri mongodb://127.0.0.1:27018 --out benchmarks/results/store.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from ase import Atoms


def synthetic_frames(n: int, seed: int = 0, min_atoms: int = 10, max_atoms: int = 200):
    rng = np.random.default_rng(seed)
    elements = np.array([1, 6, 7, 8, 14, 26, 29, 79])
    for _ in range(n):
        size = int(rng.integers(min_atoms, max_atoms + 1))
        side = int(np.ceil(size ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:size]
        positions = 2.5 * grid + rng.uniform(-0.3, 0.3, size=(size, 3))
        periodic = bool(rng.integers(2))
        atoms = Atoms(
            numbers=rng.choice(elements, size),
            positions=positions,
            cell=np.eye(3) * 2.5 * side if periodic else np.zeros((3, 3)),
            pbc=periodic,
        )
        forces = rng.normal(size=(size, 3))
        stress = rng.normal(size=6) * 1e-3 if periodic else None
        yield atoms, (float(rng.normal() * size), forces, stress)


def batches(n: int, batch: int):
    frames, labels = [], []
    for atoms, label in synthetic_frames(n):
        frames.append(atoms)
        labels.append(label)
        if len(frames) == batch:
            yield frames, labels
            frames, labels = [], []
    if frames:
        yield frames, labels


def _connect(store_uri: str | None, database: str):
    from pipeline.store import connect

    connect(None if store_uri is None else f"{store_uri.rstrip('/')}/{database}", database=database)


def _drop(database: str) -> None:
    import mongoengine as me

    me.get_db().client.drop_database(database)
    me.disconnect()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(store_uri: str | None, n_frames: int, batch: int, workdir: Path) -> dict:
    import h5py

    from pipeline.export import export_snapshot
    from pipeline.store import add_labelled_frames

    database = f"bench_{uuid.uuid4().hex[:8]}"
    _connect(store_uri, database)
    try:
        digest = hashlib.sha256()
        t_ingest = 0.0
        n_atoms = 0
        batch_rates = []
        for frames, labels in batches(n_frames, batch):
            start = time.perf_counter()
            add_labelled_frames(frames, labels, theory="bench", source="bench")
            elapsed = time.perf_counter() - start
            t_ingest += elapsed
            batch_rates.append(len(frames) / elapsed)
            for atoms, (energy, forces, _) in zip(frames, labels):
                n_atoms += len(atoms)
                digest.update(atoms.positions.tobytes())
                digest.update(forces.tobytes())
                digest.update(np.float64(energy).tobytes())
        result = {
            "frames": n_frames,
            "atoms": n_atoms,
            "ingest_s": t_ingest,
            "ingest_frames_per_s": n_frames / t_ingest,
            "ingest_first_batch_frames_per_s": batch_rates[0],
            "ingest_last_batch_frames_per_s": batch_rates[-1],
        }
        for fmt, suffix in (("hdf5", "h5"), ("extxyz", "xyz")):
            out = workdir / f"snapshot.{suffix}"
            start = time.perf_counter()
            summary = export_snapshot(out, format=fmt)
            elapsed = time.perf_counter() - start
            assert summary.n_frames == n_frames, (summary.n_frames, n_frames)
            result[f"export_{fmt}_s"] = elapsed
            result[f"export_{fmt}_frames_per_s"] = n_frames / elapsed
            result[f"export_{fmt}_bytes"] = out.stat().st_size
            if fmt == "hdf5":
                result["export_hdf5_bit_exact"] = _hdf5_digest(h5py, out) == digest.hexdigest()
            out.unlink()
        result["peak_rss_mib"] = _peak_rss_mib()
        return result
    finally:
        _drop(database)


def _hdf5_digest(h5py, path: Path, chunk: int = 20_000) -> str:
    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        offsets = f["offsets"][:]
        for start in range(0, len(offsets) - 1, chunk):
            stop = min(start + chunk, len(offsets) - 1)
            positions = f["positions"][offsets[start] : offsets[stop]]
            forces = f["forces"][offsets[start] : offsets[stop]]
            energy = f["energy"][start:stop]
            for k in range(stop - start):
                lo, hi = offsets[start + k] - offsets[start], offsets[start + k + 1] - offsets[start]
                digest.update(positions[lo:hi].tobytes())
                digest.update(forces[lo:hi].tobytes())
                digest.update(energy[k].tobytes())
    return digest.hexdigest()


def run_raw(store_uri: str | None, n_frames: int, batch: int) -> dict:
    """The driver alone: insert_many of prebuilt documents, plain find of both collections."""
    from bson import ObjectId

    from pipeline import arrays
    from pipeline.documents import Frame, Label, utcnow
    from pipeline.export import FRAME_FIELDS, LABEL_FIELDS
    from pipeline.store import frame_documents

    database = f"bench_raw_{uuid.uuid4().hex[:8]}"
    _connect(store_uri, database)  # same indexes as the real store
    frames_collection, labels_collection = Frame._get_collection(), Label._get_collection()
    try:
        t_insert = 0.0
        for frames, labels in batches(n_frames, batch):
            frame_docs = frame_documents(frames, source="bench")
            now = utcnow()
            label_docs = [
                {
                    "_id": ObjectId(),
                    "frame": doc["_id"],
                    "frame_hash": doc["hash"],
                    "theory": "bench",
                    "theory_spec": {},
                    "energy": energy,
                    "forces": arrays.pack(forces),
                    "stress": None if stress is None else arrays.pack(stress),
                    "n_atoms": doc["n_atoms"],
                    "elements": doc["elements"],
                    "source": "bench",
                    "generation": None,
                    "info": {},
                    "created_at": now,
                }
                for doc, (energy, forces, stress) in zip(frame_docs, labels)
            ]
            start = time.perf_counter()
            frames_collection.insert_many(frame_docs, ordered=False)
            labels_collection.insert_many(label_docs, ordered=False)
            t_insert += time.perf_counter() - start
        # The projections the export uses: on a server only (the embedded store projects
        # in Python, slower than copying whole documents).
        server = store_uri is not None
        frame_fields, label_fields = (FRAME_FIELDS, LABEL_FIELDS) if server else (None, None)

        def read_frames():
            return sum(1 for _ in frames_collection.find({}, frame_fields, sort=[("_id", 1)]))

        def read_labels():
            return sum(1 for _ in labels_collection.find({}, label_fields, sort=[("frame", 1), ("theory", 1)]))

        start = time.perf_counter()
        assert read_frames() == n_frames
        t_frames = time.perf_counter() - start
        start = time.perf_counter()
        assert read_labels() == n_frames
        t_labels = time.perf_counter() - start
        result = {
            "raw_insert_many_frames_plus_labels_per_s": n_frames / t_insert,
            "raw_find_frames_docs_per_s": n_frames / t_frames,
            "raw_find_labels_docs_per_s": n_frames / t_labels,
            "raw_find_frames_then_labels_per_s": n_frames / (t_frames + t_labels),
        }
        if server:  # both collections at once, as the export reads them from a server
            from concurrent.futures import ThreadPoolExecutor

            start = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                counts = [f.result() for f in [pool.submit(read_frames), pool.submit(read_labels)]]
            assert counts == [n_frames, n_frames]
            result["raw_find_frames_and_labels_concurrently_per_s"] = n_frames / (time.perf_counter() - start)
        return result
    finally:
        _drop(database)


def environment(uri: str | None) -> dict:
    import h5py
    import mongoengine
    import mongomock_ng
    import pymongo

    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "pymongo": pymongo.version,
        "pymongo_c_extensions": pymongo.has_c(),
        "mongoengine": mongoengine.__version__,
        "mongomock_ng": getattr(mongomock_ng, "__version__", "?"),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, StopIteration, ValueError):
        pass
    if uri:
        build = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000).admin.command("buildInfo")
        info["server_version"] = build.get("ferretdbVersion") or build.get("version")
    return info


def measure(name: str, uri: str | None, frames: int, batch: int, workdir: Path, raw: bool) -> dict:
    load_before = os.getloadavg()
    result = {"store": name, **run_ours(uri, frames, batch, workdir)}
    if raw:
        result.update(run_raw(uri, frames, batch))
    result["load_average_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000, help="frames for the server run")
    parser.add_argument(
        "--embedded-frames",
        type=int,
        default=3000,
        help="frames for the embedded run (mongomock-ng checks unique indexes by scanning: ingest is quadratic)",
    )
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--uri", default=None, help="MongoDB-wire server to measure besides the embedded store")
    parser.add_argument("--server-name", default="FerretDB v1.24.2 (SQLite)")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-driver ceilings")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_embedded:
            results.append(
                measure("embedded (mongomock-ng)", None, args.embedded_frames, args.batch, Path(tmp), not args.no_raw)
            )
        if args.uri:
            results.append(measure(args.server_name, args.uri, args.frames, args.batch, Path(tmp), not args.no_raw))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(args.uri), "batch": args.batch, "note": args.note, "results": results}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
