"""Ingest and export throughput of the store (frames/s).

Synthetic labelled frames of 10-200 atoms (random positions on a jittered grid so no two
atoms overlap, random forces) are ingested with the bulk path used by ``selfplay db
import`` and exported with ``selfplay export`` to HDF5 and extxyz, against the embedded
store and against a MongoDB-wire server (``--uri``, e.g. FerretDB).

    python benchmarks/bench_store.py --frames 100000 --uri mongodb://127.0.0.1:27018 \
        --out benchmarks/results/store.json
"""

from __future__ import annotations

import argparse
import json
import platform
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


def run(store_uri: str | None, n_frames: int, batch: int, workdir: Path) -> dict:
    import mongoengine as me

    from pipeline.export import export_snapshot
    from pipeline.store import add_labelled_frames, connect

    database = f"bench_{uuid.uuid4().hex[:8]}"
    connect(None if store_uri is None else f"{store_uri.rstrip('/')}/{database}", database=database)
    try:
        frames, labels = [], []
        t_ingest = 0.0
        n_atoms = 0
        for atoms, label in synthetic_frames(n_frames):
            frames.append(atoms)
            labels.append(label)
            n_atoms += len(atoms)
            if len(frames) == batch:
                start = time.perf_counter()
                add_labelled_frames(frames, labels, theory="bench", source="bench")
                t_ingest += time.perf_counter() - start
                frames, labels = [], []
        if frames:
            start = time.perf_counter()
            add_labelled_frames(frames, labels, theory="bench", source="bench")
            t_ingest += time.perf_counter() - start
        result = {
            "store": "embedded (mongomock-ng)" if store_uri is None else "server",
            "frames": n_frames,
            "atoms": n_atoms,
            "ingest_s": t_ingest,
            "ingest_frames_per_s": n_frames / t_ingest,
        }
        for fmt, suffix in (("hdf5", "h5"), ("extxyz", "xyz")):
            out = workdir / f"snapshot.{suffix}"
            start = time.perf_counter()
            summary = export_snapshot(out, format=fmt)
            elapsed = time.perf_counter() - start
            assert summary.n_frames == n_frames
            result[f"export_{fmt}_s"] = elapsed
            result[f"export_{fmt}_frames_per_s"] = n_frames / elapsed
            result[f"export_{fmt}_bytes"] = out.stat().st_size
        return result
    finally:
        me.get_db().client.drop_database(database)
        me.disconnect()


def environment() -> dict:
    import h5py
    import mongoengine
    import pymongo

    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": __import__("os").cpu_count(),
        "pymongo": pymongo.version,
        "mongoengine": mongoengine.__version__,
        "h5py": h5py.__version__,
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--server-frames", type=int, default=None, help="frames for the server run (default: --frames)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--uri", default=None, help="MongoDB-wire server to measure besides the embedded store")
    parser.add_argument("--server-name", default="FerretDB v1.24.2 (SQLite)")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_embedded:
            results.append(run(None, args.frames, args.batch, Path(tmp)))
            print(json.dumps(results[-1], indent=1))
        if args.uri:
            result = run(args.uri, args.server_frames or args.frames, args.batch, Path(tmp))
            result["store"] = args.server_name
            results.append(result)
            print(json.dumps(results[-1], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
