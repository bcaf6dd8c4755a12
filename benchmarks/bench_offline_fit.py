"""Can the active-learning profile's model learn its MD test sets at all, offline?

Trains the profile's own model and ensemble (``bench_active_learning``'s configuration) on a
fixed number of oracle frames, twice, and scores both on held-out frames against a model
that predicts zero force:

* **same trajectories**: frames of the test sets' own trajectories, scored on the other
  frames of those trajectories (what memory of a few trajectories scores);
* **independent trajectories**: frames of the test-recipe pool (the test sets' protocol
  with other seeds), scored on the test sets (what learning the recipe scores).

The gap between the two says whether an MD test set measures learning or memory. The test
sets and the pool are built, or reused, in ``--cache-dir`` exactly as
``bench_active_learning.py`` builds them::

    python benchmarks/bench_offline_fit.py --labeller xtb --cache-dir /tmp/alcache

``--quick`` is the test suite's run (``tests/benchmarks/test_bench_offline_fit.py``): the
smoke-test sets of ``bench_active_learning --quick`` and a fit of a few frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_active_learning as al  # noqa: E402

log = logging.getLogger("bench_offline_fit")


def force_mae(frames: list, predictions: list[dict] | None) -> float:
    """Force MAE over all components; ``predictions`` None scores a zero-force model."""
    errors = [
        np.abs((np.asarray(p["forces"]) if p is not None else 0.0) - a.get_forces()).ravel()
        for a, p in zip(frames, predictions or [None] * len(frames))
    ]
    return float(np.mean(np.concatenate(errors)))


def split(sets: dict[str, list], per_set: int, rng: np.random.Generator) -> tuple[list, dict[str, list]]:
    """``per_set`` random frames of every set to train on, the rest of each set held out."""
    train, held = [], {}
    for name, frames in sets.items():
        order = rng.permutation(len(frames))
        train += [frames[i] for i in order[:per_set]]
        held[name] = [frames[i] for i in order[per_set:]]
    return train, held


def fit_and_score(train: list, held: dict[str, list], config, epochs: int) -> dict:
    from potential.train import train_ensemble

    training = config.training.model_copy(update={"epochs": epochs, "patience": epochs, "min_steps": 0})
    started = time.perf_counter()
    result = train_ensemble(train, training, model_config=config.model, device="cpu")
    scores = {
        name: {
            "frames": len(frames),
            "force_mae": force_mae(frames, result.ensemble.evaluate(frames, stress=False)),
            "zero_force_mae": force_mae(frames, None),
        }
        for name, frames in held.items()
    }
    return {"train_frames": len(train), "seconds": time.perf_counter() - started, "sets": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labeller", choices=sorted(al.PROFILES), default="xtb")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".bench-cache" / "active_learning")
    parser.add_argument("--per-set", type=int, default=40, help="training frames drawn from every set")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "offline_fit.json")
    parser.add_argument("--quick", action="store_true", help="the test suite's run: smoke-test sets, tiny fits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    profile = al.get_profile(args.labeller, args.quick)
    with tempfile.TemporaryDirectory() as workdir:
        config = al.load_arm_config(profile.config_yaml, {"workdir": workdir}, Path(workdir))
    elements = list(config.elements)
    test, _ = al.build_test_sets(profile, elements, args.cache_dir)
    # The pool bench_active_learning's test-recipe arm draws from at its default budget
    # (8 generations of 20 labels), so that both scripts share one cached pool.
    wanted = len(test) * args.per_set if args.quick else 160
    pool, _ = al.test_recipe_pool(profile, elements, args.cache_dir, wanted=wanted)
    in_domain = {name: frames for name, frames in test.items() if name != "ood"}

    rng = np.random.default_rng(args.seed)
    same_train, same_held = split(in_domain, args.per_set, rng)
    independent_train, _ = split(pool, args.per_set, rng)
    runs = {}
    for name, train, held in (
        ("same_trajectories", same_train, same_held),
        ("independent_trajectories", independent_train, in_domain),
    ):
        runs[name] = fit_and_score(train, held, config, args.epochs)
        log.info(
            "%s: %s",
            name,
            ", ".join(
                f"{s} {v['force_mae']:.2f} (zero force {v['zero_force_mae']:.2f})"
                for s, v in runs[name]["sets"].items()
            ),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "offline_fit",
                "command": "python benchmarks/bench_offline_fit.py "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "labeller": args.labeller,
                "settings": {"per_set": args.per_set, "epochs": args.epochs, "seed": args.seed, "quick": args.quick},
                "model": config.model.model_dump(),
                "training": config.training.model_dump(),
                "environment": al.environment(threads=1, jobs=1),
                "runs": runs,
            },
            indent=1,
        )
    )
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
