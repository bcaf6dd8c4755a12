"""Benchmark of the equivariant ensemble potential, side by side with MACE.

Measures, on the same machine in one run:

* MD throughput (atom-steps/s, energy + forces through each package's ASE calculator,
  neighbour list included) for fcc Cu/Ni cells of 64 .. 4096 atoms, for one member,
  a 4-member ensemble, and a MACE model of similar size;
* with ``--batched N``, one batched exploration step: energy + forces of N 64-atom cells per
  model call (ours: ``EnsemblePotential.evaluate``; MACE: its ``torch_geometric`` batch, eager
  and with ``--mace-compile`` compiled), the ratio taken against MACE's fastest mode;
* the cost of the 4-member ensemble relative to one member;
* peak memory (resident set size of a fresh worker process per case; on a GPU also
  torch's peak allocated memory);
* force and energy error after equal training time on the same EMT data.

Every case runs in its own subprocess, so peak memory is per case. MACE is optional:
it runs when ``mace`` imports (install it in a separate venv, e.g. ``.venv-bench``
with a .pth pointing at the main venv, and run this script with that Python).

    PYTHONPATH=. .venv-bench/bin/python benchmarks/bench_potential.py --out benchmarks/results/potential_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {64: (2, 2, 4), 256: (4, 4, 4), 1024: (8, 8, 4), 4096: (8, 8, 16)}
MACE_HIDDEN = "32x0e+32x1o"  # MACE needs equal multiplicities; see "similar size" in the report


# ----------------------------------------------------------------------------- helpers
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def structure(n_atoms: int, seed: int = 0):
    import numpy as np
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * SIZES[n_atoms]
    rng = np.random.default_rng(seed)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.random(len(atoms)) < 0.3] = "Ni"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.rattle(0.05, seed=seed)
    return atoms


def our_config():
    from potential import ModelConfig

    return ModelConfig()  # the defaults: C0=32, C1=8, C2=4, 3 layers, cutoff 5 Å


def build_mace(z_list, atomic_energies, avg_num_neighbors: float, device: str):
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules  # first: it allow-lists what e3nn's constants need under torch.load(weights_only)

    torch.set_default_dtype(torch.float32)
    model = modules.ScaleShiftMACE(
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=6,
        max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(z_list),
        hidden_irreps=o3.Irreps(MACE_HIDDEN),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.asarray(atomic_energies, dtype=float),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=list(z_list),
        correlation=3,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    return model.to(device)


def mace_calculator(model, device: str):
    """MACE's own ASE calculator around an in-memory model (saved to a temp file for
    versions that only take paths)."""
    import inspect
    import tempfile

    import torch
    from mace.calculators import MACECalculator

    params = inspect.signature(MACECalculator.__init__).parameters
    if "models" in params:
        return MACECalculator(models=model, device=device, default_dtype="float32")
    path = Path(tempfile.mkdtemp()) / "mace.model"
    torch.save(model, path)
    return MACECalculator(model_paths=str(path), device=device, default_dtype="float32")


def mace_graph(atoms, table, labelled: bool = False):
    """MACE's input graph of one structure (its own neighbour list, cutoff 5 Å); with
    ``labelled`` the EMT energy and forces ride along as training targets."""
    from mace import data as mace_data

    config = mace_data.config_from_atoms(atoms)
    if labelled:
        config.properties = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        config.property_weights = {"energy": 1.0, "forces": 1.0}
    try:
        return mace_data.AtomicData.from_config(config, z_table=table, cutoff=5.0)
    except TypeError:  # versions with multi-head models
        return mace_data.AtomicData.from_config(config, z_table=table, cutoff=5.0, heads=["Default"])


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- workers
def time_calls(step, case: dict, max_calls: int) -> tuple[float, float, int]:
    """Wall and process-CPU seconds per call of ``step`` after two warm-up calls (allocator,
    kernels, first-call specialisation), over at least ``case['min_steps']`` calls and
    ``case['min_seconds']`` (at most ``max_calls``); the number of timed calls."""
    import torch

    cuda = case["device"].startswith("cuda")
    step()
    step()
    if cuda:
        torch.cuda.synchronize()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while calls < case["min_steps"] or (time.perf_counter() - start < case["min_seconds"] and calls < max_calls):
        step()
        calls += 1
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls, (time.process_time() - cpu_start) / calls, calls


def worker_md(case: dict) -> dict:
    import torch
    from ase import units
    from ase.md import velocitydistribution
    from ase.md.verlet import VelocityVerlet

    device = case["device"]
    atoms = structure(case["n_atoms"])
    if case["model"] == "mace":
        model = build_mace([28, 29], [0.0, 0.0], 40.0, device)
        calc = mace_calculator(model, device)
        params = n_parameters(model)
    else:
        from potential import EnsembleCalculator, build_ensemble

        ensemble = build_ensemble(our_config(), case["members"], seed=0, device=device, avg_num_neighbors=40.0)
        calc = EnsembleCalculator(ensemble)
        params = n_parameters(ensemble) // case["members"]
    atoms.calc = calc
    thermalize = (
        getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
    )
    thermalize(atoms, temperature_K=300, rng=__import__("numpy").random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs, logfile=None)
    rss_before = peak_rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, cpu_seconds, steps = time_calls(lambda: dyn.run(1), case, max_calls=10_000)
    out = {
        **case,
        "parameters_per_member": params,
        "steps": steps,
        "seconds_per_step": seconds,
        # CPU time of this process: on a shared machine less disturbed by other jobs
        # than wall time (with one torch thread it is the work done)
        "cpu_seconds_per_step": cpu_seconds,
        "atom_steps_per_second": case["n_atoms"] / seconds,
        "peak_rss_mib": peak_rss_mib(),
        "peak_rss_before_md_mib": rss_before,
    }
    if device.startswith("cuda"):
        out["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def worker_batched(case: dict) -> dict:
    """One step of batched exploration: energy and forces of N structures in one model call
    per member, as batched MD needs them every step. Ours: ``EnsemblePotential.evaluate``
    (neighbour lists, as few calls as its memory bound allows, the members' deviation); its
    model time alone is the same call on graphs built once. MACE: its own batched path,
    the graphs of all N collated into one ``torch_geometric`` batch and one forward per model
    (K models for a K-member ensemble), timed with and without building its graphs, so that
    its model time alone is also reported (MACE's best case: MD moves the atoms, so the graphs
    must be rebuilt every step)."""
    import torch

    device = case["device"]
    frames = [structure(case["n_atoms"], seed=i) for i in range(case["structures"])]

    def timed(step) -> tuple[float, float]:
        return time_calls(step, case, max_calls=1000)[:2]

    out = {**case}
    if case["model"] == "mace":
        from mace.tools import AtomicNumberTable, torch_geometric

        table = AtomicNumberTable([28, 29])
        compiled = case.get("compile")
        build = build_mace
        if compiled:  # MACE's own compiled inference, as its calculator does with compile_mode
            from mace.tools.compile import prepare

            build = prepare(build_mace)
        models = [build([28, 29], [0.0, 0.0], 40.0, device).eval() for _ in range(case["members"])]
        for model in models:
            model.requires_grad_(False)
        if compiled:
            models = [torch.compile(model, mode=compiled, fullgraph=True) for model in models]

        def collate():
            graphs = [mace_graph(atoms, table) for atoms in frames]
            loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)
            return next(iter(loader)).to(device).to_dict()

        batch = collate()

        def forward(batch):
            if compiled:  # the compiled graph differentiates its inputs itself (training=True, as MACE's calculator)
                batch = {k: v.clone() for k, v in batch.items()}
                batch["positions"].requires_grad_(True)
                batch["node_attrs"].requires_grad_(True)
            for model in models:
                result = model(batch, training=bool(compiled), compute_force=True)
                result["forces"].sum().item()  # wait for the numbers, as MD would

        out["model_seconds_per_step"], out["model_cpu_seconds_per_step"] = timed(lambda: forward(batch))
        out["seconds_per_step"], out["cpu_seconds_per_step"] = timed(lambda: forward(collate()))
        out["parameters_per_member"] = n_parameters(models[0])
    else:
        from potential import build_ensemble

        ensemble = build_ensemble(our_config(), case["members"], seed=0, device=device, avg_num_neighbors=40.0)
        graphs = ensemble.graphs(frames)
        out["model_seconds_per_step"], out["model_cpu_seconds_per_step"] = timed(
            lambda: ensemble.evaluate_graphs(graphs, False)
        )
        out["seconds_per_step"], out["cpu_seconds_per_step"] = timed(lambda: ensemble.evaluate(frames, stress=False))
        out["parameters_per_member"] = n_parameters(ensemble) // case["members"]
    out["frames_per_second"] = case["structures"] / out["seconds_per_step"]
    out["atom_steps_per_second"] = case["structures"] * case["n_atoms"] / out["seconds_per_step"]
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def emt_data(seed: int, n_frames: int):
    from potential.reference_data import emt_frames

    return emt_frames(n_frames, elements=("Cu", "Ni", "Al"), seed=seed, max_atoms=32)


def errors(predict, frames) -> dict:
    import numpy as np

    f_err, e_err = [], []
    for atoms in frames:
        energy, forces = predict(atoms)
        f_err.append(np.abs(forces - atoms.get_forces()).ravel())
        e_err.append(abs(energy - atoms.get_potential_energy()) / len(atoms))
    return {"force_mae": float(np.concatenate(f_err).mean()), "energy_mae_per_atom": float(np.mean(e_err))}


def worker_train_ours(case: dict) -> dict:
    from potential import TrainConfig, train_ensemble

    train, test = emt_data(0, case["n_train"]), emt_data(1000, case["n_test"])
    config = TrainConfig(
        ensemble_size=case["members"],
        epochs=100_000,
        max_seconds=case["seconds"],
        patience=100_000,
        progress=False,
        val_fraction=0.1,
        energy_weight=10.0,
        learning_rate=5e-3,
    )
    start = time.perf_counter()
    result = train_ensemble(train, config, model_config=our_config(), device=case["device"])
    elapsed = time.perf_counter() - start

    def predict(atoms):
        r = result.ensemble.evaluate([atoms])[0]
        return r["energy"], r["forces"]

    return {
        **case,
        "train_seconds": elapsed,
        "epochs": len(result.metrics),
        **errors(predict, test),
        "parameters_per_member": n_parameters(result.ensemble) // case["members"],
    }


def worker_train_mace(case: dict) -> dict:
    """A plain MACE training loop with the same loss, optimiser and budget as ours."""
    import numpy as np
    import torch
    from mace.tools import AtomicNumberTable, torch_geometric

    from potential.data import fit_element_refs

    device = case["device"]
    train, test = emt_data(0, case["n_train"]), emt_data(1000, case["n_test"])
    zs = sorted({int(z) for a in train for z in a.numbers})
    table = AtomicNumberTable(zs)
    refs = fit_element_refs([a.numbers for a in train], np.array([a.get_potential_energy() for a in train]), 84)

    train_data = [mace_graph(a, table, labelled=True) for a in train]
    neighbours = np.mean([d.edge_index.shape[1] / d.num_nodes for d in train_data])
    model = build_mace(zs, [refs[z] for z in zs], float(neighbours), device)
    loader = torch_geometric.dataloader.DataLoader(train_data, batch_size=4, shuffle=True, drop_last=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-5)
    start, epochs = time.perf_counter(), 0
    while time.perf_counter() - start < case["seconds"]:
        for batch in loader:
            batch = batch.to(device)
            out = model(batch.to_dict(), training=True, compute_force=True)
            n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out["energy"].dtype)
            e_loss = (((out["energy"] - batch.energy) / n_atoms) ** 2).mean()
            f_loss = ((out["forces"] - batch.forces) ** 2).mean()
            loss = 10.0 * e_loss + 10.0 * f_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            if time.perf_counter() - start > case["seconds"]:
                break
        epochs += 1
    elapsed = time.perf_counter() - start
    calc = mace_calculator(model, device)

    def predict(atoms):
        atoms = atoms.copy()
        atoms.calc = calc
        return atoms.get_potential_energy(), atoms.get_forces()

    return {
        **case,
        "train_seconds": elapsed,
        "epochs": epochs,
        **errors(predict, test),
        "parameters_per_member": n_parameters(model),
    }


WORKERS = {
    "md": worker_md,
    "batched": worker_batched,
    "train_ours": worker_train_ours,
    "train_mace": worker_train_mace,
}


# ----------------------------------------------------------------------------- driver
def run_case(case: dict, timeout: float) -> dict:
    # Keep the caller's PYTHONPATH (packages installed with --target, e.g. on a GPU node).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(case)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {**case, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def environment() -> dict:
    import ase
    import numpy
    import torch
    import vesin

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "torch": torch.__version__,
        "ase": ase.__version__,
        "numpy": numpy.__version__,
        "vesin": vesin.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import e3nn
        import mace

        info["mace"] = getattr(mace, "__version__", "?")
        info["e3nn"] = e3nn.__version__
    except ImportError as exc:
        info["mace"] = f"not importable: {exc}"
    return info


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Potential benchmark",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), GPU: {env.get('cuda') or 'none'}; "
        f"load average at start {env['load_average_start']}, at end {env.get('load_average_end')}",
        f"python {env['python']}, torch {env['torch']}, ase {env['ase']}, vesin {env['vesin']}, "
        f"mace {env.get('mace')}, e3nn {env.get('e3nn', '-')}",
    ]
    if report["md"]:
        lines += [
            "",
            "## MD throughput (VelocityVerlet through the ASE calculator, energy + forces + neighbour list)",
            "",
            "| model | members | params/member | atoms | s/step | atom-steps/s | cost vs 1 member "
            "| CPU s/step | CPU cost vs 1 member | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in report["md"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['members']} | | {r['n_atoms']} | error: {r['error']} | | | | | |")
            continue
        rel = r.get("cost_relative_to_one_member")
        cpu = r.get("cpu_seconds_per_step")
        cpu_rel = r.get("cpu_cost_relative_to_one_member")
        lines.append(
            f"| {r['model']} | {r['members']} | {r['parameters_per_member']} | {r['n_atoms']} | "
            f"{r['seconds_per_step']:.4f} | {r['atom_steps_per_second']:.0f} | "
            f"{'' if rel is None else f'{rel:.2f}'} | {'' if cpu is None else f'{cpu:.4f}'} | "
            f"{'' if cpu_rel is None else f'{cpu_rel:.2f}'} | {r['peak_rss_mib']:.0f} |"
        )
    if report.get("batched"):
        lines += [
            "",
            "## Batched exploration step (N structures of 64 atoms, energy + forces, one call per model)",
            "",
            "| model | members | structures | s/step | frames/s | atom-steps/s | model only s/step "
            "| CPU s/step | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["batched"]:
            name = r["model"] + (f" (torch.compile {r['compile']})" if r.get("compile") else "")
            if "error" in r:
                lines.append(f"| {name} | {r['members']} | {r['structures']} | error: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {name} | {r['members']} | {r['structures']} | {r['seconds_per_step']:.4f} | "
                f"{r['frames_per_second']:.1f} | {r['atom_steps_per_second']:.0f} | "
                f"{r['model_seconds_per_step']:.4f} | {r['cpu_seconds_per_step']:.4f} | {r['peak_rss_mib']:.0f} |"
            )
        for ratio in batched_ratios(report["batched"]):
            lines.append(
                f"\nN = {ratio['structures']}, {ratio['members']} member(s): ours is {ratio['speedup']:.2f}x the fastest "
                f"MACE step with its graphs built ({ratio['peer']}), {ratio['speedup_model_only']:.2f}x MACE's fastest "
                "model time alone (ours with its neighbour lists)."
            )
    if report.get("training"):
        lines += [
            "",
            "## Equal training time on the same EMT data (held-out test set)",
            "",
            "| model | members | params/member | budget s | epochs | force MAE eV/Å | energy MAE meV/atom |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["training"]:
            name = "mace" if r.get("worker") == "train_mace" else "ours"
            if "error" in r:
                lines.append(f"| {name} | {r['members']} | | {r['seconds']} | error: {r['error']} | | |")
                continue
            lines.append(
                f"| {name} | {r['members']} | {r['parameters_per_member']} | {r['seconds']:.0f} | {r['epochs']} | "
                f"{r['force_mae']:.4f} | {1000 * r['energy_mae_per_atom']:.1f} |"
            )
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def batched_ratios(rows: list[dict]) -> list[dict]:
    """Ours against MACE per (N, members), from the same run: MACE's full step and its
    model time alone against our full step (neighbour lists included)."""
    ratios = []
    for ours in rows:
        if ours.get("model") != "ours" or "seconds_per_step" not in ours:
            continue
        peers = [
            r
            for r in rows
            if r.get("model") == "mace"
            and r.get("members") == ours["members"]
            and r.get("structures") == ours["structures"]
            and "seconds_per_step" in r
        ]
        if peers:  # MACE at its best: the fastest of its modes measured
            best = min(peers, key=lambda r: r["seconds_per_step"])
            ratios.append(
                {
                    "structures": ours["structures"],
                    "members": ours["members"],
                    "peer": "mace" + (f" (torch.compile {best['compile']})" if best.get("compile") else " (eager)"),
                    "speedup": best["seconds_per_step"] / ours["seconds_per_step"],
                    "speedup_model_only": min(r["model_seconds_per_step"] for r in peers) / ours["seconds_per_step"],
                }
            )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, help="only write the markdown summary of an existing JSON result")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--train-seconds", type=float, default=300.0, help="training budget per model (0: skip)")
    parser.add_argument("--n-train", type=int, default=150)
    parser.add_argument(
        "--batched",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also time one batched step of N structures (64-atom cells) per model call, for each N",
    )
    parser.add_argument("--only-batched", action="store_true", help="skip the per-structure MD and training cases")
    parser.add_argument(
        "--mace-compile",
        default=None,
        metavar="MODE",
        help="also time MACE compiled by torch.compile in this mode (e.g. default) in the batched step",
    )
    parser.add_argument("--no-mace", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "potential.json")
    args = parser.parse_args()
    if args.worker:
        case = json.loads(args.worker)
        if case.get("threads"):
            import torch

            torch.set_num_threads(case["threads"])
        worker = case.pop("worker")
        print("RESULT " + json.dumps({"worker": worker, **WORKERS[worker](case)}))
        return

    if args.render:
        args.render.with_suffix(".md").write_text(render_markdown(json.loads(args.render.read_text())))
        return

    env = environment()
    mace_ok = not args.no_mace and not str(env.get("mace", "")).startswith("not importable")
    report = {"environment": env, "md": [], "batched": [], "training": []}

    def time_case(worker: str, **case) -> None:
        """One timing case in its own process, with this run's device, step and thread settings."""
        case = {
            "worker": worker,
            **case,
            "device": args.device,
            "min_steps": args.min_steps,
            "min_seconds": args.min_seconds,
            "threads": args.threads,
        }
        result = run_case(case, args.timeout)
        report[worker].append(result)
        print(json.dumps(result), flush=True)

    models = [("ours", 1), ("ours", 4)] + ([("mace", 1)] if mace_ok else [])
    for n_structures in args.batched:
        peers = [("mace", 1, None), ("mace", 4, None)] if mace_ok else []
        if mace_ok and args.mace_compile:
            peers += [("mace", 1, args.mace_compile), ("mace", 4, args.mace_compile)]
        for model, members, compiled in [("ours", 1, None), ("ours", 4, None)] + peers:
            time_case("batched", model=model, compile=compiled, members=members, n_atoms=64, structures=n_structures)
    for n_atoms in [] if args.only_batched else args.sizes:
        for model, members in models:
            time_case("md", model=model, members=members, n_atoms=n_atoms)
    for row in report["md"]:
        if row.get("model") == "ours" and row.get("members") == 4 and "seconds_per_step" in row:
            single = next(
                (
                    r
                    for r in report["md"]
                    if r.get("model") == "ours"
                    and r.get("members") == 1
                    and r.get("n_atoms") == row["n_atoms"]
                    and "seconds_per_step" in r
                ),
                None,
            )
            if single:
                row["cost_relative_to_one_member"] = row["seconds_per_step"] / single["seconds_per_step"]
                if "cpu_seconds_per_step" in row and "cpu_seconds_per_step" in single:
                    row["cpu_cost_relative_to_one_member"] = (
                        row["cpu_seconds_per_step"] / single["cpu_seconds_per_step"]
                    )
    if args.train_seconds > 0 and not args.only_batched:
        trainers = [("train_ours", 1), ("train_ours", 4)] + ([("train_mace", 1)] if mace_ok else [])
        for worker, members in trainers:
            case = {
                "worker": worker,
                "members": members,
                "seconds": args.train_seconds,
                "device": args.device,
                "n_train": args.n_train,
                "n_test": 40,
                "threads": args.threads,
            }
            result = run_case(case, args.timeout + args.train_seconds)
            report["training"].append(result)
            print(json.dumps(result), flush=True)
    report["environment"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(render_markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
