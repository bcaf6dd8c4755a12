"""The Prefect flow in this process against a real Prefect server; the Dask fan-out."""

from __future__ import annotations

import logging

import pytest

from pipeline.documents import Generation, Label

from .helpers import TINY, assert_same_labels, label_table, tiny_config

pytestmark = [pytest.mark.prefect_server, pytest.mark.slow]


def labels_through(runner: str, tmp_path, database: str) -> dict:
    from flows.generation import fan_out_flow, task_runner
    from flows.stages import run_generation
    from pipeline.store import connect

    connect(None, database=database)
    config = tiny_config(tmp_path / runner, resources={"task_runner": runner, "dask_workers": 2, "dft_workers": 2})
    record = run_generation(config, stop_after="select")
    assert record.stages["select"]["status"] == "completed"
    fan_out_flow.with_options(task_runner=task_runner(config))(
        config, record.number, "label", progress=runner == "threads"
    )
    record.reload()
    assert record.stages["label"]["status"] == "completed"
    return label_table(config.dft.theory_key())


def test_dask_task_runner_gives_the_same_labels(prefect_api, tmp_path):
    pytest.importorskip("prefect_dask")
    threads = labels_through("threads", tmp_path, "runner-threads")
    dask = labels_through("dask", tmp_path, "runner-dask")
    assert len(threads) > 0
    assert_same_labels(threads, dask)


def test_generation_flow_on_the_embedded_store(prefect_api, embedded_store, tmp_path):
    from flows.generation import generation

    result = generation(config_file=str(TINY), overrides={"workdir": str(tmp_path)}, require_persistent_store=False)
    assert result["generation"] == 0 and result["status"] == "completed"
    record = Generation.objects.get(number=0)
    assert record.status == "completed" and record.prefect_flow_run_id
    assert all(record.stages[s]["status"] == "completed" for s in ("train", "explore", "select", "label", "report"))
    assert Label.objects(generation=0).count() == record.counts["labelled"] > 0


def test_flow_refuses_the_embedded_store_when_data_must_persist(prefect_api, tmp_path):
    from flows.generation import generation
    from pipeline.errors import StoreError

    with pytest.raises(StoreError, match="no MongoDB configured"):
        generation(config_file=str(TINY), overrides={"workdir": str(tmp_path)})


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_a_failed_generation_is_one_line_in_prefects_log_not_a_traceback(prefect_api, embedded_store, tmp_path):

    from flows import stages
    from flows.generation import generation

    def too_few_labels(ctx):
        raise stages.GenerationFailed("generation 0: only 0 of 4 frames labelled")

    stages.register_stage(stages.Stage("fails", too_few_labels), after="train")
    # A handler beside Prefect's own (console, API) on the loggers its run engines use.
    kept = _Kept()
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    for logger in loggers:
        logger.addHandler(kept)
    try:
        with pytest.raises(stages.GenerationFailed):
            generation(config_file=str(TINY), overrides={"workdir": str(tmp_path)}, require_persistent_store=False)
    finally:
        stages.unregister_stage("fails")
        for logger in loggers:
            logger.removeHandler(kept)
    failures = [r for r in kept.records if "only 0 of 4 frames labelled" in r.getMessage()]
    assert {r.name for r in failures} == {"prefect.task_runs", "prefect.flow_runs"}
    assert all(r.exc_info is None and r.exc_text is None for r in failures)
    record = Generation.objects.get(number=0)
    assert record.status == "failed" and record.stages["fails"]["status"] == "failed"
    assert record.stages["explore"]["status"] == "pending"  # nothing after the failure ran
