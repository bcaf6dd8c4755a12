"""HDF5 snapshot size and export speed: chunks sized to the data and compressed, against
the fixed layout (every dataset a fixed 4096-65536-row chunk, no compression).

"Before" is the HDF5 writer of ``--baseline-rev`` (default: the last commit with the
fixed layout), loaded from git next to the current one; both are fed the same columns.
Frames come from ``bench_store.synthetic_frames`` (10-200 atoms, random elements,
positions on a jittered grid, normal forces: full-entropy float mantissas, as in labels
from DFT, so the float columns compress least here) with the provenance the samplers
write (``samplers.frames.provenance``), 1000 frames per generation.

Measured, each the best of ``--repeat`` runs (the machine is shared):

* ``writer``: the snapshot written from in-memory batches of ``pipeline.export.BATCH``
  frames as ``export_snapshot`` streams them, for each of ``--frames``: file size, bytes
  of the arrays themselves (what the numbers cost), write time, a full read with
  ``read_hdf5``, and reading single random frames with plain h5py; both files are
  compared dataset by dataset, bit for bit.
* ``filters``: every column of a ``--sweep-frames`` snapshot written with each filter
  h5py has without plugins (none, lzf, gzip 1/4/6/9, each with and without shuffle).
* ``chunks``: the current writer with other chunk sizes.
* ``export``: ``export_snapshot`` end to end, before and after, from the embedded store
  (``--embedded-frames``) and from a MongoDB-wire server (``--uri``, ``--server-frames``).

    python benchmarks/bench_snapshot.py --frames 16,20000 --server-frames 20000 \\
        --uri mongodb://127.0.0.1:27018 --out benchmarks/results/snapshot.json
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
import uuid
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
from bench_store import environment, synthetic_frames

from pipeline import export
from pipeline.hashing import frame_hash
from samplers.frames import provenance

log = logging.getLogger("bench_snapshot")
ROOT = Path(__file__).resolve().parents[1]
#: The last commit whose HDF5 writer had fixed chunks and no compression.
BASELINE_REV = "bd8489fc9434eedd0aa15a6ad91c1f44d33afce4"
FRAMES_PER_GENERATION = 1000
#: Random single-frame reads timed per file (enough for a stable mean on this machine).
RANDOM_READS = 300


def baseline_module(rev: str) -> types.ModuleType:
    """``pipeline/export.py`` as of ``rev``, importable next to the current one."""
    source = subprocess.run(
        ["git", "show", f"{rev}:pipeline/export.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("baseline_export")
    module.__file__ = f"{rev}:pipeline/export.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def labelled(n: int, seed: int = 0):
    """(atoms, (energy, forces, stress), provenance, generation) for ``n`` frames."""
    parent = None
    for i, (atoms, label) in enumerate(synthetic_frames(n, seed=seed)):
        record = provenance(
            "md",
            {"temperature": 800.0, "steps": 200, "timestep_fs": 1.0, "friction": 0.01},
            seed=seed * 1_000_003 + i,
            parent=parent,
            temperature=800.0 + 20.0 * np.sin(i),
            step=10 * (i % 20),
        )
        parent = frame_hash(atoms)
        yield atoms, label, record, i // FRAMES_PER_GENERATION


def record_batches(n: int, seed: int = 0) -> list[export.RecordBatch]:
    records = [
        export.Record(
            numbers=atoms.numbers,
            positions=atoms.positions,
            cell=atoms.cell.array,
            pbc=atoms.pbc,
            energy=energy,
            forces=forces,
            stress=stress,
            frame_hash=frame_hash(atoms),
            theory="bench",
            generation=generation,
            source=record["sampler"],
            provenance=record,
        )
        for atoms, (energy, forces, stress), record, generation in labelled(n, seed)
    ]
    return [export.RecordBatch.from_records(records[i : i + export.BATCH]) for i in range(0, n, export.BATCH)]


def payload_bytes(path: Path) -> int:
    """What the numbers cost: bytes of every array, characters of every string."""
    total = 0
    with h5py.File(path, "r") as f:
        for dataset in f.values():
            if h5py.check_string_dtype(dataset.dtype) and dataset.dtype.kind == "O":
                total += sum(len(s) for s in dataset[()])
            else:
                total += dataset[()].nbytes
    return total


def same_datasets(first: Path, second: Path) -> bool:
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        if set(a) != set(b) or set(a.attrs) != set(b.attrs):
            return False
        for name in a:
            x, y = a[name][()], b[name][()]
            if x.dtype != y.dtype or x.shape != y.shape:
                return False
            if (x.tolist() if x.dtype.kind == "O" else x.tobytes()) != (
                y.tolist() if y.dtype.kind == "O" else y.tobytes()
            ):
                return False
    return True


def best(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def read_random_frames(path: Path, reopen: bool, seed: int = 0) -> float:
    """Mean seconds to read one random frame's positions, forces and energy with h5py,
    holding the datasets open (their chunk caches persist) or, ``reopen``, looking each
    up again for every read (``f["positions"][a:b]`` in a loop: a fresh cache each time)."""
    with h5py.File(path, "r") as f:
        offsets = f["offsets"][:]
        picks = np.random.default_rng(seed).integers(0, len(offsets) - 1, RANDOM_READS)
        held = {name: f[name] for name in ("positions", "forces", "energy")}
        dataset = (lambda name: f[name]) if reopen else held.__getitem__
        start = time.perf_counter()
        for i in picks:
            dataset("positions")[offsets[i] : offsets[i + 1]]
            dataset("forces")[offsets[i] : offsets[i + 1]]
            dataset("energy")[i]
        return (time.perf_counter() - start) / RANDOM_READS


def file_figures(path: Path, write_s: float, repeat: int) -> dict:
    size = path.stat().st_size
    raw = payload_bytes(path)
    return {
        "bytes": size,
        "payload_bytes": raw,
        "bytes_per_payload_byte": size / raw,
        "write_s": write_s,
        "read_hdf5_s": best(lambda: sum(1 for _ in export.read_hdf5(path)), repeat),
        "random_frame_read_ms": 1e3 * read_random_frames(path, reopen=False),
        "random_frame_read_reopen_ms": 1e3 * read_random_frames(path, reopen=True),
    }


def bench_writer(n: int, baseline, workdir: Path, repeat: int) -> dict:
    batches = record_batches(n)
    paths = {"before": workdir / f"before_{n}.h5", "after": workdir / f"after_{n}.h5"}

    def write(which):
        if which == "before":
            writer = baseline.HDF5Writer(paths[which])
        else:
            writer = export.HDF5Writer(paths[which], expected_frames=n)
        with writer:
            for batch in batches:
                writer.add_batch(batch)

    result = {"frames": n, "atoms": int(sum(b.offsets[-1] for b in batches))}
    for which in ("before", "after"):
        result[which] = file_figures(paths[which], best(lambda: write(which), repeat), repeat)
    result["bit_exact"] = same_datasets(paths["before"], paths["after"])
    result["size_ratio_before_over_after"] = result["before"]["bytes"] / result["after"]["bytes"]
    with h5py.File(paths["after"], "r") as f:
        result["after"]["datasets"] = {
            name: {
                "chunk_rows": d.chunks[0],
                "filters": [x for x in (("shuffle" if d.shuffle else None), d.compression) if x],
                "stored_bytes": d.id.get_storage_size(),
            }
            for name, d in f.items()
        }
    for path in paths.values():
        path.unlink()
    log.info(
        "writer %d frames: %d -> %d bytes (numbers %d), write %.3f -> %.3f s, bit exact %s",
        n,
        result["before"]["bytes"],
        result["after"]["bytes"],
        result["after"]["payload_bytes"],
        result["before"]["write_s"],
        result["after"]["write_s"],
        result["bit_exact"],
    )
    return result


FILTERS = {"none": {}, "lzf": {"compression": "lzf"}} | {
    f"gzip{level}": {"compression": "gzip", "compression_opts": level} for level in (1, 4, 6, 9)
}


def bench_filters(n: int, workdir: Path, repeat: int) -> dict:
    """Each column of an ``n``-frame snapshot written alone with each filter."""
    path = workdir / "columns.h5"
    with export.HDF5Writer(path, expected_frames=n) as writer:
        for batch in record_batches(n, seed=1):
            writer.add_batch(batch)
    with h5py.File(path, "r") as f:
        columns = {name: (d[()], d.dtype) for name, d in f.items()}
    path.unlink()
    result: dict = {"frames": n, "chunk_bytes": export.CHUNK_BYTES, "columns": {}}
    for name, (data, dtype) in columns.items():
        rows = export.chunk_rows(data.shape[1:], dtype, len(data), export.CHUNK_BYTES)
        row = {"payload_bytes": sum(len(s) for s in data) if dtype.kind == "O" else data.nbytes}
        for label, options in FILTERS.items():
            for shuffle in (False, True):
                if shuffle and not options:
                    continue

                written: dict = {}

                def write():
                    buffer = io.BytesIO()
                    with h5py.File(buffer, "w", libver=export.LIBVER) as out:
                        out.create_dataset(
                            "x",
                            data=data,
                            dtype=dtype,
                            maxshape=(None, *data.shape[1:]),
                            chunks=(rows, *data.shape[1:]),
                            shuffle=shuffle,
                            **options,
                        )
                    written["bytes"] = len(buffer.getvalue())

                seconds = best(write, repeat)
                row[("shuffle+" if shuffle else "") + label] = {"bytes": written["bytes"], "write_s": seconds}
        result["columns"][name] = row
        log.info("filters %s: %s", name, {k: v["bytes"] if isinstance(v, dict) else v for k, v in row.items()})
    return result


def bench_chunks(n: int, workdir: Path, repeat: int, sizes: list[int]) -> list[dict]:
    batches = record_batches(n, seed=2)
    path = workdir / "chunks.h5"
    rows = []
    for chunk_bytes in sizes:

        def write():
            with export.HDF5Writer(path, expected_frames=n, chunk_bytes=chunk_bytes) as writer:
                for batch in batches:
                    writer.add_batch(batch)

        row = {"chunk_bytes": chunk_bytes, **file_figures(path, best(write, repeat), repeat)}
        rows.append(row)
        log.info("chunks %d KiB: %s", chunk_bytes >> 10, row)
    path.unlink()
    return rows


def bench_export(name: str, uri: str | None, n: int, baseline, workdir: Path, repeat: int) -> dict:
    """``export_snapshot`` of ``n`` ingested frames with the baseline and the current code."""
    import mongoengine as me

    from pipeline.store import add_labelled_frames, connect

    database = f"bench_snapshot_{uuid.uuid4().hex[:8]}"
    connect(None if uri is None else f"{uri.rstrip('/')}/{database}", database=database)
    try:
        frames = list(labelled(n, seed=3))
        for start in range(0, n, FRAMES_PER_GENERATION):  # one generation per insert
            group = frames[start : start + FRAMES_PER_GENERATION]
            add_labelled_frames(
                [f[0] for f in group],
                [f[1] for f in group],
                theory="bench",
                source="md",
                provenance=[f[2] for f in group],
                generation=group[0][3],
                label_generation=[group[0][3]] * len(group),
            )
        result = {"store": name, "frames": n}
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(repeat):  # alternating, so that drifting load hits both alike
            for which, module in (("before", baseline), ("after", export)):
                out = workdir / f"export_{which}.h5"
                start = time.perf_counter()
                summary = module.export_snapshot(out)
                times[which].append(time.perf_counter() - start)
                assert summary.n_frames == n, (summary.n_frames, n)
                result[f"{which}_bytes"] = out.stat().st_size
        result["bit_exact"] = same_datasets(workdir / "export_before.h5", workdir / "export_after.h5")
        for which in times:
            result[f"{which}_export_s"] = min(times[which])
            result[f"{which}_export_s_all"] = times[which]
            (workdir / f"export_{which}.h5").unlink()
        log.info("export %s: %s", name, result)
        return result
    finally:
        me.get_db().client.drop_database(database)
        me.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="16,20000", help="comma-separated snapshot sizes for the writer runs")
    parser.add_argument("--sweep-frames", type=int, default=5000, help="frames for the filter and chunk sweeps")
    parser.add_argument("--chunk-sizes", default="16,64,128,256,1024,4096", help="KiB, for the chunk sweep")
    parser.add_argument("--embedded-frames", type=int, default=16, help="end-to-end export from the embedded store")
    parser.add_argument("--server-frames", type=int, default=20000)
    parser.add_argument("--uri", default=None, help="MongoDB-wire server for the end-to-end export")
    parser.add_argument("--server-name", default="FerretDB v1.24.2 (SQLite)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/snapshot.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    baseline = baseline_module(args.baseline_rev)
    load_before = os.getloadavg()[0]
    payload: dict = {
        "meta": {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "baseline_rev": args.baseline_rev,
            "chunk_bytes": export.CHUNK_BYTES,
            "gzip_level": export.GZIP_LEVEL,
            "libver": list(export.LIBVER),
            "repeat": args.repeat,
            "note": args.note,
        },
        "environment": environment(args.uri) | {"os": platform.platform()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        payload["writer"] = [bench_writer(int(n), baseline, workdir, args.repeat) for n in args.frames.split(",")]
        payload["filters"] = bench_filters(args.sweep_frames, workdir, args.repeat)
        sizes = [int(k) * 1024 for k in args.chunk_sizes.split(",")]
        payload["chunks"] = {
            "frames": args.sweep_frames,
            "runs": bench_chunks(args.sweep_frames, workdir, args.repeat, sizes),
        }
        payload["export"] = []
        if args.embedded_frames:
            payload["export"].append(
                bench_export("embedded (mongomock-ng)", None, args.embedded_frames, baseline, workdir, args.repeat)
            )
        if args.uri:
            payload["export"].append(
                bench_export(args.server_name, args.uri, args.server_frames, baseline, workdir, args.repeat)
            )
    payload["meta"]["load_average_1m_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
