"""Wall time of one DFT single point (SCF + forces) against the number of atoms.

Frames are clusters of small closed-shell molecules (H2O, NH3, CH4, CH3OH, HCN, CO2)
placed on a jittered grid, so every size is a mixed H/C/N/O cluster that converges
without the rescue ladder: the benchmark times the ordinary case. The level of theory is
the project default (PBE, def2-SVP, density fitting, grid level 3).

    python benchmarks/bench_dft.py --sizes 10 20 40 --device cpu
    python benchmarks/bench_dft.py --sizes 10 50 100 200 --device both   # on a GPU node

``--device both`` runs GPU4PySCF and PySCF side by side on the same frames and reports the
speedup. Results (with hardware, load and versions) go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dft import DFTResult, DFTSettings, single_point  # noqa: E402
from dft.backend import code_versions, gpu_name, gpu_usable  # noqa: E402

BUILDING_BLOCKS = ("H2O", "NH3", "CH4", "CH3OH", "HCN", "CO2")


def molecular_cluster(n_atoms: int, seed: int = 0, spacing: float = 3.2) -> Atoms:
    """About ``n_atoms`` atoms (never fewer) of small molecules on a jittered cubic grid."""
    rng = np.random.default_rng(seed)
    pieces: list[Atoms] = []
    total = 0
    while total < n_atoms:
        piece = molecule(BUILDING_BLOCKS[int(rng.integers(len(BUILDING_BLOCKS)))])
        pieces.append(piece)
        total += len(piece)
    side = int(np.ceil(len(pieces) ** (1 / 3)))
    cluster = Atoms()
    for index, piece in enumerate(pieces):
        site = np.array(np.unravel_index(index, (side, side, side)), dtype=float) * spacing
        rotated = piece.copy()
        rotated.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COM")
        rotated.translate(site + rng.uniform(-0.2, 0.2, 3) - rotated.get_center_of_mass())
        cluster += rotated
    return cluster


def hardware() -> dict:
    info = {
        "machine": platform.machine(),
        "cpu": platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return info


def time_one(atoms: Atoms, device: str, threads: int | None) -> dict:
    settings = DFTSettings(device=device, time_limit=None, threads=threads)
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    outcome = single_point(atoms, settings, isolate=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # On a shared machine the wall time grows with other people's load; the CPU time of
    # this process (all its threads) does much less, so both are kept.
    row = {
        "device": device,
        "wall_s": round(wall, 2),
        "process_cpu_s": round(cpu, 2),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "ok": outcome.ok,
    }
    if isinstance(outcome, DFTResult):
        info = outcome.info
        row.update(
            scf_s=round(info["scf_time_s"], 2),
            forces_s=round(info["gradient_time_s"], 2),
            scf_cycles=info["scf_cycles"],
            rung=info["rung"],
            energy_ev=outcome.energy,
        )
    else:
        row.update(reason=outcome.reason)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40], help="Target atom counts.")
    parser.add_argument("--device", choices=("cpu", "gpu", "both"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="Result JSON (default: benchmarks/results/dft_<device>.json)."
    )
    args = parser.parse_args(argv)

    devices = ["gpu", "cpu"] if args.device == "both" else [args.device]
    if "gpu" in devices:
        usable, why = gpu_usable()
        if not usable:
            parser.error(f"--device {args.device}: {why}")
    out = args.out or Path(__file__).resolve().parent / "results" / f"dft_{args.device}.json"
    report = {
        "benchmark": "DFT single point (SCF + analytic forces) vs atoms, PBE/def2-SVP, RI-J, grid level 3",
        "frames": f"clusters of {', '.join(BUILDING_BLOCKS)} on a 3.2 Å jittered grid, seed {args.seed}",
        "hardware": hardware(),
        "gpu": gpu_name() if "gpu" in devices else None,
        "versions": code_versions("gpu" if "gpu" in devices else "cpu"),
        "threads": args.threads,
        "rows": [],
    }
    for size in args.sizes:
        atoms = molecular_cluster(size, seed=args.seed)
        entry = {"n_atoms": len(atoms), "formula": atoms.get_chemical_formula()}
        for device in devices:
            row = time_one(atoms, device, args.threads)
            entry[device] = row
            print(
                f"{len(atoms):4d} atoms {device}: {row['wall_s']:8.1f} s wall, {row['process_cpu_s']:8.1f} s CPU",
                flush=True,
            )
        if "gpu" in entry and "cpu" in entry and entry["gpu"]["ok"] and entry["cpu"]["ok"]:
            entry["speedup_gpu_over_cpu"] = round(entry["cpu"]["wall_s"] / entry["gpu"]["wall_s"], 2)
            entry["energy_difference_ev"] = entry["gpu"]["energy_ev"] - entry["cpu"]["energy_ev"]
        report["rows"].append(entry)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))  # after every size: partial results survive
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
