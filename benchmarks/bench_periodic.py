"""Periodic PySCF settings a CPU can afford for small cells, measured against a reference.

Three rattled cells (0.05 Å, fixed seeds): Si (diamond primitive, 2 atoms), MgO (rocksalt
primitive, 2 atoms) and Al (fcc conventional, 4 atoms; a metal, always smeared). Each is
labelled through the project's own code (``single_point`` with a ``DFTSettings``, so in a
worker process killed at ``time_limit``) at a list of periodic settings: basis
(GTH-SZV / GTH-DZVP-MOLOPT-SR), k-mesh (Γ, 2×2×2, the default ``kpoint_density``), kinetic
energy cutoff of the FFT grid, integral screening precision, and LDA against PBE. A row
records the wall time of the label (SCF, forces and stress, without the worker's start-up),
SCF cycles, k-mesh and FFT mesh, and the error of energy/atom and forces against

- the reference: the most accurate setting of the cell that finished (the first finished
  one of ``REFERENCE_ORDER``), and
- the cutoff reference: the same basis, k-mesh, functional and precision at the highest
  cutoff that finished (the error the cutoff alone makes).

All rows but one use ``spin_policy="lowest"`` (one SCF: the level-of-theory question); the
row marked ``spin auto`` repeats a cheap Si setting with the default state search to show
what the search costs on top.

A last part (``--integrals``) calls PySCF directly on the Si cell: FFTDF (what the project
uses), GDF (Gaussian density fitting) and the multigrid XC/Coulomb integration, to see what
each costs and whether forces are available with it (the label needs them).

    OMP_NUM_THREADS=1 python benchmarks/bench_periodic.py --out benchmarks/results/periodic_cpu

writes ``periodic_cpu.json`` and ``periodic_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from bench_labellers import hardware, versions  # run as a script: benchmarks/ is on sys.path

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench_periodic")

#: What every row shares; the rows change the periodic fields only.
COMMON: dict[str, Any] = {"device": "cpu", "threads": 1, "spin_policy": "lowest"}
SZV_GAMMA: dict[str, Any] = {"pbc_basis": "gth-szv", "kpts": (1, 1, 1), "pbc_precision": 1e-6}
DZVP = "gth-dzvp-molopt-sr"
#: Rows per cell: (name, DFTSettings fields on top of COMMON, time limit key).
ROWS: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "Si2": [
        ("default", {}, "short"),
        ("szv Γ 40 Ha 1e-8", {**SZV_GAMMA, "pbc_precision": 1e-8, "pbc_ke_cutoff": 40}, "long"),
        ("szv Γ 40 Ha", {**SZV_GAMMA, "pbc_ke_cutoff": 40}, "long"),
        ("szv Γ 80 Ha", {**SZV_GAMMA, "pbc_ke_cutoff": 80}, "long"),
        (
            "szv Γ 40 Ha LDA",
            {**SZV_GAMMA, "pbc_ke_cutoff": 40, "functional": "lda,vwn", "pbc_pseudo": "gth-pade"},
            "long",
        ),
        ("szv 2×2×2 40 Ha", {**SZV_GAMMA, "kpts": (2, 2, 2), "pbc_ke_cutoff": 40}, "long"),
        ("szv 3×3×3 40 Ha", {**SZV_GAMMA, "kpts": (3, 3, 3), "pbc_ke_cutoff": 40}, "long"),
        (
            "szv 2×2×2 40 Ha, spin auto",
            {**SZV_GAMMA, "kpts": (2, 2, 2), "pbc_ke_cutoff": 40, "spin_policy": "auto"},
            "long",
        ),
        ("dzvp Γ 60 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "pbc_ke_cutoff": 60}, "long"),
        ("dzvp Γ 120 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "pbc_ke_cutoff": 120}, "long"),
        ("dzvp 2×2×2 60 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "kpts": (2, 2, 2), "pbc_ke_cutoff": 60}, "ref"),
    ],
    "MgO": [
        ("default", {}, "short"),
        ("szv Γ 80 Ha", {**SZV_GAMMA, "pbc_ke_cutoff": 80}, "long"),
        ("dzvp Γ 80 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "pbc_ke_cutoff": 80}, "long"),
        ("dzvp Γ 120 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "pbc_ke_cutoff": 120}, "ref"),
    ],
    "Al4": [
        ("default", {}, "short"),
        ("szv Γ 40 Ha", {**SZV_GAMMA, "pbc_ke_cutoff": 40}, "long"),
        ("szv 2×2×2 40 Ha", {**SZV_GAMMA, "kpts": (2, 2, 2), "pbc_ke_cutoff": 40}, "long"),
        ("dzvp Γ 60 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "pbc_ke_cutoff": 60}, "long"),
        ("dzvp 2×2×2 60 Ha", {**SZV_GAMMA, "pbc_basis": DZVP, "kpts": (2, 2, 2), "pbc_ke_cutoff": 60}, "ref"),
    ],
}
#: Most accurate first: the reference of a cell is the first of these that finished.
REFERENCE_ORDER = [
    "default",
    "dzvp 2×2×2 60 Ha",
    "dzvp Γ 120 Ha",
    "dzvp Γ 80 Ha",
    "dzvp Γ 60 Ha",
    "szv 3×3×3 40 Ha",
    "szv 2×2×2 40 Ha",
    "szv Γ 80 Ha",
]


def cells() -> dict:
    from ase.build import bulk

    out = {
        "Si2": bulk("Si", "diamond", a=5.43),
        "MgO": bulk("MgO", "rocksalt", a=4.21),
        "Al4": bulk("Al", "fcc", a=4.05, cubic=True),
    }
    for seed, atoms in enumerate(out.values()):
        atoms.rattle(0.05, seed=100 + seed)
    return out


def settings_for(cell: str, fields: dict[str, Any], time_limit: float):
    from dft import DFTSettings

    extra = {"always_smear": True} if cell == "Al4" else {}  # a metal: smeared from the first SCF
    return DFTSettings(**{**COMMON, **extra, **fields, "time_limit": time_limit})


def run_row(cell: str, name: str, atoms, settings) -> dict:
    from dft import single_point

    started = time.perf_counter()
    outcome = single_point(atoms, settings)
    elapsed = time.perf_counter() - started
    info = outcome.info or {}
    row: dict[str, Any] = {
        "cell": cell,
        "setting": name,
        "natoms": len(atoms),
        "basis": settings.pbc_basis,
        "functional": settings.functional,
        "kpts": list(settings.kpts) if settings.kpts else None,
        "kpoint_density": None if settings.kpts else settings.kpoint_density,
        "ke_cutoff": settings.pbc_ke_cutoff,
        "precision": settings.pbc_precision,
        "spin_policy": settings.spin_policy,
        "time_limit_s": settings.time_limit,
        "theory_key": settings.theory_key(),
        "ok": outcome.ok,
        "outer_wall_s": elapsed,
    }
    if outcome.ok:
        attempts = info.get("attempts") or []
        row.update(
            wall_s=info.get("wall_time_s"),
            scf_s=info.get("scf_time_s"),
            forces_stress_s=info.get("gradient_time_s"),
            scf_cycles=info.get("scf_cycles"),
            scf_runs=len(attempts),
            cycles_all_runs=sum(int(a.get("cycles") or 0) for a in attempts),
            kpts_mesh=info.get("kpts_mesh"),
            fft_mesh=info.get("fft_mesh"),
            energy_ev=float(outcome.energy),
            energy_per_atom_ev=float(outcome.energy) / len(atoms),
            forces=np.asarray(outcome.forces).tolist(),
            stress=None if outcome.stress is None else np.asarray(outcome.stress).tolist(),
            stress_note=info.get("stress_note"),
            gap_ev=info.get("homo_lumo_gap_ev"),
        )
    else:
        row.update(failure_kind=outcome.kind, failure=outcome.reason[:300])
    log.info("%s %s: %s in %.1f s", cell, name, "ok" if outcome.ok else f"{outcome.kind}", row.get("wall_s") or elapsed)
    return row


def compare(rows: list[dict]) -> dict[str, Optional[str]]:
    """Errors against the cell's reference and the cutoff reference, in place; the references."""
    references: dict[str, Optional[str]] = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        mine = [r for r in rows if r["cell"] == cell]
        finished = {r["setting"]: r for r in mine if r["ok"]}
        ref_name = next((n for n in REFERENCE_ORDER if n in finished), None)
        references[cell] = ref_name
        for row in mine:
            if not row["ok"]:
                continue
            if ref_name is not None:
                row["reference"] = ref_name
                row.update(_errors(row, finished[ref_name], ""))
            same = [
                r
                for r in finished.values()
                if r["basis"] == row["basis"]
                and r["kpts_mesh"] == row["kpts_mesh"]
                and r["functional"] == row["functional"]
                and r["precision"] == row["precision"]
                and r["ke_cutoff"] is not None
            ]
            if row["ke_cutoff"] is not None and len(same) > 1:
                top = max(same, key=lambda r: r["ke_cutoff"])
                row["cutoff_reference_ke"] = top["ke_cutoff"]
                row.update(_errors(row, top, "cutoff_"))
    return references


def _errors(row: dict, ref: dict, prefix: str) -> dict:
    forces = np.asarray(row["forces"]) - np.asarray(ref["forces"])
    out = {
        f"{prefix}de_per_atom_mev": 1000.0 * (row["energy_per_atom_ev"] - ref["energy_per_atom_ev"]),
        f"{prefix}df_max_ev_a": float(np.abs(forces).max()),
        f"{prefix}df_mae_ev_a": float(np.abs(forces).mean()),
    }
    if row.get("stress") is not None and ref.get("stress") is not None:
        out[f"{prefix}ds_max_gpa"] = (
            float(np.abs(np.asarray(row["stress"]) - np.asarray(ref["stress"])).max()) * 160.21766
        )
    return out


def integrals_probe(atoms) -> list[dict]:
    """PySCF directly on one cell: FFTDF, GDF and multigrid, SCF then forces."""
    from pyscf.pbc import dft as pbcdft
    from pyscf.pbc import gto as pbcgto

    cell = pbcgto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        a=atoms.cell.array,
        unit="Angstrom",
        basis="gth-szv",
        pseudo="gth-pbe",
        ke_cutoff=40,
        precision=1e-6,
        verbose=0,
    )
    rows = []
    reference = None
    for name in ("fftdf", "gdf", "multigrid"):
        mf = pbcdft.KRKS(cell, kpts=np.zeros((1, 3)), xc="pbe")
        if name == "gdf":
            mf = mf.density_fit()
        elif name == "multigrid":
            mf = mf.multigrid_numint()
        mf.conv_tol = 1e-9
        counter = {"n": 0}
        mf.callback = lambda envs, c=counter: c.__setitem__("n", c["n"] + 1)
        started = time.perf_counter()
        energy = float(mf.kernel())
        row: dict[str, Any] = {
            "integrals": name,
            "scf_s": time.perf_counter() - started,
            "scf_cycles": counter["n"],
            "converged": bool(mf.converged),
            "energy_ha": energy,
        }
        if reference is None:
            reference = energy
        row["de_per_atom_mev_vs_fftdf"] = 1000.0 * (energy - reference) * 27.211386 / len(atoms)
        started = time.perf_counter()
        try:
            mf.nuc_grad_method().kernel()
            row["forces"] = "yes"
        except Exception as exc:  # what PySCF says when a combination has no gradient
            row["forces"] = f"no: {type(exc).__name__}: {str(exc)[:120]}"
        row["forces_s"] = time.perf_counter() - started
        log.info("integrals %s: %s", name, row)
        rows.append(row)
    return rows


def _fmt(value, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = [
        "# Periodic cells on a CPU: cost and error of the PySCF settings",
        "",
        f"Machine: {hw['cpu']}, {hw['cores']} cores; load average at the start {hw['load_average_start']}, "
        f"at the end {hw['load_average_end']} (other work ran beside it). Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
        + f". One thread per label (OMP_NUM_THREADS={result['omp_num_threads']}); total {result['total_s']:.0f} s.",
        "",
        "Cells rattled 0.05 Å: Si2 (diamond primitive, a = 5.43 Å), MgO (rocksalt primitive, a = 4.21 Å), "
        "Al4 (fcc conventional, a = 4.05 Å, Fermi smearing 0.1 eV from the first SCF). PBE, GTH-PBE unless "
        "the row says LDA (GTH-Pade). `spin_policy=lowest` (one SCF) unless the row says `spin auto` (the default "
        "state search). Wall: the label in its worker (SCF + forces + stress), without the worker's start-up. "
        "Errors: against the cell's reference (the most accurate setting that finished, marked **ref**) and, in "
        "the cutoff columns, against the same basis/k-mesh at the highest cutoff measured.",
        "",
        "| cell | setting | k-mesh | FFT mesh | wall (s) | SCF (s) | forces+stress (s) | SCF runs | cycles | "
        "ΔE/atom vs ref (meV) | max ΔF vs ref (eV/Å) | max Δσ vs ref (GPa) | ΔE/atom cutoff (meV) | max ΔF cutoff (eV/Å) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    refs = result["references"]
    for row in result["rows"]:
        name = row["setting"] + (" **ref**" if refs.get(row["cell"]) == row["setting"] else "")
        if not row["ok"]:
            kmesh = "×".join(map(str, row["kpts"])) if row["kpts"] else f"density {row['kpoint_density']}"
            lines.append(
                f"| {row['cell']} | {name} | {kmesh} | | {row['failure_kind']} at {row['time_limit_s']:.0f} s "
                "| | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {row['cell']} | {name} | {'×'.join(map(str, row['kpts_mesh']))} | {'×'.join(map(str, row['fft_mesh']))} "
            f"| {_fmt(row['wall_s'])} | {_fmt(row['scf_s'])} | {_fmt(row['forces_stress_s'])} | {row['scf_runs']} "
            f"| {row['cycles_all_runs']} | {_fmt(row.get('de_per_atom_mev'), '.2f')} | {_fmt(row.get('df_max_ev_a'), '.4f')} "
            f"| {_fmt(row.get('ds_max_gpa'), '.2f')} | {_fmt(row.get('cutoff_de_per_atom_mev'), '.3f')} "
            f"| {_fmt(row.get('cutoff_df_max_ev_a'), '.4f')} |"
        )
    failures = [r for r in result["rows"] if not r["ok"]]
    if failures:
        lines += ["", "Not finished:"] + [f"- {r['cell']} {r['setting']}: {r['failure']}" for r in failures]
    if result.get("integrals"):
        lines += [
            "",
            "## Integrals (PySCF directly; Si2, GTH-SZV, Γ, 40 Ha, precision 1e-6)",
            "",
            "| integrals | SCF (s) | cycles | converged | ΔE/atom vs FFTDF (meV) | forces | forces (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in result["integrals"]:
            lines.append(
                f"| {row['integrals']} | {row['scf_s']:.1f} | {row['scf_cycles']} | {row['converged']} "
                f"| {row['de_per_atom_mev_vs_fftdf']:.3f} | {row['forces']} | {row['forces_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-limit", type=float, default=60.0, help="seconds for the default setting's rows")
    parser.add_argument("--long-limit", type=float, default=150.0, help="seconds for the other rows")
    parser.add_argument("--ref-limit", type=float, default=240.0, help="seconds for the reference candidates")
    parser.add_argument("--cells", default="Si2,MgO,Al4", help="comma-separated subset of Si2, MgO, Al4")
    parser.add_argument("--only", default=None, help="comma-separated setting names to run (default: all)")
    parser.add_argument("--no-integrals", action="store_true", help="skip the direct PySCF integrals probe")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "periodic_cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    started = time.perf_counter()
    load_start = os.getloadavg()
    limits = {"short": args.short_limit, "long": args.long_limit, "ref": args.ref_limit}
    only = set(args.only.split(",")) if args.only else None
    frames = cells()
    rows = []
    for cell in args.cells.split(","):
        for name, fields, limit in ROWS[cell]:
            if only is None or name in only:
                rows.append(run_row(cell, name, frames[cell], settings_for(cell, fields, limits[limit])))
    references = compare(rows)
    integrals = [] if args.no_integrals else integrals_probe(frames["Si2"])
    result = {
        "hardware": {**hardware(load_start), "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(("pyscf", "ase", "numpy", "scipy")),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "limits_s": limits,
        "total_s": time.perf_counter() - started,
        "references": references,
        "rows": rows,
        "integrals": integrals,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    args.out.with_suffix(".md").write_text(markdown(result))
    log.info("wrote %s.json and %s.md in %.0f s", args.out, args.out, result["total_s"])


if __name__ == "__main__":
    main()
