"""Exploration throughput: frames scored per second by the batched melt/quench driver.

N concurrent trajectories (default 100) of random periodic multi-element structures with
a given number of atoms are advanced by :class:`samplers.BatchedLangevin`, one batched
call of a K-member ensemble (default 4, the production ``ModelConfig``) per MD step; every
structure in the batch gets forces and its per-atom force deviation at every step, so a
step scores N frames. Reported per size: wall time per step, frames scored per second,
atom-steps per second, and with ``--bare`` the throughput of a bare ``evaluate`` of the
same batch (no integrator, no geometry checks).

    python benchmarks/bench_explore.py --sizes 64 128 256 --trajectories 100 --steps 2 --bare \
        --out benchmarks/results/explore_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ELEMENTS = ["H", "C", "N", "O", "Al", "Si", "Ti", "Fe", "Ni", "Cu", "Zr", "Pt"]


def hardware(device: str) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def versions() -> dict:
    import ase
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ase": ase.__version__,
    }


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_size(
    ensemble, n_atoms: int, n_trajectories: int, steps: int, seed: int, device: str, max_edges: int, bare: bool
) -> dict:
    from samplers import BatchedLangevin, MeltQuenchConfig, RandomStructureConfig, random_structures

    t0 = time.perf_counter()
    structures = random_structures(
        RandomStructureConfig(elements=ELEMENTS, min_atoms=n_atoms, max_atoms=n_atoms, max_species=4),
        seed=seed,
        count=n_trajectories,
    )
    build_s = time.perf_counter() - t0
    # warm-up (allocator, kernels) on a slice, then optionally a bare batched evaluate
    ensemble.evaluate(structures[: min(4, len(structures))])
    evaluate_s = None
    if bare:
        synchronize(device)
        t0 = time.perf_counter()
        ensemble.evaluate(structures, stress=False, max_edges=max_edges)
        synchronize(device)
        evaluate_s = time.perf_counter() - t0

    config = MeltQuenchConfig(
        t_start=1500,
        t_high=1500,
        t_end=1500,
        heat_steps=0,
        hold_steps=steps,
        cool_steps=0,
        timestep_fs=1.0,
        frame_interval=max(1, steps),
        hi=None,
        min_covalent_ratio=0.3,
    )
    driver = BatchedLangevin(ensemble, structures, config, seed=seed, evaluate_kwargs={"max_edges": max_edges})
    t0 = time.perf_counter()
    trajectories = driver.run()
    synchronize(device)
    md_s = time.perf_counter() - t0
    stops = {}
    for trajectory in trajectories:
        stops[trajectory.stop.reason] = stops.get(trajectory.stop.reason, 0) + 1
    edges = sum(len(g.src) for g in ensemble.graphs(structures[:10])) / min(10, len(structures))
    return {
        "atoms_per_structure": n_atoms,
        "trajectories": n_trajectories,
        "md_steps": steps,
        "model_calls": driver.model_calls,
        "frames_scored": driver.frames_scored,
        "md_wall_s": md_s,
        "seconds_per_step": md_s / driver.model_calls,
        "frames_scored_per_s": driver.frames_scored / md_s,
        "atom_steps_per_s": driver.frames_scored * n_atoms / md_s,
        "max_edges_per_model_call": max_edges,
        "bare_evaluate_s": evaluate_s,
        "bare_evaluate_frames_per_s": None if evaluate_s is None else n_trajectories / evaluate_s,
        "mean_edges_per_structure": edges,
        "structure_build_s": build_s,
        "stops": stops,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--trajectories", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-edges", type=int, default=100_000, help="edges per model call (bounds memory; a batch may need several)"
    )
    parser.add_argument("--bare", action="store_true", help="also time a bare evaluate() of the batch")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from potential.config import ModelConfig
    from potential.model import build_ensemble

    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = ModelConfig()
    ensemble = build_ensemble(model_config, args.members, seed=args.seed, device=args.device)
    results = {
        "benchmark": "explore",
        "description": "batched Langevin MD, one ensemble call per step for all trajectories; "
        "frames scored = structures evaluated (forces + per-atom deviation)",
        "hardware": hardware(args.device),
        "versions": versions(),
        "model": {"members": args.members, **model_config.model_dump()},
        "results": [],
    }
    for n_atoms in args.sizes:
        row = bench_size(
            ensemble, n_atoms, args.trajectories, args.steps, args.seed, args.device, args.max_edges, args.bare
        )
        results["results"].append(row)
        bare = (
            ""
            if row["bare_evaluate_s"] is None
            else f"; bare evaluate {row['bare_evaluate_frames_per_s']:.1f} frames/s"
        )
        print(
            f"{n_atoms:4d} atoms x {args.trajectories} trajectories: {row['seconds_per_step']:.2f} s/step, "
            f"{row['frames_scored_per_s']:.2f} frames/s ({row['atom_steps_per_s']:.0f} atom-steps/s){bare}",
            flush=True,
        )
        if args.out is not None:  # after every size, so that a long run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
