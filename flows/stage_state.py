"""The stage-state record on each :class:`~pipeline.documents.Generation` document.

Every stage's status (pending, running, completed, failed), attempts, timings and
result live under ``Generation.stages[name]``; a stage that completed is never redone,
which is what makes a rerun after a crash continue where the last run stopped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Iterable, Optional

from pipeline.documents import Generation, utcnow
from pipeline.errors import StoreError
from pipeline.jsonable import store_safe

log = logging.getLogger(__name__)


def stage_seed(seed: int, number: int, stage: str, index: int = 0) -> int:
    """A reproducible seed per (config seed, generation, stage, sampler)."""
    digest = hashlib.sha256(f"{seed}:{number}:{stage}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_generation(stage_names: Iterable[str], config: dict, theory: str, number: Optional[int] = None) -> Generation:
    """The generation to work on: an unfinished one (resume), else a new one after the last."""
    if number is not None:
        generation = Generation.objects(number=number).first()
        if generation is not None:
            return generation
    else:
        unfinished = Generation.objects(status__in=["pending", "running", "failed"]).order_by("-number").first()
        if unfinished is not None:
            log.info("resuming generation %d (%s)", unfinished.number, unfinished.status)
            return unfinished
        last = Generation.objects.order_by("-number").first()
        number = 0 if last is None else last.number + 1
    generation = Generation(
        number=number,
        status="pending",
        stages={stage: {"status": "pending"} for stage in stage_names},
        config=config,
        theory=theory,
    )
    try:
        generation.save(force_insert=True)
    except Exception as exc:  # a concurrent run created it first
        existing = Generation.objects(number=number).first()
        if existing is None:
            raise StoreError(f"cannot create generation {number}: {exc}") from None
        return existing
    log.info("generation %d created", number)
    return generation


def stage_state(generation: Generation, stage: str) -> dict:
    return dict((generation.stages or {}).get(stage) or {"status": "pending"})


def stage_result(generation: Generation, stage: str) -> dict:
    return stage_state(generation, stage).get("result") or {}


def is_done(generation: Generation, stage: str) -> bool:
    return stage_state(generation, stage).get("status") == "completed"


def begin_stage(generation: Generation, stage: str) -> float:
    state = stage_state(generation, stage)
    state.update(status="running", started_at=utcnow().isoformat(), attempts=state.get("attempts", 0) + 1)
    Generation.objects(id=generation.id).update_one(**{f"set__stages__{stage}": state, "set__status": "running"})
    generation.reload()
    return time.perf_counter()


def complete_stage(generation: Generation, stage: str, started: float, result: dict) -> None:
    state = stage_state(generation, stage)
    state.update(
        status="completed",
        finished_at=utcnow().isoformat(),
        seconds=round(time.perf_counter() - started, 3),
        result=store_safe(result),
    )
    Generation.objects(id=generation.id).update_one(**{f"set__stages__{stage}": state})
    generation.reload()


def fail_generation(generation: Generation, stage: str, error: BaseException) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    state = stage_state(generation, stage)
    state.update(status="failed", finished_at=utcnow().isoformat(), error=message)
    Generation.objects(id=generation.id).update_one(
        **{f"set__stages__{stage}": state, "set__status": "failed", "set__error": f"{stage}: {message}"}
    )


def finish_generation(generation: Generation) -> None:
    Generation.objects(id=generation.id).update_one(set__status="completed", set__finished_at=utcnow(), set__error=None)
    generation.reload()


def run_stage(generation: Generation, stage: str, work: Callable[[], dict]) -> dict:
    """Run ``work`` as ``stage`` unless it already completed; record its state either way."""
    if is_done(generation, stage):
        log.info("generation %d: %s already completed, not redone", generation.number, stage)
        return stage_result(generation, stage)
    started = begin_stage(generation, stage)
    try:
        result = work()
    except BaseException as exc:
        fail_generation(generation, stage, exc)
        raise
    complete_stage(generation, stage, started, result)
    return result
