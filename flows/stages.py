"""One self-play generation as plain, resumable stages: train → explore → select → label → report.

The stages are rows of one table, :data:`STAGES`, which both drivers read: the in-process
:func:`run_generation` and the Prefect flow (:mod:`flows.generation`). Each row names the
stage, the function that runs it and whether it fans out over the task runner; a new
stage is one :class:`Stage` and one function (:func:`register_stage`).

Each stage computes with a collaborator from its :class:`StageContext` (trainer,
explorer, labeller: swapped out in tests), then stores what it produced before it is
marked completed, so a rerun after a crash at any point continues where the last run
stopped:

* ``train``   the ensemble goes to GridFS (:class:`ModelVersion`) before completion;
  an interrupted training is redone from the same seed.
* ``explore`` the explored frames (with σ_F, descriptors, provenance) are stored as one
  compressed, bit-exact array archive in GridFS; an interrupted exploration is redone
  from the same seeds and model, giving the same frames.
* ``select``  picked frames are inserted idempotently (content hash), then the ledger.
* ``label``   every outcome is stored the moment it arrives; a rerun labels only frames
  with neither a label nor a failure at this level of theory.
* ``report``  metrics (with the model's errors on the probe sets), the ledger's
  labelled/failed columns, snapshot and report.

Nothing here knows Prefect.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from ase import Atoms

from flows.config import SelfplayConfig
from flows.exploration import explore
from flows.stage_state import finish_generation, open_generation, run_stage, stage_seed, stage_state
from pipeline import ledger as ledgers
from pipeline.documents import Failure, Frame, Generation, Label
from pipeline.errors import SelfplayError, StoreError
from pipeline.frame_archive import pack_frames, unpack_frames
from pipeline.jsonable import store_safe
from pipeline.model_registry import fetch_model, latest_model, save_model_version

log = logging.getLogger(__name__)

#: (config, frames to label, progress) -> (frame, outcome) pairs as they complete.
Labeller = Callable[[SelfplayConfig, list[Frame], bool], Iterable[tuple[Frame, object]]]


class GenerationFailed(SelfplayError):
    """A generation ran but did not meet its completion criteria (e.g. too few labels)."""


def model_cache_dir(config: SelfplayConfig) -> Path:
    return Path(config.workdir) / "models"


def device_of(config: SelfplayConfig) -> Optional[str]:
    return None if config.resources.device == "auto" else config.resources.device


def load_generation_model(config: SelfplayConfig, generation: Generation):
    """The ensemble that explores in ``generation`` (its own, else the latest earlier one), or None."""
    from potential.checkpoint import load_ensemble

    model = generation.model_version or latest_model(before=generation.number + 1)
    if model is None:
        return None
    return load_ensemble(fetch_model(model, model_cache_dir(config)), device=device_of(config))


def _train_ensemble(*args, **kwargs):
    from potential.train import train_ensemble

    return train_ensemble(*args, **kwargs)


def label_with_processes(config: SelfplayConfig, frames: list[Frame], progress: bool) -> Iterator[tuple[Frame, object]]:
    """Outcomes of ``frames`` from dft.label_frames (local worker processes)."""
    from dft import label_frames

    atoms = [frame.to_atoms() for frame in frames]
    for index, outcome in label_frames(
        atoms,
        config.dft,
        workers=config.resources.dft_workers,
        progress=progress,
        invalid="fail",
        workdir=label_workdir(config),
    ):
        yield frames[index], outcome


@dataclass
class StageContext:
    """What a stage works with: the configuration, its generation and its collaborators."""

    config: SelfplayConfig
    generation: Generation
    progress: bool = False
    #: ``potential.train.train_ensemble`` or anything with its signature.
    trainer: Callable = _train_ensemble
    #: (config, generation number, model) -> (frames, per-sampler report).
    explorer: Callable[[SelfplayConfig, int, object], tuple[list[Atoms], dict]] = explore
    labeller: Labeller = label_with_processes
    #: The ensemble that explores and is evaluated; loaded the first time a stage asks.
    model_loader: Callable[[SelfplayConfig, Generation], object] = load_generation_model
    _model: object = field(default=None, repr=False)
    _model_loaded: bool = field(default=False, repr=False)

    def model(self):
        if not self._model_loaded:
            self._model, self._model_loaded = self.model_loader(self.config, self.generation), True
        return self._model

    def seed(self, stage: str) -> int:
        return stage_seed(self.config.seed, self.generation.number, stage)


# ------------------------------------------------------------------- stages


def training_theories(config: SelfplayConfig) -> list[str]:
    return [config.dft.theory_key(), *config.generation.training_theories]


def train_stage(ctx: StageContext) -> dict:
    """Train this generation's ensemble on every label so far (warm start from the last,
    unless ``generation.warm_start`` is off)."""
    from pipeline.reads import iter_labelled

    config, generation = ctx.config, ctx.generation
    # A smeared free energy is a different number from the ground-state energies beside
    # it; it trains only where every label of the theory is smeared (always_smear).
    smeared = None if getattr(config.dft, "always_smear", False) else False
    frames = list(iter_labelled(theories=training_theories(config), smeared=smeared))
    if len(frames) < config.generation.min_train_frames:
        return {
            "skipped": f"cold start: {len(frames)} labelled frames, fewer than min_train_frames "
            f"({config.generation.min_train_frames}); exploring without a new model",
            "frames": len(frames),
        }
    previous = latest_model(before=generation.number) if config.generation.warm_start else None
    warm_start = fetch_model(previous, model_cache_dir(config)) if previous is not None else None
    out_dir = Path(config.workdir) / "training" / f"gen-{generation.number:04d}"
    training = config.training.model_copy(update={"seed": ctx.seed("train")})
    work_started = time.perf_counter()
    result = ctx.trainer(
        frames, training, out_dir, model_config=config.model, warm_start=warm_start, device=device_of(config)
    )
    work_seconds = time.perf_counter() - work_started
    summary = store_safe(result.summary())
    model = save_model_version(
        generation.number,
        out_dir,
        metrics=summary,
        trained_on={
            "frames": len(frames),
            "theories": training_theories(config),
            "per_element": _frames_per_element(frames),
            "warm_start": previous.name if previous is not None else None,
        },
    )
    Generation.objects(id=generation.id).update_one(set__model_version=model)
    generation.reload()
    return {
        "model": model.name,
        "frames": len(frames),
        "warm_start": previous.name if previous else None,
        "work_seconds": work_seconds,
        **summary,
    }


def _frames_per_element(frames: list[Atoms]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for atoms in frames:
        for element in set(atoms.get_chemical_symbols()):
            counts[element] += 1
    return dict(sorted(counts.items()))


def explore_stage(ctx: StageContext) -> dict:
    """Run the samplers with the generation's model; archive every frame they made."""
    generation = ctx.generation
    work_started = time.perf_counter()
    frames, report = ctx.explorer(ctx.config, generation.number, ctx.model())
    work_seconds = time.perf_counter() - work_started
    payload = pack_frames(frames)
    generation.reload()
    if generation.explored:
        generation.explored.delete()  # a half-finished earlier attempt
    generation.explored.put(payload, filename=f"gen-{generation.number:04d}-explored.npz")
    generation.save()
    scored = sum(1 for a in frames if a.info.get("sigma_f") is not None)
    return {
        "frames": len(frames),
        "scored": scored,
        "samplers": report,
        "archive_bytes": len(payload),
        "work_seconds": work_seconds,
    }


def explored_frames(generation: Generation) -> list[Atoms]:
    generation.reload()
    if not generation.explored:
        raise StoreError(f"generation {generation.number}: explored frames are missing; rerun exploration")
    return unpack_frames(generation.explored.read())


def sigma_history(number: int, generations: int = 3) -> list[float]:
    history: list[float] = []
    for previous in Generation.objects(number__lt=number).order_by("-number").limit(generations):
        history += list((previous.metrics or {}).get("sigma_f_sample", []))
    return history


def select_stage(ctx: StageContext) -> dict:
    """Pick the frames worth labelling; store them and the ledger."""
    from pipeline.hashing import frame_hash
    from pipeline.selection import select_frames
    from pipeline.store import add_frame, existing_hashes

    config, generation = ctx.config, ctx.generation
    frames = explored_frames(generation)
    scored = frames
    fit = latest_calibration_fit(generation.number) if config.selection.calibrated else None
    if fit is not None:
        from potential.evaluation import calibrated_frames

        scored = calibrated_frames(frames, fit)  # the trust window compares expected errors
    # Frames an interrupted earlier attempt of this stage stored are this generation's own
    # picks, not known ones: the rerun picks them again and stores nothing twice.
    own = {doc.hash for doc in Frame.objects(generation=generation.number).only("hash")}
    result = select_frames(
        scored,
        config.selection,
        known_hashes=existing_hashes(frame_hash(a) for a in frames) - own,
        history=sigma_history(generation.number) or None,
        seed=ctx.seed("select"),
    )
    # Selection works by index: the stored frames keep the ensemble's own spread.
    for atoms in result.picked_frames(frames):
        provenance = dict(atoms.info.get("provenance") or {})
        add_frame(
            atoms,
            source=str(provenance.get("sampler", "explore")),
            generation=generation.number,
            provenance=store_safe(provenance),
            sigma_f=atoms.info.get("sigma_f"),
            sigma_e=atoms.info.get("sigma_e"),
            force_deviation=atoms.arrays.get("force_deviation"),
            selected_as=atoms.info["selected_as"],
        )
    metrics = dict(generation.metrics or {})
    metrics.update(_sigma_summary(result.decisions, np.random.default_rng(ctx.seed("sigma-sample"))))
    Generation.objects(id=generation.id).update_one(
        set__ledger=store_safe(result.ledger),
        set__counts=store_safe(result.counts),
        set__thresholds={
            "calibrated_by": fit.get("generation") if fit else None,
            "lo": result.lo,
            "hi": result.hi,
            "e_lo": result.e_lo,
            "e_hi": result.e_hi,
            "adaptive": result.adaptive,
        },
        set__metrics=store_safe(metrics),
    )
    generation.reload()
    return {"counts": store_safe(result.counts), "selected": len(result.selected), "sentinels": len(result.sentinels)}


def _sigma_summary(decisions, rng: np.random.Generator) -> dict:
    """A sample of σ_F (the history adaptive thresholds read) and its quantiles."""
    sigma = np.array([d.sigma_f for d in decisions if d.sigma_f is not None and np.isfinite(d.sigma_f)])
    sample = sigma if len(sigma) <= 1000 else rng.choice(sigma, 1000, replace=False)
    summary: dict = {"sigma_f_sample": [float(s) for s in sample]}
    if len(sigma):
        summary["sigma_f_quantiles"] = {
            f"q{round(q * 100)}": float(np.quantile(sigma, q)) for q in (0.1, 0.5, 0.9, 0.99)
        }
    return summary


def latest_calibration_fit(number: int) -> Optional[dict]:
    """The newest earlier generation's fit of the true error against the ensemble spread."""
    for previous in Generation.objects(number__lt=number).order_by("-number").only("number", "metrics").limit(5):
        fit = (previous.metrics or {}).get("calibration_fit")
        if fit and fit.get("force_scale") is not None:
            return {**fit, "generation": previous.number}
    return None


def frames_to_label(config: SelfplayConfig, generation: Generation) -> list[Frame]:
    """Frames of this generation picked for labelling with neither label nor failure yet."""
    from pipeline.store import done_hashes

    done = done_hashes(config.dft.theory_key())
    picked = Frame.objects(generation=generation.number, selected_as__in=["candidate", "sentinel"]).order_by("id")
    return [frame for frame in picked if frame.hash not in done]


def store_outcome(config: SelfplayConfig, generation: Generation, frame: Frame, outcome) -> str:
    """Store one labeller outcome at once; returns "labelled" or "failed"."""
    from pipeline.store import add_failure, add_label

    theory = config.dft.theory_key()
    if outcome.ok:
        add_label(
            frame,
            theory=theory,
            energy=outcome.energy,
            forces=outcome.forces,
            stress=outcome.stress,
            theory_spec=store_safe(config.dft.theory_spec()),
            info=store_safe(outcome.info),
            wall_time=outcome.info.get("wall_time_s"),
            generation=generation.number,
            **outcome.state_fields(),
        )
        return "labelled"
    add_failure(
        frame,
        theory=theory,
        reason=f"{outcome.kind}: {outcome.reason}",
        attempts=store_safe(outcome.attempts),
        generation=generation.number,
    )
    return "failed"


def label_workdir(config: SelfplayConfig) -> Path:
    """Where labeller kinds that write files (the ``ase`` kind) get a folder per frame."""
    return Path(config.workdir) / "labels"


def label_stage(ctx: StageContext) -> dict:
    """Label what is not yet labelled, storing each outcome as it arrives."""
    config, generation = ctx.config, ctx.generation
    pending = frames_to_label(config, generation)
    new = {"labelled": 0, "failed": 0}
    # Time waiting for outcomes is the work; storing them is overhead.
    outcomes = iter(ctx.labeller(config, pending, ctx.progress))
    work_seconds = 0.0
    while True:
        waited = time.perf_counter()
        try:
            frame, outcome = next(outcomes)
        except StopIteration:
            work_seconds += time.perf_counter() - waited
            break
        work_seconds += time.perf_counter() - waited
        new[store_outcome(config, generation, frame, outcome)] += 1
    theory = config.dft.theory_key()
    picked = Frame.objects(generation=generation.number, selected_as__in=["candidate", "sentinel"]).count()
    labelled = Label.objects(generation=generation.number, theory=theory).count()
    failed = Failure.objects(generation=generation.number, theory=theory).count()
    fraction = labelled / picked if picked else 1.0
    if fraction < config.generation.min_labelled_fraction:
        raise GenerationFailed(
            f"generation {generation.number}: only {labelled} of {picked} frames labelled "
            f"({fraction:.0%} < min_labelled_fraction {config.generation.min_labelled_fraction:.0%}); "
            f"{failed} DFT failures recorded"
        )
    return {
        "picked": picked,
        "labelled": labelled,
        "failed": failed,
        "new": new,
        "labelled_fraction": fraction,
        "work_seconds": work_seconds,
    }


def generation_labelled_atoms(generation: Generation, theory: str) -> list[Atoms]:
    labels = list(Label.objects(generation=generation.number, theory=theory))
    frames = {f.id: f for f in Frame.objects(id__in=[label.frame.id for label in labels])}
    out = []
    for label in labels:
        frame = frames[label.frame.id]
        atoms = label.to_atoms(frame)
        atoms.info["selected_as"] = frame.selected_as
        out.append(atoms)
    return out


def report_stage(ctx: StageContext, write_files: bool = True) -> dict:
    """Model error on the new labels, ledger completion, snapshot and report."""
    from potential.evaluation import model_errors

    config, generation, model = ctx.config, ctx.generation, ctx.model()
    theory = config.dft.theory_key()
    labelled = generation_labelled_atoms(generation, theory)
    predictions = model.evaluate(labelled) if model is not None and labelled else []
    sentinel = [a.info.get("selected_as") == "sentinel" for a in labelled]
    stats, calibration = model_errors(model, *_subset(labelled, predictions, [not s for s in sentinel]))
    sentinel_stats, sentinel_calibration = model_errors(model, *_subset(labelled, predictions, sentinel))
    element_sets = {
        column: [doc.elements for doc in document.objects(generation=generation.number, theory=theory).only("elements")]
        for column, document in zip(ledgers.LABEL_COLUMNS, (Label, Failure))
    }
    ledger = ledgers.with_labels(generation.ledger or {}, *element_sets.values())
    counts = {**(generation.counts or {}), **{column: len(sets) for column, sets in element_sets.items()}}
    metrics = dict(generation.metrics or {})
    metrics["model"] = stats.to_dict() if stats else None
    metrics["sentinel"] = sentinel_stats.to_dict() if sentinel_stats else None
    metrics["calibration"] = calibration + sentinel_calibration
    # The fit of the true error against the spread, over everything this generation labelled
    # (candidates lean to high σ, sentinels are random: together they span the range).
    union, _ = model_errors(model, labelled, predictions or None)
    metrics["calibration_fit"] = union.calibration_fit if union else None
    metrics["stage_seconds"] = {s: stage_state(generation, s).get("seconds") for s in stage_names()}
    probes = evaluate_probe_sets(config, generation, model)
    if probes is None:
        metrics.pop("probes", None)  # a cold start has no model to score
    else:
        metrics["probes"] = probes
    Generation.objects(id=generation.id).update_one(
        set__ledger=ledger, set__counts=counts, set__metrics=store_safe(metrics)
    )
    generation.reload()
    write_dashboard_summary(generation)
    files = write_outputs(config, generation) if write_files else {}
    return {"counts": counts, "model_error": metrics["model"], "probes": sorted(probes or {}), "files": files}


def evaluate_probe_sets(config: SelfplayConfig, generation: Generation, model) -> Optional[dict]:
    """``{probe set: errors}`` of ``model`` on every probe set at a theory it trains on
    (:func:`training_theories`); None without a model.

    Each entry is :meth:`potential.evaluation.ErrorStats.to_dict` plus ``trained_on_labels``
    (the labels the evaluated model trained on), ``model``, ``theory`` and ``probe_set``
    (the set's id). It is stored on the generation as soon as it is computed, and a rerun
    of an interrupted report stage takes it from there instead of evaluating again while
    the set and the model are the same ones: a rerun gives the same metrics, and costs
    only the sets not yet scored.
    """
    if model is None:
        return None
    from pipeline.probes import probe_atoms, probe_sets
    from potential.evaluation import model_errors

    version = generation.model_version or latest_model(before=generation.number + 1)
    model_name = version.name if version is not None else None
    trained_on = int(((version.trained_on or {}).get("frames") or 0) if version is not None else 0)
    earlier = (generation.metrics or {}).get("probes") or {}
    out: dict[str, dict] = {}
    for probe in probe_sets(theories=training_theories(config)):
        previous = earlier.get(probe.name)
        if isinstance(previous, dict) and previous.get("probe_set") == probe.id and previous.get("model") == model_name:
            out[probe.name] = previous
            continue
        try:
            structures = probe_atoms(probe.name)
        except StoreError as exc:  # removed (or being removed) while this report ran
            log.warning("generation %d: probe set %s not scored: %s", generation.number, probe.name, exc)
            continue
        stats, _ = model_errors(model, structures)
        entry = store_safe(
            {
                **stats.to_dict(),
                "trained_on_labels": trained_on,
                "model": model_name,
                "theory": probe.theory,
                "probe_set": probe.id,
            }
        )
        # Kept at once (names carry no "." or "$": pipeline.probes.check_name).
        Generation._get_collection().update_one(
            {"_id": generation.id}, {"$set": {f"metrics.probes.{probe.name}": entry}}
        )
        out[probe.name] = entry
    return out


def _subset(frames: list, predictions: list, keep: list[bool]) -> tuple[list, Optional[list]]:
    chosen = [i for i, flag in enumerate(keep) if flag]
    return [frames[i] for i in chosen], ([predictions[i] for i in chosen] if predictions else None)


def write_dashboard_summary(generation: Generation) -> None:
    """The dashboard's per-generation summary (its labels and failures are final from here on).

    Without it the dashboard aggregates this generation live on every refresh: slower,
    never wrong, so a failure here is logged and the generation goes on.
    """
    try:
        from pipeline.dashboard.summaries import write_generation_summary

        write_generation_summary(generation.number)
    except Exception as exc:  # noqa: BLE001 - the summary is an optimisation of the dashboard
        log.warning("generation %d: dashboard summary not written: %s", generation.number, exc)


def write_outputs(config: SelfplayConfig, generation: Generation) -> dict:
    files = {}
    workdir = Path(config.workdir)
    if config.generation.export_hdf5:
        from pipeline.export import export_snapshot

        path = workdir / "snapshots" / f"selfplay-gen{generation.number:04d}.h5"
        summary = export_snapshot(path, format="hdf5")
        files["hdf5"] = str(path)
        files["hdf5_frames"] = summary.n_frames
    if config.generation.write_report:
        try:
            from pipeline.dashboard.report import write_report
        except ImportError:  # the dashboard extra is not installed
            log.warning("dashboard extra not installed: no HTML report written")
        else:
            path = workdir / "reports" / f"selfplay-gen{generation.number:04d}.html"
            # Written by the report stage, the last one: the generation is marked completed
            # right after it, and the report shows it so rather than as "running".
            write_report(path, finishing=generation.number)
            files["report"] = str(path)
    return files


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str
    run: Callable[[StageContext], dict]
    #: Prefect runs it as a subflow on the configured task runner (threads or Dask).
    fan_out: bool = False
    #: The ``Generation.counts`` columns it fills, in the order tables show them.
    counts: tuple[str, ...] = ()


STAGES: list[Stage] = [
    Stage("train", train_stage),
    Stage("explore", explore_stage),
    Stage("select", select_stage, counts=ledgers.SELECTION_COLUMNS),
    Stage("label", label_stage, fan_out=True),
    Stage("report", report_stage, counts=ledgers.LABEL_COLUMNS),
]


def stage_names() -> tuple[str, ...]:
    return tuple(stage.name for stage in STAGES)


def count_columns() -> tuple[str, ...]:
    """Every ``Generation.counts`` column the stages fill, in table order."""
    return tuple(column for stage in STAGES for column in stage.counts)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage named {name!r}; the stages are {', '.join(stage_names())}")


def register_stage(stage: Stage, *, after: str) -> None:
    """Insert ``stage`` into the table after the stage named ``after`` (both drivers run it)."""
    if stage.name in stage_names():
        raise ValueError(f"a stage named {stage.name!r} exists already")
    STAGES.insert(stage_names().index(get_stage(after).name) + 1, stage)


def unregister_stage(name: str) -> None:
    STAGES.remove(get_stage(name))


def run_one(ctx: StageContext, stage: Stage) -> dict:
    """Run ``stage`` unless it completed before; its state is recorded on the generation."""
    return run_stage(ctx.generation, stage.name, lambda: stage.run(ctx))


def start_generation(config: SelfplayConfig, number: Optional[int] = None) -> Generation:
    """The generation to work on: the unfinished one (resume), ``number``, or a new one."""
    return open_generation(stage_names(), config.public_dict(), config.dft.theory_key(), number)


def run_generation(
    config: SelfplayConfig,
    *,
    number: Optional[int] = None,
    progress: bool = False,
    stop_after: Optional[str] = None,
    **collaborators,
) -> Generation:
    """Every stage of the table in this process (no Prefect), resuming whatever is unfinished.

    ``collaborators`` are :class:`StageContext` fields (``trainer``, ``explorer``,
    ``labeller``, ``model_loader``) that replace the real ones.
    """
    if stop_after is not None:
        get_stage(stop_after)  # a typo is an error, not a full generation
    generation = start_generation(config, number)
    ctx = StageContext(config, generation, progress=progress, **collaborators)
    for stage in list(STAGES):
        run_one(ctx, stage)
        if stage.name == stop_after:
            return generation
    finish_generation(generation)
    return generation
