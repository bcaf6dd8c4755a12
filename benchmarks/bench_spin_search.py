"""Extra SCF cost of the electronic-state search (spin_policy='auto') per frame.

For each frame, three labels at the same level of theory: one SCF at the lowest spin
(``spin_policy='lowest'``: RKS for an even electron count, UKS for an odd one, the rescue
ladder as usual; what a closed-shell default pays), the search that converges every
candidate state (``spin_abandon_ev=None``, search version 1) and the default search, which
abandons candidates settled more than ``spin_abandon_ev`` above the best state. Reported
per frame: wall time, SCF cycles over every state tried, how many states were tried (and
abandoned), which won, how far below the single-SCF label the winner is (eV), and whether
abandoning changed the label. Frames:

- ``demo``: the random H/C/N/O clusters of ``selfplay demo`` (its sampler settings and
  seed, PBE/6-31G as in flows/demo.yaml): what self-play sends to DFT;
- ``molecules``: closed-shell molecules near equilibrium (the cheap path);
- ``cluster``: a metal cluster of ``--cluster-atoms`` atoms (Li by default). On two shared
  CPU cores even Li20 took more than 25 minutes and Li30 did not finish its first SCF in 15:
  pass ``--no-cluster`` there, and ``--device gpu --cluster-element Cu --cluster-atoms 40``
  on a GPU node.

    python benchmarks/bench_spin_search.py --no-cluster     # CPU, writes benchmarks/results/spin_search_cpu.json
    python benchmarks/bench_spin_search.py --device gpu --cluster-element Cu --cluster-atoms 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.cluster import Icosahedron

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_dft import hardware  # noqa: E402
from dft import DFTResult, DFTSettings, single_point  # noqa: E402
from dft.backend import code_versions  # noqa: E402


def demo_frames(count: int) -> list[Atoms]:
    """The cold-start clusters of ``selfplay demo`` (flows/demo.yaml's random sampler)."""
    import yaml

    from samplers.random_structures import RandomStructureConfig, random_structures

    demo = yaml.safe_load((Path(__file__).resolve().parent.parent / "flows" / "demo.yaml").read_text())
    config = RandomStructureConfig(elements=demo["elements"], **demo["explore"]["random"]["params"])
    return random_structures(config, seed=demo["seed"], count=count)


def metal_cluster(element: str, n_atoms: int, seed: int = 0) -> Atoms:
    """An icosahedral cluster trimmed to ``n_atoms`` and rattled (a self-play-like frame)."""
    shells = 1
    while len(Icosahedron(element, shells, latticeconstant=_lattice(element))) < n_atoms:
        shells += 1
    cluster = Icosahedron(element, shells, latticeconstant=_lattice(element))
    order = np.argsort(np.linalg.norm(cluster.positions - cluster.positions.mean(0), axis=1))
    cluster = cluster[order[:n_atoms]]
    cluster.rattle(0.05, seed=seed)
    cluster.center()
    return cluster


def _lattice(element: str) -> float:
    from ase.data import atomic_numbers, reference_states

    state = reference_states[atomic_numbers[element]] or {}
    a = state.get("a", 4.0)
    # Icosahedron takes an fcc lattice constant; bcc metals get the fcc one of equal density.
    return a * 2 ** (1 / 3) if state.get("symmetry") == "bcc" else a


def label(atoms: Atoms, settings: DFTSettings) -> dict:
    start = time.perf_counter()
    outcome = single_point(atoms, settings, isolate=False)
    wall = time.perf_counter() - start
    row = {"wall_s": round(wall, 2), "ok": outcome.ok}
    if not isinstance(outcome, DFTResult):
        row["reason"] = outcome.reason
        return row
    state = outcome.info["electronic_state"]
    # every SCF run for the frame: the ladder's rungs and each state the search tried
    cycles = sum(a.get("cycles") or 0 for a in outcome.info["attempts"])
    row.update(
        energy_ev=outcome.energy,
        scf_cycles=cycles,
        states_tried=max(1, len(state["candidates"])),
        states_abandoned=sum(bool(c.get("abandoned")) for c in state["candidates"]),
        winner=state["winner"],
        multiplicity=state["multiplicity"],
        decision=state["search"],
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-frames", type=int, default=8)
    parser.add_argument("--cluster-element", default="Li")
    parser.add_argument("--cluster-atoms", type=int, default=20)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-demo", action="store_true", help="skip the demo clusters")
    parser.add_argument("--no-molecules", action="store_true", help="skip the closed-shell molecules")
    parser.add_argument("--no-cluster", action="store_true", help="skip the metal cluster")
    args = parser.parse_args(argv)

    base = DFTSettings(basis="6-31G", functional="PBE", device=args.device, time_limit=None, threads=args.threads)
    frames = []
    if not args.no_demo:
        frames += [
            ("demo", f"demo cluster {i} ({a.get_chemical_formula()})", a)
            for i, a in enumerate(demo_frames(args.demo_frames))
        ]
    if not args.no_molecules:
        frames += [("molecules", name, molecule(name)) for name in ("H2O", "CH4", "NH3", "CH3OH")]
    if not args.no_cluster:
        cluster = metal_cluster(args.cluster_element, args.cluster_atoms)
        frames.append(("cluster", f"{args.cluster_element}{args.cluster_atoms} cluster", cluster))

    out = args.out or Path(__file__).resolve().parent / "results" / f"spin_search_{args.device}.json"
    rows = []
    for group, name, atoms in frames:
        single = label(atoms, base.model_copy(update={"spin_policy": "lowest"}))
        converged_all = label(atoms, base.model_copy(update={"spin_abandon_ev": None}))
        search = label(atoms, base)
        row = {
            "group": group,
            "frame": name,
            "atoms": len(atoms),
            "single_scf": single,
            "search_without_abandon": converged_all,
            "search": search,
        }
        if single.get("ok") and search.get("ok"):
            row["wall_ratio"] = round(search["wall_s"] / max(single["wall_s"], 1e-9), 2)
            row["lowered_by_ev"] = round(single["energy_ev"] - search["energy_ev"], 4)
        if single.get("ok") and converged_all.get("ok"):
            row["wall_ratio_without_abandon"] = round(converged_all["wall_s"] / max(single["wall_s"], 1e-9), 2)
        if search.get("ok") and converged_all.get("ok"):
            row["abandon_changed_label_ev"] = round(search["energy_ev"] - converged_all["energy_ev"], 6)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_report(out, rows, args)  # after every frame: a long run that is stopped keeps its rows


def _median(rows: list[dict], key: str):
    values = [r[key] for r in rows if key in r]
    return float(np.median(values)) if values else None


def _largest(rows: list[dict], key: str):
    values = [abs(r[key]) for r in rows if key in r]
    return float(np.max(values)) if values else None


def write_report(out: Path, rows: list[dict], args) -> None:
    summary = {}
    for group in ("demo", "molecules", "cluster"):
        done = [r for r in rows if r["group"] == group and "wall_ratio" in r]
        if done:
            summary[group] = {
                "frames": len(done),
                "wall_ratio_median": float(np.median([r["wall_ratio"] for r in done])),
                "wall_ratio_max": float(np.max([r["wall_ratio"] for r in done])),
                "wall_ratio_without_abandon_median": _median(done, "wall_ratio_without_abandon"),
                "states_abandoned_total": int(sum(r["search"].get("states_abandoned", 0) for r in done)),
                "largest_label_change_by_abandon_ev": _largest(done, "abandon_changed_label_ev"),
                "states_tried_median": float(np.median([r["search"]["states_tried"] for r in done])),
                "frames_lowered_by_more_than_10_mev": int(sum(r["lowered_by_ev"] > 0.01 for r in done)),
                "largest_lowering_ev": float(np.max([r["lowered_by_ev"] for r in done])),
            }
    report = {
        "benchmark": "electronic-state search (spin_policy='auto') against one SCF at the lowest spin",
        "level_of_theory": "PBE/6-31G, RI-J, grid level 3 (the demo's level)",
        "hardware": hardware(),
        "versions": code_versions(args.device),
        "device": args.device,
        "summary": summary,
        "rows": rows,
        "frames_planned": {
            "demo": args.demo_frames,
            "molecules": 4,
            "cluster": f"{args.cluster_element}{args.cluster_atoms}",
        },
    }
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    """The table of the results file: one row per frame, the three labels side by side."""
    hw = report["hardware"]
    lines = [
        "# Electronic-state search: extra SCF cost per frame",
        "",
        f"`benchmarks/bench_spin_search.py`, {report['level_of_theory']}, device {report['device']}, on "
        f"{hw.get('cpu', '?')} ({hw.get('logical_cores', '?')} cores, load average at start {hw.get('load_average_at_start')}). `single` = one SCF at the lowest spin "
        "(`spin_policy='lowest'`); `search v1` = the search converging every candidate "
        "(`spin_abandon_ev=None`); `search` = the default, which abandons candidates settled more than 1 eV "
        "above the best state. Times are wall seconds of the whole label (SCF, analysis, forces).",
        "",
        "| frame | atoms | single (s) | search v1 (s) | search (s) | search/single | v1/single | states (abandoned) "
        "| SCF cycles v1 → search | winner | lowered by (eV) | label change by abandoning (eV) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        single, v1, search = row["single_scf"], row["search_without_abandon"], row["search"]
        lines.append(
            f"| {row['frame']} | {row['atoms']} | {single['wall_s']} | {v1['wall_s']} | {search['wall_s']} "
            f"| {row.get('wall_ratio', '-')} | {row.get('wall_ratio_without_abandon', '-')} "
            f"| {search.get('states_tried', '-')} ({search.get('states_abandoned', '-')}) "
            f"| {v1.get('scf_cycles', '-')} → {search.get('scf_cycles', '-')} | {search.get('winner', search.get('reason'))} "
            f"| {row.get('lowered_by_ev', '-')} | {row.get('abandon_changed_label_ev', '-')} |"
        )
    lines += ["", "Summary: `" + json.dumps(report["summary"]) + "`", "", "Versions: " + json.dumps(report["versions"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
