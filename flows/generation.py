"""The self-play generation as a Prefect flow.

Only wiring: every row of the stage table (:data:`flows.stages.STAGES`) runs as a Prefect
task, in table order; a stage that fans out (the labelling) is a subflow whose task
runner comes from the configuration
(threads on one machine, Dask — e.g. a ``dask_jobqueue`` SLURM cluster — on many), so
switching runners changes no code. DFT tasks receive frames and settings and return
outcomes; only this process touches the database, which therefore may even be the
embedded store.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import stages
from flows.config import SelfplayConfig, load_config
from flows.stage_state import fail_generation, finish_generation
from pipeline.documents import Generation
from pipeline.errors import SelfplayError

log = logging.getLogger(__name__)


class _ExpectedFailure(logging.Filter):
    """Prefect logs a failed task or flow with its traceback. For a SelfplayError (a bad
    input, an unreachable store, too few labels) the traceback says nothing the one-line
    message does not; the record keeps the message and loses the traceback, on the console
    and in the Prefect UI alike. Other exceptions (bugs) keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SelfplayError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures() -> None:
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedFailure) for f in logger.filters):
            logger.addFilter(_ExpectedFailure())


def task_runner(config: SelfplayConfig):
    """The runner of the DFT fan-out: one slot per concurrent single point."""
    resources = config.resources
    if resources.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if resources.dask_address:
            return DaskTaskRunner(address=resources.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": resources.dask_workers, "threads_per_worker": 1, "processes": True}
        )
    return ThreadPoolTaskRunner(max_workers=resources.dft_workers)


@task(name="dft-single-point", cache_policy=NO_CACHE, tags=["dft"])
def single_point_task(atoms, settings, workdir: Optional[str] = None):
    """One single point in its own process (killed at settings.time_limit): result or failure."""
    from dft import single_point

    return single_point(atoms, settings, isolate=True, workdir=Path(workdir) if workdir else None)


def _prefect_labeller(config: SelfplayConfig, frames, progress: bool):
    """Submit every frame as a task and yield outcomes as they complete (stored at once)."""
    # No Prefect timeout: a thread cannot be interrupted, and the single point's own
    # process is killed at settings.time_limit anyway (a "timeout" failure, not a retry).
    runnable = single_point_task.with_options(retries=config.resources.dft_retries)
    workdir = str(stages.label_workdir(config).resolve())
    futures = {runnable.submit(frame.to_atoms(), config.dft, workdir): frame for frame in frames}
    bar = None
    if progress and futures:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("DFT single points"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        bar.start()
        task_id = bar.add_task("dft", total=len(futures))
    try:
        for future in as_completed(list(futures)):
            yield futures[future], future.result()
            if bar is not None:
                bar.advance(task_id)
    finally:
        if bar is not None:
            bar.stop()


def _context(config: SelfplayConfig, number: int, progress: bool = False) -> stages.StageContext:
    return stages.StageContext(
        config, Generation.objects.get(number=number), progress=progress, labeller=_prefect_labeller
    )


@task(cache_policy=NO_CACHE)
def stage_task(config: SelfplayConfig, number: int, name: str) -> dict:
    """One stage of the table (skipped if it completed before)."""
    return stages.run_one(_context(config, number), stages.get_stage(name))


@flow(log_prints=False)
def fan_out_flow(config: SelfplayConfig, number: int, name: str, progress: bool = False) -> dict:
    """A stage whose work is many tasks (the labelling), on the configured task runner."""
    return stages.run_one(_context(config, number, progress), stages.get_stage(name))


def run_stages(config: SelfplayConfig, number: int) -> dict:
    """Every stage of the table in order; the last one's result."""
    result: dict = {}
    for stage in list(stages.STAGES):
        if stage.fan_out:
            runnable = fan_out_flow.with_options(name=stage.name, task_runner=task_runner(config))
            result = runnable(config, number, stage.name, progress=sys.stderr.isatty())
        else:
            result = stage_task.with_options(name=stage.name)(config, number, stage.name)
    return result


def publish_artifacts(generation: Generation) -> None:
    """Per-element table and a markdown summary in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = [
        {"element": element, **{c: int(row.get(c, 0)) for c in stages.count_columns()}}
        for element, row in sorted((generation.ledger or {}).items())
    ]
    key = f"generation-{generation.number}"
    create_table_artifact(
        rows, key=f"{key}-elements", description=f"Generation {generation.number}: per-element ledger"
    )
    create_markdown_artifact(summary_markdown(generation), key=f"{key}-summary", description="Generation summary")


def summary_markdown(generation: Generation) -> str:
    counts = generation.counts or {}
    columns = stages.count_columns()
    model = (generation.metrics or {}).get("model") or {}
    thresholds = generation.thresholds or {}
    lines = [
        f"# Generation {generation.number}",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        "| " + " | ".join(str(counts.get(k, 0)) for k in columns) + " |",
        "",
        f"Trust window: lo = {thresholds.get('lo')} eV/Å, hi = {thresholds.get('hi')} eV/Å"
        + (" (adaptive)" if thresholds.get("adaptive") else ""),
    ]
    if model:
        lines.append(
            f"Model error on the new labels: energy {model['energy_mae_per_atom'] * 1000:.1f} meV/atom, "
            f"forces {model['force_mae']:.3f} eV/Å (MAE, {model['frames']} frames)"
        )
    else:
        lines.append("No model explored this generation (cold start).")
    return "\n".join(lines)


@flow(name="generation", log_prints=False)
def generation(
    config_file: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    number: Optional[int] = None,
    require_persistent_store: bool = True,
) -> dict:
    """One self-play generation: train → explore → select → label → report; resumable.

    ``config_file`` is a YAML file (default: ``$SELFPLAY_CONFIG``); ``overrides`` are
    top-level settings on top of it. Reruns continue the newest unfinished generation.
    """
    from pipeline.store import connect_from_config, current

    quiet_expected_failures()
    config = load_config(config_file, **(overrides or {}))
    info = current()
    if info is None or not info.embedded or require_persistent_store:
        connect_from_config(config, require_persistent=require_persistent_store)
    record = stages.start_generation(config, number)
    _record_flow_run(record)
    number = record.number
    try:
        result = run_stages(config, number)
    except BaseException as exc:
        record.reload()
        if record.status != "failed":
            fail_generation(record, "flow", exc)
        raise
    record.reload()
    publish_artifacts(record)
    finish_generation(record)
    return {"generation": number, "status": "completed", **result}


def _record_flow_run(record: Generation) -> None:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id:
        Generation.objects(id=record.id).update_one(set__prefect_flow_run_id=str(run_id))
