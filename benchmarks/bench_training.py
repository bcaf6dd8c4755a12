"""Training throughput and time to accuracy of ``train_ensemble``, side by side with MACE.

Both packages train on the same frames (energy + forces), with the same train/validation
split, batch size, loss (``energy_weight`` x (ΔE/atom)² + ``force_weight`` x mean ΔF²
component), EMA decay and validation batch size, in one process with the same torch
thread count, one after the other, A B A B:

* round 1 (throughput): ours with one member, MACE, ours with ``--members`` members, each
  for ``--warmup-epochs`` + ``--epochs`` epochs;
* round 2 (accuracy): the same three in reverse order, each with the same wall-clock
  budget ``--budget`` (the epoch running when it is used up is cut short and still
  validated, for both), then K MACE runs (seeds 0..K-1) with ``budget / K`` each: MACE's
  way to a K-member ensemble is K separate runs, and on CPU they gain nothing from
  running side by side (each already keeps a core busy).

From every run: frames/s of the training steps after the warm-up epochs (validation
excluded; also per CPU-second of the process, less disturbed by other jobs), and the
validation curve (force MAE and energy MAE per atom after every epoch, against the wall
time of the epochs, validation included). A K-member MACE ensemble trains at one run's
frames/s / K. Time to target, with targets defined from the data so that both reach
them: one model, 1.1 x the worse of the two best validation force MAEs (ours with one
member, MACE) at the full budget; ensembles, 1.1 x the worst best of ours with K members
and the K MACE runs, the MACE ensemble's time being the sum of its runs' times. The
accuracy at equal wall time is each run's last validation, and the validation force MAE
of the mean force of the K MACE runs.

Datasets: ``emt`` (rattled and strained Cu-Al-Ni fcc cells and clusters of ≤32 atoms
labelled with ASE's EMT, from ``bench_potential.emt_data``) and, where ``dft.XTBSettings``
imports and tblite is installed, ``xtb`` (random H/C/N/O/S clusters of 4-16 atoms and
periodic cells of 4-8 atoms from ``samplers.random_structures``, labelled with GFN2-xTB
through ``dft.label_frames``; cached under ``--cache-dir``).

MACE runs through its own training loop, ``mace.cli.run_train.run`` (what
``mace_run_train`` calls), in float32 on the CPU; the benchmark only wraps MACE's
``train_one_epoch`` (same loop over ``take_step``, plus the clock and the budget) and
``valid_err_log`` (to timestamp the validation MACE computes anyway). MACE is optional:

    .venv/bin/pip install -e '.[bench]'        # or: pip install 'mace-torch>=0.3.10'

    python benchmarks/bench_training.py --profile        # full run (~15 min on 2 cores)
    python benchmarks/bench_training.py --quick          # smoke run (~3 min)
    python benchmarks/bench_training.py --device cuda --out benchmarks/results/training_gpu.json

``--profile`` adds a breakdown of our training step (batching, forward, force gradient,
double backward, optimizer, EMA) and torch.profiler's top operators.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

MACE_INSTALL = "pip install -e '.[bench]'  (or: pip install 'mace-torch>=0.3.10')"
XTB_ELEMENTS = ["H", "C", "N", "O", "S"]
#: MACE hyperparameters: hidden irreps 16x0e+16x1o (num_channels 16, max_L 1) with MACE's
#: defaults otherwise except a narrower radial MLP, for a parameter count close to one
#: of our members (printed per dataset; MACE's grows with the number of elements).
MACE_DEFAULTS = {
    "num_channels": 16,
    "max_L": 1,
    "max_ell": 3,
    "correlation": 3,
    "num_interactions": 2,
    "radial_MLP": "[32, 32, 32]",
    "MLP_irreps": "16x0e",
    "num_radial_basis": 8,
}

log = logging.getLogger("bench_training")

NOTES = [
    "Both train on energy and forces only (the EMT cells' stress is dropped), with the same loss weights "
    "(ours' defaults, energy 1, forces 10; MACE's default forces weight of 100 set to 10), batch size, "
    "validation set and EMA decay; optimiser and learning-rate schedule are each package's defaults.",
    "Set-up is not in the epoch times: our neighbour lists and reference fit, MACE's data loading, statistics "
    "(E0s, average neighbours, scale) and its evaluation before the first epoch; see setup_seconds in the JSON.",
    "Ours with K members trains all K in one pass over shared mini-batches (bootstrap weights per member), so its "
    "frames/s counts each frame once for all K; its validation error is that of the ensemble-mean prediction. "
    "MACE's ensemble-mean error is computed from the K runs' final EMA models with MACE's ASE calculator.",
    "Our cosine schedule spans 1.5x the epochs expected in the budget (from the throughput round), so the "
    "budget, not the epoch count, ends the run; 'epoch limit' in a row marks where the count ended it first.",
    "One torch thread for both: on this shared 2-core machine 2 threads made both 7-15x slower (oversubscribed).",
    "MACE's parameter count grows with the number of elements (per-element weights of its product basis); "
    "ours holds an embedding row for every element H..Bi, used or not.",
]


# ----------------------------------------------------------------------------- data
def energy_forces_only(atoms):
    """A clean copy carrying only energy and forces (both packages fit E + F)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    clean.calc = SinglePointCalculator(
        clean, energy=float(atoms.get_potential_energy()), forces=atoms.get_forces().copy()
    )
    return clean


def emt_dataset(n_frames: int, seed: int) -> tuple[list, dict]:
    from bench_potential import emt_data

    start = time.perf_counter()
    frames = [energy_forces_only(a) for a in emt_data(seed, n_frames)]
    return frames, {"labeller": "ase EMT", "label_seconds": time.perf_counter() - start}


def xtb_available() -> str | None:
    """None when the xTB dataset can be built, else why not."""
    try:
        from dft import XTBSettings  # noqa: F401
    except ImportError as exc:
        return f"dft.XTBSettings not importable ({exc})"
    try:
        import tblite.interface  # noqa: F401
    except ImportError as exc:
        return f"tblite not installed ({exc}); pip install -e '.[xtb]'"
    return None


def xtb_dataset(n_frames: int, seed: int, cache_dir: Path, workers: int) -> tuple[list, dict]:
    """GFN2-xTB labels of random H/C/N/O/S clusters (4/5 of the frames) and small
    periodic cells (1/5), cached by what they depend on."""
    import ase.io
    import numpy as np

    from dft import XTBSettings, label_frames
    from samplers.random_structures import RandomStructureConfig, random_structures

    n_cells = max(1, n_frames // 5)
    configs = {
        "cluster": RandomStructureConfig(
            elements=XTB_ELEMENTS, min_atoms=4, max_atoms=16, max_species=4, kind="cluster"
        ),
        "periodic": RandomStructureConfig(
            elements=XTB_ELEMENTS, min_atoms=4, max_atoms=8, max_species=4, kind="periodic"
        ),
    }
    # no pair closer than the sum of covalent radii, looser packing: forces of a few eV/Å
    # (at the samplers' defaults, 0.75 and 0.35, their RMS is ~9 eV/Å, mostly wall repulsion)
    configs = {
        k: c.model_copy(update={"min_distance_fraction": 1.0, "packing_fraction": 0.25}) for k, c in configs.items()
    }
    settings = XTBSettings(threads=1, time_limit=300.0)
    spec = {
        "n_frames": n_frames,
        "seed": seed,
        "theory": settings.theory_key(),
        "configs": {k: c.model_dump() for k, c in configs.items()},
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"xtb_{key}.extxyz"
    info = {
        "labeller": f"GFN2-xTB (tblite) through dft.label_frames, theory key {settings.theory_key()}",
        "cache": str(path),
    }
    if path.exists():
        frames = [energy_forces_only(a) for a in ase.io.read(path, index=":")]
        info.update(cached=True, label_seconds=json.loads(path.with_suffix(".json").read_text())["label_seconds"])
        return frames, info
    structures = random_structures(configs["cluster"], seed, n_frames - n_cells)
    structures += random_structures(configs["periodic"], seed + 1, n_cells)
    start = time.perf_counter()
    labelled = {}
    failures = 0
    for index, outcome in label_frames(structures, settings, workers=workers, progress=False, invalid="fail"):
        if outcome.ok:
            labelled[index] = energy_forces_only(outcome.to_atoms(structures[index]))
        else:
            failures += 1
    seconds = time.perf_counter() - start
    frames = [labelled[i] for i in sorted(labelled)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, frames, format="extxyz")
    path.with_suffix(".json").write_text(json.dumps({"label_seconds": seconds, "failures": failures, "spec": spec}))
    periodic = int(np.sum([a.pbc.all() for a in frames]))
    log.info("labelled %d xTB frames (%d periodic, %d failed) in %.0f s", len(frames), periodic, failures, seconds)
    info.update(cached=False, label_seconds=seconds, failures=failures)
    return frames, info


def describe(frames) -> dict:
    import numpy as np
    from ase.data import chemical_symbols

    zs = np.concatenate([a.numbers for a in frames])
    forces = np.concatenate([a.get_forces() for a in frames])
    return {
        "frames": len(frames),
        "periodic_frames": int(sum(bool(a.pbc.all()) for a in frames)),
        "atoms_mean": float(np.mean([len(a) for a in frames])),
        "atoms_range": [int(min(len(a) for a in frames)), int(max(len(a) for a in frames))],
        "elements": {chemical_symbols[z]: int(c) for z, c in zip(*np.unique(zs, return_counts=True))},
        "force_rms": float(np.sqrt(np.mean(forces**2))),
    }


def split(n: int, val_fraction: float, seed: int):
    """The train/validation split ``train_ensemble`` makes (same rng draws), so MACE gets
    exactly the same two sets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 5:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    return order[n_val:], order[:n_val]


# ----------------------------------------------------------------------------- runs
def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _throughput(curve: list[dict], warmup: int) -> dict:
    """Frames/s of the training steps over the complete epochs after the warm-up."""
    measured = [c for c in curve[warmup:] if c["complete"]]
    frames = sum(c["frames"] for c in measured)
    seconds = sum(c["train_seconds"] for c in measured)
    cpu = sum(c["train_cpu_seconds"] for c in measured)
    return {
        "measured_epochs": len(measured),
        "frames_per_second": frames / seconds if seconds > 0 else None,
        # per second of this process's CPU time: less disturbed by other jobs on a shared machine
        "frames_per_cpu_second": frames / cpu if cpu > 0 else None,
        "seconds_per_epoch": (sum(c["train_seconds"] + c["val_seconds"] for c in measured) / len(measured))
        if measured
        else None,
    }


def run_ours(frames, members: int, epochs: int, budget: float | None, args) -> dict:
    """``train_ensemble`` as a user calls it; validation timed by wrapping ``_validate``."""
    import numpy as np
    import torch

    import potential.train as train_module
    from potential import ModelConfig, TrainConfig, train_ensemble

    val_seconds: list[float] = []
    cpu_marks: list[tuple[float, float]] = []  # process CPU time at the start and end of each validation
    original = train_module._validate

    def timed_validate(*a, **k):
        start, cpu = time.perf_counter(), time.process_time()
        out = original(*a, **k)
        val_seconds.append(time.perf_counter() - start)
        cpu_marks.append((cpu, time.process_time()))
        return out

    config = TrainConfig(
        ensemble_size=members,
        epochs=epochs,
        batch_size=args.batch_size,
        max_seconds=budget,
        patience=10**6,
        progress=False,
        val_fraction=args.val_fraction,
        seed=args.seed,
        energy_weight=args.energy_weight,
        force_weight=args.force_weight,
        ema_decay=args.ema_decay,
    )
    load_start, cpu_start, start = _load(), time.process_time(), time.perf_counter()
    train_module._validate = timed_validate
    try:
        result = train_ensemble(frames, config, model_config=ModelConfig(), device=args.device)
    finally:
        train_module._validate = original
    wall = time.perf_counter() - start
    curve, clock = [], 0.0
    for i, (m, vt) in enumerate(zip(result.metrics, val_seconds)):
        clock += m.seconds
        last = i == len(result.metrics) - 1
        previous_end = cpu_marks[i - 1][1] if i else cpu_start  # the first epoch's includes the set-up
        curve.append(
            {
                "epoch": m.epoch,
                "time": clock,
                "train_seconds": m.seconds - vt,
                "val_seconds": vt,
                "train_cpu_seconds": cpu_marks[i][0] - previous_end,
                "frames": result.n_train,
                "complete": not (last and budget is not None and clock >= budget),
                "val_force_mae": m.val_force_mae,
                "val_energy_mae_per_atom": m.val_energy_mae_per_atom,
            }
        )
    params = sum(p.numel() for p in result.ensemble.parameters()) // members
    out = {
        "model": "ours",
        "members": members,
        "parameters_per_member": params,
        "epochs_limit": epochs,
        "budget_seconds": budget,
        "wall_seconds": wall,
        "setup_seconds": wall - clock,
        "cpu_seconds": time.process_time() - cpu_start,
        "load_start": load_start,
        "load_end": _load(),
        "n_train": result.n_train,
        "n_val": result.n_val,
        "best_epoch": result.best_epoch,
        "curve": curve,
        "torch_threads": torch.get_num_threads(),
    }
    out.update(_throughput(curve, args.warmup_epochs))
    # the split check: our best ensemble on the benchmark's validation frames reproduces
    # the metrics train_ensemble computed on its own validation set
    if args.val_frames:
        preds = result.ensemble.evaluate(args.val_frames)
        err = np.concatenate([p["forces"] - a.get_forces() for p, a in zip(preds, args.val_frames)])
        out["check_val_force_mae"] = float(np.abs(err).mean())
        out["check_reported_val_force_mae"] = result.best.val_force_mae
    return out


class _Stop(Exception):
    """Raised from inside MACE's loop when the epochs or the wall-time budget are used."""


def _write_mace_xyz(frames, path: Path) -> None:
    import ase.io
    from ase import Atoms

    out = []
    for a in frames:
        b = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc)
        b.info["REF_energy"] = float(a.get_potential_energy())
        b.arrays["REF_forces"] = a.get_forces().copy()
        out.append(b)
    ase.io.write(path, out, format="extxyz")


def mace_arguments(args, workdir: Path, seed: int) -> list[str]:
    hyper = {**MACE_DEFAULTS, **(json.loads(args.mace_settings) if args.mace_settings else {})}
    argv = [
        "--name",
        "bench",
        "--seed",
        str(seed),
        "--work_dir",
        str(workdir),
        "--train_file",
        str(workdir / "train.xyz"),
        "--valid_file",
        str(workdir / "valid.xyz"),
        "--E0s",
        "average",
        "--model",
        "MACE",
        "--r_max",
        "5.0",
        "--batch_size",
        str(args.batch_size),
        "--valid_batch_size",
        str(max(args.batch_size, 16)),
        "--max_num_epochs",
        "100000",
        "--patience",
        "100000",
        "--eval_interval",
        "1",
        "--loss",
        "weighted",
        "--energy_weight",
        str(args.energy_weight),
        "--forces_weight",
        str(args.force_weight),
        "--error_table",
        "PerAtomMAE",
        "--default_dtype",
        "float32",
        "--device",
        args.device,
        "--ema",
        "--ema_decay",
        str(args.ema_decay),
        "--energy_key",
        "REF_energy",
        "--forces_key",
        "REF_forces",
        "--num_workers",
        "0",
        "--log_level",
        "WARNING",
    ]
    for name, value in hyper.items():
        argv += [f"--{name}", str(value)]
    return argv


def mace_predict(model, ema, frames, device: str) -> list:
    """Forces of ``frames`` from MACE's own ASE calculator, with the EMA weights MACE
    validates (and saves) with."""
    import contextlib

    from mace.calculators import MACECalculator

    with ema.average_parameters() if ema is not None else contextlib.nullcontext():
        calc = MACECalculator(models=model, device=device, default_dtype="float32")
        out = []
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calc
            out.append(atoms.get_forces().copy())
    return out


def run_mace(train, val, epochs: int, budget: float | None, args, seed: int = 0, predict: bool = False) -> dict:
    """MACE's own ``run_train`` loop; epochs timed and cut like ours. ``predict``: also the
    final model's validation forces (under ``"val_forces"``, not for the JSON)."""
    import importlib

    import torch
    from mace.cli.run_train import run
    from mace.tools import build_default_arg_parser

    # the module, not the function ``mace.tools.train`` that shadows it as an attribute
    mace_train = importlib.import_module("mace.tools.train")
    workdir = Path(tempfile.mkdtemp(prefix="bench_mace_"))
    _write_mace_xyz(train, workdir / "train.xyz")
    _write_mace_xyz(val, workdir / "valid.xyz")
    argv = mace_arguments(args, workdir, seed)
    state: dict = {"t0": None, "epochs": 0, "curve": [], "train_end": None}

    def train_one_epoch(**kw):
        now = time.perf_counter()
        if state["t0"] is None:
            state["t0"] = now
            state["model"], state["ema"] = kw["model"], kw.get("ema")
        elif state["epochs"] >= epochs or (budget is not None and now - state["t0"] >= budget):
            raise _Stop
        model = kw.get("distributed_model") or kw["model"]
        cpu = time.process_time()
        frames, cut = 0, False
        for batch in kw["data_loader"]:  # MACE's train_one_epoch, plus the clock
            _, opt_metrics = mace_train.take_step(
                model=model,
                loss_fn=kw["loss_fn"],
                batch=batch,
                optimizer=kw["optimizer"],
                ema=kw.get("ema"),
                output_args=kw["output_args"],
                max_grad_norm=kw["max_grad_norm"],
                device=kw["device"],
            )
            opt_metrics["mode"], opt_metrics["epoch"] = "opt", kw["epoch"]
            kw["logger"].log(opt_metrics)
            frames += int(batch.num_graphs)
            if budget is not None and time.perf_counter() - state["t0"] > budget:
                cut = True
                break
        state["epochs"] += 1
        state["train_end"] = time.perf_counter()
        state["pending"] = {
            "train_seconds": state["train_end"] - now,
            "frames": frames,
            "complete": not cut,
            "train_cpu_seconds": time.process_time() - cpu,
        }

    original_log = mace_train.valid_err_log

    def valid_err_log(valid_loss, eval_metrics, logger, log_errors, epoch=None, valid_loader_name="Default"):
        now = time.perf_counter()
        original_log(valid_loss, eval_metrics, logger, log_errors, epoch, valid_loader_name)
        if epoch is None or state.get("pending") is None:  # MACE's evaluation before training
            return
        row = state.pop("pending")
        row.update(
            epoch=state["epochs"],
            time=now - state["t0"],
            val_seconds=now - state["train_end"],
            val_force_mae=float(eval_metrics["mae_f"]),
            val_energy_mae_per_atom=float(eval_metrics["mae_e_per_atom"]),
        )
        state["curve"].append(row)

    patched = {"train_one_epoch": train_one_epoch, "valid_err_log": valid_err_log}
    saved = {name: getattr(mace_train, name) for name in patched}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    threads = torch.get_num_threads()
    load_start, cpu_start, start = _load(), time.process_time(), time.perf_counter()
    for name, fn in patched.items():
        setattr(mace_train, name, fn)
    try:
        run(build_default_arg_parser().parse_args(argv))
        stopped = "epochs"
    except _Stop:
        stopped = "budget or epochs"
    finally:
        for name, fn in saved.items():
            setattr(mace_train, name, fn)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start
    curve = state["curve"]
    model = state.get("model")
    out = {
        "model": "mace",
        "members": 1,
        "seed": seed,
        "parameters_per_member": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "epochs_limit": epochs,
        "budget_seconds": budget,
        "wall_seconds": wall,
        "setup_seconds": (state["t0"] - start) if state["t0"] else None,
        "cpu_seconds": time.process_time() - cpu_start,
        "load_start": load_start,
        "load_end": _load(),
        "n_train": len(train),
        "n_val": len(val),
        "curve": curve,
        "stopped": stopped,
        "torch_threads": threads,
        "mace_argv": argv,
    }
    out.update(_throughput(curve, args.warmup_epochs))
    if predict and model is not None:
        import numpy as np

        out["val_forces"] = mace_predict(model, state.get("ema"), val, args.device)
        err = np.concatenate([f - a.get_forces() for f, a in zip(out["val_forces"], val)])
        out["check_val_force_mae"] = float(np.abs(err).mean())  # MACE's own last mae_f, recomputed
    return out


# ----------------------------------------------------------------------------- analysis
def first_time_below(curve: list[dict], target: float) -> float | None:
    return next((c["time"] for c in curve if c["val_force_mae"] is not None and c["val_force_mae"] <= target), None)


def at_time(curve: list[dict], seconds: float) -> dict | None:
    """The last validation point reached within ``seconds``."""
    within = [c for c in curve if c["time"] <= seconds * 1.0001]
    return within[-1] if within else None


def best_force(curve: list[dict]) -> float | None:
    values = [c["val_force_mae"] for c in curve if c["val_force_mae"] is not None]
    return min(values) if values else None


def analyse(dataset: dict, k: int) -> dict:
    """Ratios from one dataset's runs: per round frames/s, time to target, equal-time MAEs."""
    rounds = {}
    for name, rnd in dataset["rounds"].items():
        rows = {}
        for r in rnd:  # the first run of each kind in the round (the accuracy round's MACE at budget)
            rows.setdefault((r["model"], r["members"]), r)
        o1, ok, m1 = rows.get(("ours", 1)), rows.get(("ours", k)), rows.get(("mace", 1))
        entry = {"load": {f"{r['model']}_{r['members']}": [r["load_start"], r["load_end"]] for r in (o1, m1, ok) if r}}
        for unit, key in (("", "frames_per_second"), ("_cpu", "frames_per_cpu_second")):
            get = lambda r: r.get(key) if r else None  # noqa: E731
            entry[f"ours_1_fps{unit}"], entry[f"ours_{k}_fps{unit}"] = get(o1), get(ok)
            entry[f"mace_1_fps{unit}"] = get(m1)
            entry[f"mace_{k}_fps{unit}"] = get(m1) / k if get(m1) else None
            entry[f"ratio_1{unit}"] = get(o1) / get(m1) if get(o1) and get(m1) else None
            entry[f"ratio_{k}{unit}"] = get(ok) / (get(m1) / k) if get(ok) and get(m1) else None
        rounds[name] = entry
    out: dict = {"throughput": rounds}
    runs = dataset["rounds"].get("accuracy", [])
    o1 = next((r for r in runs if r["model"] == "ours" and r["members"] == 1), None)
    ok = next((r for r in runs if r["model"] == "ours" and r["members"] == k), None)
    m1 = next((r for r in runs if r["model"] == "mace" and not r.get("ensemble_member")), None)
    members = [r for r in runs if r.get("ensemble_member") and r["curve"]]  # the K MACE runs at budget / K
    mk = members[0] if members else None
    if not (o1 and m1 and o1["curve"] and m1["curve"]):
        return out
    budget = o1["budget_seconds"]
    target = 1.1 * max(best_force(o1["curve"]), best_force(m1["curve"]))
    t_o1, t_m1 = first_time_below(o1["curve"], target), first_time_below(m1["curve"], target)
    out["time_to_target"] = {
        "target_force_mae": target,
        "ours_1": t_o1,
        "mace_1": t_m1,
        "mace_over_ours": (t_m1 / t_o1) if t_o1 and t_m1 else None,
    }
    if ok and members and ok["curve"]:
        # every MACE member must reach the target: the ensemble's time is the sum of theirs
        target_k = 1.1 * max([best_force(ok["curve"])] + [best_force(r["curve"]) for r in members])
        t_ok = first_time_below(ok["curve"], target_k)
        t_members = [first_time_below(r["curve"], target_k) for r in members]
        t_mk = sum(t_members) if all(t is not None for t in t_members) and len(members) == k else None
        out["time_to_target_ensemble"] = {
            "target_force_mae": target_k,
            f"ours_{k}": t_ok,
            "mace_members": t_members,
            f"mace_{k}": t_mk,
            "mace_over_ours": (t_mk / t_ok) if t_ok and t_mk else None,
        }
    equal = {}
    for label, run in (("ours_1", o1), ("mace_1", m1), (f"ours_{k}", ok), (f"mace_{k}_member_seed0", mk)):
        if not run or not run["curve"]:
            equal[label] = None
            continue
        last = run["curve"][-1]  # both cut the running epoch at the budget and validate it
        equal[label] = {
            "budget_seconds": run["budget_seconds"],
            "epochs": last["epoch"],
            "seconds": last["time"],
            "stopped_by_epoch_limit": last["time"] < 0.95 * run["budget_seconds"],
            "val_force_mae": last["val_force_mae"],
            "val_energy_mae_per_atom": last["val_energy_mae_per_atom"],
            "best_val_force_mae": best_force(run["curve"]),
        }
    out["equal_wall_time"] = equal
    if dataset.get("mace_ensemble"):
        out["mace_ensemble_mean"] = dataset["mace_ensemble"]
    out["budget_seconds"] = budget
    return out


# ----------------------------------------------------------------------------- profile
def profile_step(frames, args, members: int, steps: int = 10) -> dict:
    """Where one of our training steps spends its time (same code as train_ensemble's
    loop, split into phases), and torch.profiler's top operators."""
    import numpy as np
    import torch

    import potential.train as T
    from potential import ModelConfig
    from potential.model import build_ensemble

    start = time.perf_counter()
    samples = T._prepare(frames, ModelConfig().cutoff)
    prepare_ms = (time.perf_counter() - start) / len(frames) * 1e3
    model = build_ensemble(ModelConfig(), members, 0, device=args.device, avg_num_neighbors=30.0)
    ema = build_ensemble(ModelConfig(), members, 1, device=args.device, avg_num_neighbors=30.0)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    chunks = [
        list(range(i, i + args.batch_size)) for i in range(0, len(samples) - args.batch_size + 1, args.batch_size)
    ]
    chunks = (chunks * (1 + 2 * steps // max(1, len(chunks))))[: 2 * steps]
    weights = torch.ones(members, args.batch_size, device=args.device)
    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else (lambda: None)
    phases = np.zeros(6)
    names = ["batch", "forward", "force_gradient", "loss_backward", "clip_and_optimizer", "ema"]

    def mark(marks):
        sync()
        marks.append(time.perf_counter())

    def step(chunk, timed):
        marks = [time.perf_counter()]
        batch = T._Batch([samples[i] for i in chunk], args.device, model.dtype)
        mark(marks)
        graph = batch.graph
        r = graph.edge_vectors.to(model.dtype).unsqueeze(0).expand(members, -1, -1).clone().requires_grad_(True)
        atom_energy, _ = model._interaction_energy(graph, r)
        learned = atom_energy.new_zeros(members, graph.n_structures).index_add_(1, graph.batch, atom_energy)
        mark(marks)
        (grad,) = torch.autograd.grad(learned.sum(), r, create_graph=True)
        forces = (
            atom_energy.new_zeros(members, graph.n_nodes, 3)
            .index_add(1, graph.src, grad)
            .index_add(1, graph.dst, -grad)
        )
        mark(marks)
        e_loss = ((learned.to(torch.float64) - batch.residual_energy) / batch.n_atoms) ** 2
        f_loss = ((forces - batch.forces) ** 2).mean()
        loss = (weights.to(torch.float64) * e_loss).mean() + 10.0 * f_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark(marks)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        mark(marks)
        T._ema_update(ema, model, 0.99)
        mark(marks)
        if timed:
            phases[:] += np.diff(marks)

    for chunk in chunks[:steps]:
        step(chunk, False)
    for chunk in chunks[steps:]:
        step(chunk, True)
    phases /= steps
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for chunk in chunks[steps:]:
            step(chunk, False)
    table = []
    for ev in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
        table.append(
            {
                "op": ev.key,
                "self_cpu_ms_per_step": ev.self_cpu_time_total / 1e3 / steps,
                "calls_per_step": ev.count / steps,
            }
        )
    # the one candidate in potential/train.py: AdamW's implementation (default on CPU: a
    # Python loop over the parameter tensors; foreach and fused are one call each)
    optimizer_ms = {}
    for name, kw in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        try:
            candidate = torch.optim.AdamW(model.parameters(), lr=1e-6, **kw)
        except (RuntimeError, ValueError) as exc:
            optimizer_ms[name] = f"unsupported: {exc}"
            continue
        for _ in range(5):
            candidate.step()
        sync()
        t0 = time.process_time()
        for _ in range(100):
            candidate.step()
        sync()
        optimizer_ms[name] = (time.process_time() - t0) / 100 * 1e3
    total = float(phases.sum())
    return {
        "optimizer_step_cpu_ms": optimizer_ms,
        "members": members,
        "neighbour_list_ms_per_frame_once": prepare_ms,
        "ms_per_step": {n: float(v * 1e3) for n, v in zip(names, phases)},
        "share": {n: float(v / total) for n, v in zip(names, phases)},
        "edges_per_batch": float(np.mean([sum(len(samples[i].graph.src) for i in c) for c in chunks])),
        "atoms_per_batch": float(np.mean([sum(samples[i].graph.n_atoms for i in c) for c in chunks])),
        "top_ops": table,
        "load": _load(),
    }


# ----------------------------------------------------------------------------- report
def environment(args) -> dict:
    import ase
    import numpy
    import torch

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return None

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "torch": torch.__version__,
        "ase": ase.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": args.device,
        "selfplay_commit": git("rev-parse", "HEAD"),
        "uncommitted_in_potential": (git("status", "--porcelain", "potential") or "").splitlines(),
    }
    try:
        import e3nn
        import mace

        info["mace"] = getattr(mace, "__version__", None) or __import__("mace.__version__").__version__.__version__
        info["e3nn"] = e3nn.__version__
    except ImportError as exc:
        info["mace"] = f"not importable: {exc}"
    return info


def _f(value, spec=".3g", none="—"):
    return none if value is None else format(value, spec)


def render_markdown(report: dict) -> str:
    env, k = report["environment"], report["settings"]["members"]
    s = report["settings"]
    lines = [
        "# Training benchmark: train_ensemble vs MACE",
        "",
        f"CPU: {env['cpu']} ({env['cpu_count']} cores), device {env['device']}, GPU: {env.get('cuda') or 'none'}; "
        f"torch threads {env['torch_threads']}; load average (1 min) at start {env['load_average_start'][0]:.2f}, "
        f"at end {env.get('load_average_end', [float('nan')])[0]:.2f}",
        f"python {env['python']}, torch {env['torch']}, ase {env['ase']}, mace {env.get('mace')}, "
        f"e3nn {env.get('e3nn', '-')}; selfplay {str(env.get('selfplay_commit'))[:10]}"
        + (
            f" (uncommitted in potential/: {', '.join(env['uncommitted_in_potential'])})"
            if env.get("uncommitted_in_potential")
            else ""
        ),
        f"Run: `{report['command']}` ({report['total_seconds']:.0f} s)",
        "",
        "## Summary (ratios > 1: ours ahead)",
        "",
    ]
    for name, ds in report["datasets"].items():
        a = ds.get("analysis") or {}
        fps = a.get("throughput", {})
        r1 = [t.get("ratio_1") for t in fps.values() if t.get("ratio_1")]
        rk = [t.get(f"ratio_{k}") for t in fps.values() if t.get(f"ratio_{k}")]
        parts = []
        if r1:
            parts.append(
                f"training frames/s {min(r1):.2f}-{max(r1):.2f}x MACE's with one member, "
                f"{min(rk):.2f}-{max(rk):.2f}x a {k}-run MACE ensemble's with {k}"
            )
        tt, te = a.get("time_to_target") or {}, a.get("time_to_target_ensemble") or {}
        if tt:
            parts.append(
                f"time to the target force MAE {_f(tt.get('mace_over_ours'), '.2f')}x shorter (one model), "
                f"{_f(te.get('mace_over_ours'), '.2f')}x shorter (ensembles)"
            )
        eq = a.get("equal_wall_time") or {}
        if eq.get("ours_1") and eq.get("mace_1"):
            ens = a.get("mace_ensemble_mean", {}).get("val_force_mae")
            parts.append(
                f"after equal wall time validation force MAE {eq['ours_1']['val_force_mae']:.4g} vs "
                f"{eq['mace_1']['val_force_mae']:.4g} eV/Å (one model)"
                + (
                    f", {eq[f'ours_{k}']['val_force_mae']:.4g} vs {ens:.4g} eV/Å (ensemble means)"
                    if eq.get(f"ours_{k}") and ens is not None
                    else ""
                )
                + f", energy MAE {1000 * eq['ours_1']['val_energy_mae_per_atom']:.0f} vs "
                f"{1000 * eq['mace_1']['val_energy_mae_per_atom']:.0f} meV/atom (one model)"
            )
        if not parts:
            parts.append(
                "ours only (MACE not run): "
                + ", ".join(
                    f"{rname} round {_f(t.get('ours_1_fps'))} frames/s with one member, {_f(t.get(f'ours_{k}_fps'))} with {k}"
                    for rname, t in fps.items()
                )
            )
        lines.append(f"- `{name}`: " + "; ".join(parts) + ".")
    lines += [
        "",
        f"Settings: batch {s['batch_size']}, validation fraction {s['val_fraction']}, loss {s['energy_weight']} x "
        f"(ΔE/atom)² + {s['force_weight']} x ΔF², EMA {s['ema_decay']}; throughput round {s['warmup_epochs']} warm-up + "
        f"{s['epochs']} epochs; accuracy round {s['budget']:.0f} s per run. Ours: `ModelConfig()` defaults, "
        "`TrainConfig` defaults otherwise (AdamW 3e-3, cosine over the epochs that fit the budget, bootstrap for "
        f"K>1). MACE: `run_train` {env.get('mace')}, {report['mace_settings']}, float32, E0s average, Adam "
        "(amsgrad) lr 0.01, ReduceLROnPlateau (its defaults). "
        f"A {k}-member MACE ensemble = {k} separate runs (seeds 0..{k - 1}): frames/s ÷ {k}; for accuracy at equal "
        f"wall time the {k} runs get budget / {k} each.",
        "",
    ]
    for name, ds in report["datasets"].items():
        d, a = ds["data"], ds.get("analysis", {})
        lines += [
            f"## Dataset `{name}`: {ds['info']['labeller']}",
            "",
            f"{d['frames']} frames ({d['periodic_frames']} periodic), {d['atoms_mean']:.1f} atoms on average "
            f"({d['atoms_range'][0]}-{d['atoms_range'][1]}), elements {d['elements']}, force RMS "
            f"{d['force_rms']:.3g} eV/Å; {ds['n_train']} training / {ds['n_val']} validation frames. "
            f"Parameters per member: ours {ds.get('parameters', {}).get('ours')}, MACE "
            f"{ds.get('parameters', {}).get('mace')}.",
            "",
        ]
        if "error" in ds:
            lines += [f"error: {ds['error']}", ""]
            continue
        lines += [
            "### Training throughput (frames/s of the training steps after warm-up; in brackets per CPU-second)",
            "",
            f"| round | ours 1 | MACE 1 | ours/MACE | ours {k} | MACE {k} (÷{k}) | ours {k}/MACE {k} | load (1 min) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rname, t in a.get("throughput", {}).items():
            loads = ", ".join(f"{m} {v[0]:.1f}→{v[1]:.1f}" for m, v in t["load"].items())
            cell = lambda key, spec=".3g": f"{_f(t.get(key), spec)} ({_f(t.get(key + '_cpu'), spec)})"  # noqa: E731
            lines.append(
                f"| {rname} | {cell('ours_1_fps')} | {cell('mace_1_fps')} | **{cell('ratio_1', '.2f')}** | "
                f"{cell(f'ours_{k}_fps')} | {cell(f'mace_{k}_fps')} | **{cell(f'ratio_{k}', '.2f')}** | {loads} |"
            )
        if "time_to_target" in a:
            tt = a["time_to_target"]
            lines += [
                "",
                "### Time to a validation force MAE (seconds of training, validation included)",
                "",
                "| comparison | target eV/Å | ours | MACE | MACE/ours |",
                "|---|---|---|---|---|",
                f"| one model | {tt['target_force_mae']:.4g} | {_f(tt['ours_1'], '.1f', 'not reached')} | "
                f"{_f(tt['mace_1'], '.1f', 'not reached')} | **{_f(tt['mace_over_ours'], '.2f')}×** |",
            ]
            te = a.get("time_to_target_ensemble")
            if te:
                lines.append(
                    f"| {k}-member ensemble | {te['target_force_mae']:.4g} | {_f(te[f'ours_{k}'], '.1f', 'not reached')} | "
                    f"{_f(te[f'mace_{k}'], '.1f', 'not reached')} ("
                    + " + ".join(_f(t, ".1f", "∞") for t in te["mace_members"])
                    + ") | "
                    f"**{_f(te['mace_over_ours'], '.2f')}×** |"
                )
            lines += [
                "",
                "Targets: 1.1 × the worse of the two best validation force MAEs within the budget "
                f"(one model: ours 1 and MACE at {a['budget_seconds']:.0f} s; ensemble: ours {k} at "
                f"{a['budget_seconds']:.0f} s and the {k} MACE runs at {a['budget_seconds'] / k:.0f} s each; the "
                "MACE ensemble's time is the sum of its runs' times).",
                "",
                f"### Validation error after equal wall time ({a['budget_seconds']:.0f} s; a MACE ensemble member "
                f"gets {a['budget_seconds'] / k:.0f} s)",
                "",
                "| run | budget s | epochs | seconds used | force MAE eV/Å | best force MAE eV/Å | energy MAE meV/atom |",
                "|---|---|---|---|---|---|---|",
            ]
            for label, row in a["equal_wall_time"].items():
                if row is None:
                    lines.append(f"| {label} | | no epoch | | | | |")
                    continue
                lines.append(
                    f"| {label} | {row['budget_seconds']:.0f} | {row['epochs']} | {row['seconds']:.0f}"
                    f"{' (epoch limit)' if row['stopped_by_epoch_limit'] else ''} | {row['val_force_mae']:.4f} | "
                    f"{row['best_val_force_mae']:.4f} | {1000 * row['val_energy_mae_per_atom']:.2f} |"
                )
            if a.get("mace_ensemble_mean"):
                e = a["mace_ensemble_mean"]
                lines.append(
                    f"| mace_{k} ensemble mean ({e['members']} runs) | {e['budget_per_member']:.0f} each | | | "
                    f"{e['val_force_mae']:.4f} | | |"
                )
        lines.append("")
    if report.get("profile"):
        lines += ["## Profile of our training step", ""]
        for p in report["profile"]:
            ms = p["ms_per_step"]
            lines.append(
                f"- {p['dataset']}, {p['members']} member(s), {p['atoms_per_batch']:.0f} atoms / {p['edges_per_batch']:.0f} "
                f"edges per batch: {sum(ms.values()):.1f} ms per step = "
                + ", ".join(f"{n} {v:.1f} ms ({100 * p['share'][n]:.0f} %)" for n, v in ms.items())
                + f"; neighbour lists {p['neighbour_list_ms_per_frame_once']:.2f} ms per frame, once per training run; "
                "top operators (self CPU ms/step): "
                + ", ".join(f"{o['op']} {o['self_cpu_ms_per_step']:.1f}" for o in p["top_ops"][:6])
                + "; AdamW step alone (CPU ms): "
                + ", ".join(
                    f"{n} {_f(v, '.2f') if isinstance(v, float) else v}"
                    for n, v in p.get("optimizer_step_cpu_ms", {}).items()
                )
            )
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"MACE is optional and imported only when the benchmark runs; install it with: {MACE_INSTALL}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small data, few epochs, short budget (~3 min)")
    parser.add_argument("--datasets", nargs="+", default=["emt", "xtb"], choices=["emt", "xtb"])
    parser.add_argument("--frames", type=int, default=100, help="frames per dataset")
    parser.add_argument("--members", type=int, default=4, help="our ensemble size K (our default: 4)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--energy-weight", type=float, default=1.0)
    parser.add_argument("--force-weight", type=float, default=10.0)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--warmup-epochs", type=int, default=1, help="epochs left out of frames/s")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per run of the throughput round")
    parser.add_argument(
        "--budget", type=float, default=80.0, help="wall seconds per run of the accuracy round (0: skip)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both (0: torch's default); on a loaded 2-core machine 2 threads were 7-15x slower for both",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mace-settings", help="JSON overriding MACE hyperparameters, e.g. '{\"num_channels\": 32}'")
    parser.add_argument("--no-mace", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile our training step")
    parser.add_argument("--xtb-workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "selfplay-bench")
    parser.add_argument("--render", type=Path, help="only rewrite the markdown of an existing JSON result")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON result (default benchmarks/results/training_<device>.json)"
    )
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render_markdown(json.loads(args.render.read_text())))
        return
    if args.quick:
        args.frames, args.epochs, args.budget = min(args.frames, 40), 2, min(args.budget, 25.0)
    if args.out is None:
        kind = "cpu" if args.device == "cpu" else "gpu"
        args.out = ROOT / "benchmarks" / "results" / (f"training_{kind}{'_quick' if args.quick else ''}.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:  # MACE logs its run to the root logger: keep its warnings only
        handler.addFilter(lambda record: record.name != "root" or record.levelno >= logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    env = environment(args)
    mace_ok = not args.no_mace and not str(env.get("mace", "")).startswith("not importable")
    if not args.no_mace and not mace_ok:
        log.warning("MACE not importable (%s): running ours only. Install: %s", env["mace"], MACE_INSTALL)
    k = args.members
    report = {
        "environment": env,
        "command": "python benchmarks/bench_training.py " + " ".join(argv or sys.argv[1:]),
        "settings": {
            n: getattr(args, n)
            for n in (
                "frames",
                "members",
                "batch_size",
                "val_fraction",
                "energy_weight",
                "force_weight",
                "ema_decay",
                "warmup_epochs",
                "epochs",
                "budget",
                "threads",
                "seed",
                "quick",
            )
        },
        "mace_settings": {**MACE_DEFAULTS, **(json.loads(args.mace_settings) if args.mace_settings else {})},
        "datasets": {},
        "profile": [],
        "notes": list(NOTES),
    }
    for name in args.datasets:
        if name == "xtb" and (why := xtb_available()):
            log.warning("skipping the xTB dataset: %s", why)
            report["notes"].append(f"xtb dataset skipped: {why}")
            continue
        frames, info = (
            emt_dataset(args.frames, args.seed)
            if name == "emt"
            else xtb_dataset(args.frames, args.seed, args.cache_dir, args.xtb_workers)
        )
        train_idx, val_idx = split(len(frames), args.val_fraction, args.seed)
        train, val = [frames[i] for i in train_idx], [frames[i] for i in val_idx]
        args.val_frames = val
        ds = {"info": info, "data": describe(frames), "n_train": len(train), "n_val": len(val), "rounds": {}}
        report["datasets"][name] = ds
        log.info("dataset %s: %s", name, ds["data"])
        epochs = args.warmup_epochs + args.epochs
        # round 1: throughput, A B A
        order = [("ours", 1), ("mace", 1), ("ours", k)]
        rnd = []
        for model, members in order:
            if model == "mace" and not mace_ok:
                continue
            log.info("%s: throughput run, %s with %d member(s), %d epochs", name, model, members, epochs)
            r = (
                run_ours(frames, members, epochs, None, args)
                if model == "ours"
                else run_mace(train, val, epochs, None, args)
            )
            rnd.append(r)
            log.info("  %.3g frames/s, load %.2f", r["frames_per_second"] or 0, r["load_end"])
        ds["rounds"]["throughput"] = rnd
        # round 2: accuracy at equal wall time, reverse order (B A B), then the K runs of a
        # MACE ensemble, each with its share of the same wall time, budget / K
        if args.budget > 0:
            rnd = []
            est = {(r["model"], r["members"]): r["seconds_per_epoch"] for r in ds["rounds"]["throughput"]}
            plan = [(m, n, args.budget, 0) for m, n in reversed(order)]
            plan += [("mace", 1, args.budget / k, seed) for seed in range(k)]
            for model, members, budget, seed in plan:
                if model == "mace" and not mace_ok:
                    continue
                per_epoch = est.get((model, members)) or 1.0
                # ours: the cosine schedule spans 1.5 x the epochs expected to fit the budget,
                # so that the budget, not the epoch count, ends the run when the load drops
                limit = max(2, int(math.ceil(1.5 * budget / per_epoch)))
                log.info("%s: accuracy run, %s with %d member(s), seed %d, %.0f s", name, model, members, seed, budget)
                if model == "ours":
                    r = run_ours(frames, members, limit, budget, args)
                else:
                    r = run_mace(train, val, 10**6, budget, args, seed=seed, predict=budget < args.budget)
                    r["ensemble_member"] = budget < args.budget
                rnd.append(r)
                log.info(
                    "  %d epochs, best force MAE %.4g, load %.2f",
                    len(r["curve"]),
                    best_force(r["curve"]) or -1,
                    r["load_end"],
                )
            members_forces = [r.pop("val_forces") for r in rnd if "val_forces" in r]
            if members_forces:
                import numpy as np

                mean = [np.mean(fs, axis=0) for fs in zip(*members_forces)]
                err = np.concatenate([f - a.get_forces() for f, a in zip(mean, val)])
                ds["mace_ensemble"] = {
                    "members": len(members_forces),
                    "budget_per_member": args.budget / k,
                    "val_force_mae": float(np.abs(err).mean()),
                }
            ds["rounds"]["accuracy"] = rnd
        params = {}
        for r in ds["rounds"]["throughput"]:
            params.setdefault(r["model"], r["parameters_per_member"])
        ds["parameters"] = params
        if params.get("mace"):
            ds["parameter_ratio_mace_over_ours"] = params["mace"] / params["ours"]
        print(f"{name}: parameters per member: ours {params.get('ours')}, MACE {params.get('mace')}", flush=True)
        ds["analysis"] = analyse(ds, k)
        print(json.dumps({name: ds["analysis"]}, indent=1, default=str), flush=True)
        if args.profile:
            for members in (1, k):
                p = profile_step(train, args, members)
                p["dataset"] = name
                report["profile"].append(p)
        del args.val_frames
    env["load_average_end"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    args.out.with_suffix(".md").write_text(render_markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
