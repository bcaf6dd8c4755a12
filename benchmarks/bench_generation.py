"""How much of a generation's wall time is spent outside the real work.

Runs generations through the Prefect flow (or in-process with ``--no-prefect``) and
splits each one's wall time into the work itself — training, exploration (MD and
scoring), DFT — and everything else: orchestration (Prefect tasks and subflows), the
database (GridFS archives, frame and label writes, queries), selection and the report.

    python benchmarks/bench_generation.py --generations 2 --random 200 --max-selected 12 \
        --out benchmarks/results/generation_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "flows" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEMO)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--random", type=int, default=200, help="random structures explored per generation")
    parser.add_argument("--trajectories", type=int, default=16, help="melt/quench trajectories per generation")
    parser.add_argument("--max-selected", type=int, default=12)
    parser.add_argument("--uri", default=None, help="MongoDB-wire server (default: embedded store)")
    parser.add_argument("--no-prefect", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/generation_overhead.json"))
    args = parser.parse_args()

    from flows.config import load_config
    from pipeline.documents import Generation
    from pipeline.store import connect

    workdir = Path(tempfile.mkdtemp(prefix="selfplay-bench-"))
    overrides = {
        "workdir": str(workdir),
        "explore": {
            "random": {"count": args.random},
            "melt_quench": {"trajectories": args.trajectories},
        },
        "selection": {"max_selected": args.max_selected},
    }
    config = load_config(args.config, **overrides)
    database = f"bench_generation_{int(time.time())}"
    connect(None if args.uri is None else f"{args.uri.rstrip('/')}/{database}", database=database)
    if not args.no_prefect:
        from flows.temporary_server import ensure_prefect_api

        ensure_prefect_api(home=workdir / ".prefect")
        from flows.generation import generation

    rows = []
    for _ in range(args.generations):
        started = time.perf_counter()
        if args.no_prefect:
            from flows.stages import run_generation

            number = run_generation(config).number
        else:
            number = generation(
                config_file=str(args.config), overrides=overrides, require_persistent_store=args.uri is not None
            )["generation"]
        wall = time.perf_counter() - started
        record = Generation.objects.get(number=number)
        stages = record.stages
        work = {
            stage: float((stages[stage].get("result") or {}).get("work_seconds", 0.0))
            for stage in ("train", "explore", "label")
        }
        stage_seconds = {stage: float(stages[stage].get("seconds") or 0.0) for stage in stages}
        total_work = sum(work.values())
        rows.append(
            {
                "generation": number,
                "wall_seconds": wall,
                "stage_seconds": stage_seconds,
                "work_seconds": work,
                "explored": record.counts.get("explored"),
                "labelled": record.counts.get("labelled"),
                "outside_stages_seconds": wall - sum(stage_seconds.values()),
                "overhead_seconds": wall - total_work,
                "overhead_fraction": (wall - total_work) / wall,
            }
        )
        print(json.dumps(rows[-1], indent=1))

    import mongoengine
    import prefect
    import torch

    environment = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "prefect": prefect.__version__,
        "mongoengine": mongoengine.__version__,
        "store": "embedded (mongomock-ng)" if args.uri is None else args.uri.split("@")[-1],
        "prefect_used": not args.no_prefect,
    }
    try:
        environment["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "environment": environment,
                "arguments": vars(args) | {"config": str(args.config), "out": str(args.out)},
                "generations": rows,
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
