"""Labels per second of each labeller kind on the same frames, and a 10-generation xTB run.

Part 1 labels the same molecules and periodic cells with every kind through the batch API
(``label_frames``: one worker process per frame, as the label stage does) and, for the
kinds that allow it, in this process (``single_point(isolate=False)``: the single point
alone, without the worker's start-up):

- ``pyscf``: the default DFTSettings for molecules (PBE/def2-SVP); for cells a setting a
  CPU can afford (GTH-SZV at Γ, ``--pyscf-cell-basis``/``--pyscf-cell-kpts``): the default
  periodic setting does not finish a 2-atom cell within 900 s on two cores;
- ``xtb``: GFN2-xTB and GFN1-xTB (tblite);
- ``ase``: EMT (ASE's effective-medium potential; an in-process calculator).

Part 2 runs ``--generations`` generations of ``flows/demo_xtb.yaml`` (train → explore →
select → label → report, in this process, embedded store) and splits each one's wall time
by stage, with the model's error on the new labels.

    python benchmarks/bench_labellers.py --out benchmarks/results/labellers

writes ``labellers.json`` and ``labellers.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_XTB = REPO / "flows" / "demo_xtb.yaml"

log = logging.getLogger("bench_labellers")


def frames():
    """Molecules and cells every kind can label (EMT knows H, C, N, O, Al among others)."""
    from ase.build import bulk, molecule

    molecules = []
    for index, name in enumerate(("H2O", "NH3", "CH4", "C2H4")):
        atoms = molecule(name)
        atoms.info.clear()
        atoms.rattle(0.03, seed=index)
        molecules.append(atoms)
    cells = []
    for index, repeat in enumerate(((1, 1, 1), (2, 1, 1))):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=10 + index)
        cells.append(atoms)
    return {"molecules": molecules, "cells": cells}


def kinds(args):
    from dft import ASESettings, DFTSettings, XTBSettings

    cell_kpts = tuple(int(k) for k in args.pyscf_cell_kpts.split(","))
    return {
        "pyscf": {
            "molecules": DFTSettings(device="cpu", threads=args.threads, time_limit=args.pyscf_time_limit),
            "cells": DFTSettings(
                device="cpu",
                threads=args.threads,
                time_limit=args.pyscf_time_limit,
                pbc_basis=args.pyscf_cell_basis,
                kpts=cell_kpts,
            ),
        },
        "xtb GFN2-xTB": XTBSettings(method="GFN2-xTB", threads=args.threads, time_limit=300),
        "xtb GFN1-xTB": XTBSettings(method="GFN1-xTB", threads=args.threads, time_limit=300),
        "ase EMT": ASESettings(calculator="ase.calculators.emt:EMT", theory="EMT", time_limit=300),
    }


def measure(name, settings, group, atoms_list, in_process: bool) -> dict:
    from dft import label_frames, single_point

    started = time.perf_counter()
    outcomes = dict(label_frames(atoms_list, settings, workers=1, progress=False))
    wall = time.perf_counter() - started
    labelled = sum(1 for o in outcomes.values() if o.ok)
    failures = [f"{o.kind}: {o.reason}" for o in outcomes.values() if not o.ok]
    row = {
        "kind": name,
        "frames": group,
        "n_frames": len(atoms_list),
        "n_atoms": [len(a) for a in atoms_list],
        "labelled": labelled,
        "failures": failures,
        "theory_key": settings.theory_key(),
        "batch_wall_s": wall,
        "batch_labels_per_s": labelled / wall if wall else None,
        "compute_s_per_frame": [o.info.get("wall_time_s") for o in outcomes.values() if o.ok],
    }
    if in_process:
        started = time.perf_counter()
        done = sum(1 for atoms in atoms_list if single_point(atoms, settings, isolate=False).ok)
        elapsed = time.perf_counter() - started
        row["in_process_wall_s"] = elapsed
        row["in_process_labels_per_s"] = done / elapsed if elapsed else None
    log.info("%s on %s: %d/%d labelled in %.2f s", name, group, labelled, len(atoms_list), wall)
    return row


def labeller_rows(args) -> list[dict]:
    rows = []
    groups = frames()
    for name, settings in kinds(args).items():
        for group, atoms_list in groups.items():
            chosen = settings[group] if isinstance(settings, dict) else settings
            # PySCF in process is the same SCF as in the worker and costs minutes; measured once.
            rows.append(measure(name, chosen, group, atoms_list, in_process=not name.startswith("pyscf")))
    return rows


def generation_rows(generations: int) -> list[dict]:
    from flows.config import load_config
    from flows.stages import run_generation
    from pipeline.store import connect

    workdir = Path(tempfile.mkdtemp(prefix="selfplay-bench-xtb-"))
    config = load_config(DEMO_XTB, workdir=workdir, mongodb_uri=None)
    connect(None, database=f"bench_labellers_{int(time.time())}")
    rows = []
    for _ in range(generations):
        started = time.perf_counter()
        record = run_generation(config)
        wall = time.perf_counter() - started
        model = (record.metrics or {}).get("model") or {}
        rows.append(
            {
                "generation": record.number,
                "wall_s": wall,
                "stage_s": {stage: float(state.get("seconds") or 0.0) for stage, state in record.stages.items()},
                "selected": (record.counts or {}).get("selected"),
                "labelled": (record.counts or {}).get("labelled"),
                "dft_failed": (record.counts or {}).get("dft_failed"),
                "force_mae": model.get("force_mae"),
                "energy_mae_per_atom": model.get("energy_mae_per_atom"),
            }
        )
        log.info("generation %d: %.1f s", record.number, wall)
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(load_start: tuple[float, ...]) -> dict:
    """The machine a run measured on, with the load average when it started."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_start": [round(x, 2) for x in load_start],
    }


def versions(packages: tuple[str, ...] = ("tblite", "pyscf", "ase", "numpy", "torch")) -> dict:
    """Installed versions of ``packages`` (None for those missing)."""
    from importlib import metadata

    out = {}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Labellers: labels per second on the same frames (CPU)",
        "",
        f"Machine: {result['hardware']['cpu']}, {result['hardware']['cores']} cores; "
        f"load average at the start {result['hardware']['load_average_start']}, at the end "
        f"{result['hardware']['load_average_end']} (other work ran beside it). Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
        + f". Threads per frame: {result['threads']}.",
        "",
        "Batch: `label_frames` with one worker (what the label stage does: a fresh process per frame for pyscf, "
        "one reused worker process for xtb; EMT in a fresh process per frame); in process: "
        "`single_point(isolate=False)`, the single point alone.",
        "",
        "| kind | frames | atoms | labelled | batch wall (s) | labels/s (batch) | labels/s (in process) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["labellers"]:
        in_process = row.get("in_process_labels_per_s")
        lines.append(
            f"| {row['kind']} | {row['frames']} | {','.join(map(str, row['n_atoms']))} | "
            f"{row['labelled']}/{row['n_frames']} | {row['batch_wall_s']:.2f} | "
            f"{row['batch_labels_per_s']:.3g} | {'' if in_process is None else f'{in_process:.3g}'} |"
        )
    failures = [(row["kind"], row["frames"], f) for row in result["labellers"] for f in row["failures"]]
    if failures:
        lines += ["", "Failures:"] + [f"- {kind} {group}: {failure[:200]}" for kind, group, failure in failures]
    lines += [
        "",
        f"PySCF cells: {result['pyscf_cells']}.",
        "",
        f"## {len(result['generations'])} generations of `flows/demo_xtb.yaml` (in process, embedded store)",
        "",
        "| gen | wall (s) | train | explore | select | label | report | labelled | failed | force MAE (eV/Å) | energy MAE (meV/atom) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["generations"]:
        s = row["stage_s"]
        mae = "" if row["force_mae"] is None else f"{row['force_mae']:.3f}"
        emae = "" if row["energy_mae_per_atom"] is None else f"{row['energy_mae_per_atom'] * 1000:.0f}"
        lines.append(
            f"| {row['generation']} | {row['wall_s']:.1f} | "
            + " | ".join(f"{s.get(k, 0):.1f}" for k in ("train", "explore", "select", "label", "report"))
            + f" | {row['labelled']} | {row['dft_failed']} | {mae} | {emae} |"
        )
    if result["generations"]:
        totals = {
            k: sum(r["stage_s"].get(k, 0.0) for r in result["generations"])
            for k in ("train", "explore", "select", "label", "report")
        }
        wall = sum(r["wall_s"] for r in result["generations"])
        lines.append(f"| total | {wall:.1f} | " + " | ".join(f"{v:.1f}" for v in totals.values()) + " | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="threads per frame (1: steady on a shared machine)")
    parser.add_argument("--pyscf-time-limit", type=float, default=120.0, help="seconds per PySCF frame")
    parser.add_argument("--pyscf-cell-basis", default="gth-szv")
    parser.add_argument("--pyscf-cell-kpts", default="1,1,1")
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--skip-labellers", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "labellers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    load_start = os.getloadavg()
    result = {
        "hardware": hardware(load_start),
        "versions": versions(),
        "threads": args.threads,
        "pyscf_cells": f"pbc_basis={args.pyscf_cell_basis}, kpts={args.pyscf_cell_kpts}, gth-pbe, PBE",
        "labellers": [] if args.skip_labellers else labeller_rows(args),
        "generations": generation_rows(args.generations) if args.generations else [],
    }
    result["hardware"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    args.out.with_suffix(".md").write_text(markdown(result))
    log.info("wrote %s.json and %s.md", args.out, args.out)


if __name__ == "__main__":
    main()
