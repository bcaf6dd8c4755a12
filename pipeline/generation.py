"""One self-play generation as plain, resumable stages: train → explore → select → label → report.

Each stage records its state on the :class:`~pipeline.documents.Generation` document and
writes what it produced to the store before it is marked completed, so a rerun after a
crash at any point continues where the last run stopped:

* ``train``   the ensemble goes to GridFS (:class:`ModelVersion`) before completion;
  an interrupted training is redone from the same seed.
* ``explore`` the explored frames (with σ_F, descriptors, provenance) are stored as one
  compressed, bit-exact array archive in GridFS; an interrupted exploration is redone
  from the same seeds and model, giving the same frames.
* ``select``  picked frames are inserted idempotently (content hash), then the ledger.
* ``label``   every DFT outcome is stored the moment it arrives; a rerun labels only
  frames with neither a label nor a failure at this level of theory.
* ``report``  metrics, the ledger's labelled/failed columns, snapshot and report.

Nothing here knows Prefect: ``flows/`` wraps these functions in tasks, and
:func:`run_generation` runs them in-process.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from ase import Atoms

from pipeline.config import SelfplayConfig
from pipeline.documents import Failure, Frame, Generation, Label, ModelVersion, utcnow
from pipeline.errors import SelfplayError, StoreError

log = logging.getLogger(__name__)

STAGES = ("train", "explore", "select", "label", "report")


class GenerationFailed(SelfplayError):
    """A generation ran but did not meet its completion criteria (e.g. too few labels)."""


# ------------------------------------------------------------------- bookkeeping


def stage_seed(config: SelfplayConfig, number: int, stage: str, index: int = 0) -> int:
    """A reproducible seed per (config seed, generation, stage, sampler)."""
    digest = hashlib.sha256(f"{config.seed}:{number}:{stage}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_generation(config: SelfplayConfig, number: Optional[int] = None) -> Generation:
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
        stages={stage: {"status": "pending"} for stage in STAGES},
        config=config.public_dict(),
        theory=config.dft.theory_key(),
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
        result=_jsonable(result),
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


# ------------------------------------------------------------- frame archives


def pack_frames(frames: list[Atoms]) -> bytes:
    """Explored frames as one compressed npz: exact floats, σ_F, descriptors, provenance."""
    sizes = np.array([len(a) for a in frames], dtype=np.int64)
    deviations = [a.arrays.get("force_deviation") for a in frames]
    descriptors = [a.info.get("descriptor") for a in frames]
    width = max((len(d) for d in descriptors if d is not None), default=0)
    descriptor_matrix = np.full((len(frames), width), np.nan)
    for i, d in enumerate(descriptors):
        if d is not None:
            descriptor_matrix[i] = np.asarray(d, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        offsets=np.concatenate([[0], np.cumsum(sizes)]),
        numbers=np.concatenate([a.numbers for a in frames]) if frames else np.zeros(0, int),
        positions=np.concatenate([a.positions for a in frames]) if frames else np.zeros((0, 3)),
        cells=np.stack([a.cell.array for a in frames]) if frames else np.zeros((0, 3, 3)),
        pbc=np.stack([a.pbc for a in frames]) if frames else np.zeros((0, 3), bool),
        force_deviation=np.concatenate([d if d is not None else np.full(len(a), np.nan) for a, d in zip(frames, deviations)])
        if frames
        else np.zeros(0),
        descriptors=descriptor_matrix,
        info=np.array(
            [json.dumps({k: v for k, v in a.info.items() if k != "descriptor"}, default=_json_default) for a in frames]
        ),
    )
    return buffer.getvalue()


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def unpack_frames(data: bytes) -> list[Atoms]:
    archive = np.load(io.BytesIO(data), allow_pickle=False)
    offsets = archive["offsets"]
    frames = []
    for i in range(len(offsets) - 1):
        lo, hi = offsets[i], offsets[i + 1]
        atoms = Atoms(
            numbers=archive["numbers"][lo:hi], positions=archive["positions"][lo:hi], cell=archive["cells"][i], pbc=archive["pbc"][i]
        )
        deviation = archive["force_deviation"][lo:hi]
        if not np.isnan(deviation).all():
            atoms.arrays["force_deviation"] = deviation.copy()
        atoms.info.update(json.loads(str(archive["info"][i])))
        descriptor = archive["descriptors"][i] if archive["descriptors"].shape[1] else None
        if descriptor is not None and not np.isnan(descriptor).all():
            atoms.info["descriptor"] = descriptor.copy()
        frames.append(atoms)
    return frames


# ------------------------------------------------------------------ the model


def model_cache_dir(config: SelfplayConfig) -> Path:
    return Path(config.workdir) / "models"


def save_model_version(number: int, directory: Path, metrics: dict, trained_on: dict) -> ModelVersion:
    """Archive a checkpoint directory into GridFS as this generation's model (idempotent)."""
    name = f"gen-{number:04d}"
    existing = ModelVersion.objects(name=name).first()
    if existing is not None:
        return existing
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(Path(directory).iterdir()):
            archive.add(path, arcname=path.name)
    payload = buffer.getvalue()
    meta = json.loads((Path(directory) / "model.json").read_text()) if (Path(directory) / "model.json").exists() else {}
    model = ModelVersion(
        generation=number,
        name=name,
        checkpoint_sha256=hashlib.sha256(payload).hexdigest(),
        hyperparameters=json.loads(json.dumps(meta, default=str)),
        metrics=metrics,
        trained_on=trained_on,
    )
    model.weights.put(payload, filename=f"{name}.tar.gz", content_type="application/gzip")
    try:
        model.save(force_insert=True)
    except Exception:
        model.weights.delete()
        existing = ModelVersion.objects(name=name).first()
        if existing is None:
            raise
        return existing
    return model


def fetch_model(model: ModelVersion, cache: Path) -> Path:
    """The checkpoint directory of ``model``, unpacked from GridFS into ``cache`` once."""
    target = Path(cache) / model.name
    marker = target / ".sha256"
    if marker.exists() and marker.read_text() == model.checkpoint_sha256:
        return target
    payload = model.weights.read()
    if hashlib.sha256(payload).hexdigest() != model.checkpoint_sha256:
        raise StoreError(f"model {model.name}: stored weights do not match their checksum")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    marker.write_text(model.checkpoint_sha256)
    return target


def latest_model(before: Optional[int] = None) -> Optional[ModelVersion]:
    query = ModelVersion.objects if before is None else ModelVersion.objects(generation__lt=before)
    return query.order_by("-generation").first()


def load_generation_model(config: SelfplayConfig, generation: Generation):
    """The ensemble that explores in ``generation`` (its own, else the latest earlier one), or None."""
    from potential.checkpoint import load_ensemble

    model = generation.model_version or latest_model(before=generation.number + 1)
    if model is None:
        return None
    return load_ensemble(fetch_model(model, model_cache_dir(config)), device=_device(config))


def _device(config: SelfplayConfig) -> Optional[str]:
    return None if config.resources.device == "auto" else config.resources.device


# ------------------------------------------------------------------- stages


def training_theories(config: SelfplayConfig) -> list[str]:
    return [config.dft.theory_key(), *config.generation.training_theories]


def train_stage(config: SelfplayConfig, generation: Generation) -> dict:
    """Train this generation's ensemble on every label so far (warm start from the last)."""
    from pipeline.export import iter_labelled
    from potential.train import train_ensemble

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
    previous = latest_model(before=generation.number)
    warm_start = fetch_model(previous, model_cache_dir(config)) if previous is not None else None
    out_dir = Path(config.workdir) / "training" / f"gen-{generation.number:04d}"
    training = config.training.model_copy(update={"seed": stage_seed(config, generation.number, "train")})
    work_started = time.perf_counter()
    result = train_ensemble(
        frames, training, out_dir, model_config=config.model, warm_start=warm_start, device=_device(config)
    )
    work_seconds = time.perf_counter() - work_started
    counts: dict[str, int] = defaultdict(int)
    for atoms in frames:
        for element in set(atoms.get_chemical_symbols()):
            counts[element] += 1
    summary = _jsonable(result.summary())
    model = save_model_version(
        generation.number,
        out_dir,
        metrics=summary,
        trained_on={
            "frames": len(frames),
            "theories": training_theories(config),
            "per_element": dict(sorted(counts.items())),
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


def _jsonable(value):
    """JSON-able copy whose dict keys are valid field names on every server ("." and "$" are not)."""
    return _safe_keys(json.loads(json.dumps(value, default=_json_default)))


def _safe_keys(value):
    if isinstance(value, dict):
        return {str(k).replace(".", "_").lstrip("$"): _safe_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe_keys(v) for v in value]
    return value


def _database_structures(count: int, rng: np.random.Generator, elements: Iterable[str]) -> list[Atoms]:
    """Up to ``count`` labelled frames made only of ``elements``, drawn at random."""
    from pipeline.export import label_query

    if count <= 0:
        return []
    query = label_query(elements=elements)
    hashes = sorted(Label._get_collection().distinct("frame_hash", query))
    if not hashes:
        return []
    chosen = rng.choice(len(hashes), size=min(count, len(hashes)), replace=False)
    frames = Frame.objects(hash__in=[hashes[i] for i in chosen])
    by_hash = {f.hash: f for f in frames}
    structures = []
    for i in chosen:
        atoms = by_hash[hashes[i]].to_atoms()
        atoms.info = {"parent": hashes[i]}
        structures.append(atoms)
    return structures


def explore(config: SelfplayConfig, number: int, model) -> tuple[list[Atoms], dict]:
    """Run every enabled sampler with ``model`` (None: model-free samplers only)."""
    from samplers.melt_quench import sample_melt_quench
    from samplers.random_structures import RandomStructureConfig, random_structures, sample_random
    from samplers.substitution import sample_substitution

    explore_cfg = config.explore
    frames: list[Atoms] = []
    report: dict = {}
    if explore_cfg.random.enabled and explore_cfg.random.count:
        batch = list(sample_random(model, explore_cfg.random.build(config.elements), stage_seed(config, number, "random"), explore_cfg.random.count))
        frames += batch
        report["random"] = {"frames": len(batch)}
    if explore_cfg.substitution.enabled and explore_cfg.substitution.count:
        sub = explore_cfg.substitution
        rng = np.random.default_rng(stage_seed(config, number, "substitution-seeds"))
        seeds = _database_structures(round(sub.from_database * sub.count), rng, _all_elements())
        structures = seeds if seeds else None
        batch = list(sample_substitution(model, sub.build(config.elements), stage_seed(config, number, "substitution"), sub.count, structures))
        frames += batch
        report["substitution"] = {"frames": len(batch), "database_seeds": len(seeds)}
    mq = explore_cfg.melt_quench
    if mq.enabled and mq.trajectories:
        if model is None:
            report["melt_quench"] = {"skipped": "no model yet (cold start)"}
        else:
            rng = np.random.default_rng(stage_seed(config, number, "melt-quench-seeds"))
            starts = _database_structures(round(mq.from_database * mq.trajectories), rng, config.elements)
            fresh = mq.trajectories - len(starts)
            if fresh:
                start_cfg = RandomStructureConfig(elements=config.elements, **mq.start)
                starts += random_structures(start_cfg, stage_seed(config, number, "melt-quench-starts"), fresh)
            batch = list(sample_melt_quench(model, mq.build(), stage_seed(config, number, "melt-quench"), starts))
            stops: dict[str, int] = defaultdict(int)
            for atoms in batch:
                reason = (atoms.info.get("provenance") or {}).get("stop_reason")
                if reason:
                    stops[str(reason)] += 1
            frames += batch
            report["melt_quench"] = {"frames": len(batch), "trajectories": len(starts), "stop_reasons": dict(stops)}
    return frames, report


def _all_elements() -> list[str]:
    from ase.data import chemical_symbols

    from pipeline.atoms import MAX_Z

    return list(chemical_symbols[1 : MAX_Z + 1])


def explore_stage(config: SelfplayConfig, generation: Generation, model) -> dict:
    work_started = time.perf_counter()
    frames, report = explore(config, generation.number, model)
    work_seconds = time.perf_counter() - work_started
    payload = pack_frames(frames)
    generation.reload()
    if generation.explored:
        generation.explored.delete()  # a half-finished earlier attempt
    generation.explored.put(payload, filename=f"gen-{generation.number:04d}-explored.npz")
    generation.save()
    sigma = [a.info.get("sigma_f") for a in frames if a.info.get("sigma_f") is not None]
    return {
        "frames": len(frames),
        "scored": len(sigma),
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


def select_stage(config: SelfplayConfig, generation: Generation) -> dict:
    from pipeline.hashing import frame_hash
    from pipeline.selection import select_frames
    from pipeline.store import add_frame, existing_hashes

    frames = explored_frames(generation)
    known = existing_hashes(frame_hash(a) for a in frames)
    result = select_frames(
        frames,
        config.selection,
        known_hashes=known,
        history=sigma_history(generation.number) or None,
        seed=stage_seed(config, generation.number, "select"),
    )
    for atoms in result.picked_frames(frames):
        provenance = dict(atoms.info.get("provenance") or {})
        add_frame(
            atoms,
            source=str(provenance.get("sampler", "explore")),
            generation=generation.number,
            provenance=_jsonable(provenance),
            sigma_f=atoms.info.get("sigma_f"),
            force_deviation=atoms.arrays.get("force_deviation"),
            selected_as=atoms.info["selected_as"],
        )
    sigma = np.array([d.sigma_f for d in result.decisions if d.sigma_f is not None and np.isfinite(d.sigma_f)])
    rng = np.random.default_rng(stage_seed(config, generation.number, "sigma-sample"))
    sample = sigma if len(sigma) <= 1000 else rng.choice(sigma, 1000, replace=False)
    metrics = dict(generation.metrics or {})
    metrics["sigma_f_sample"] = [float(s) for s in sample]
    if len(sigma):
        metrics["sigma_f_quantiles"] = {f"q{round(q * 100)}": float(np.quantile(sigma, q)) for q in (0.1, 0.5, 0.9, 0.99)}
    Generation.objects(id=generation.id).update_one(
        set__ledger=_jsonable(result.ledger),
        set__counts=_jsonable(result.counts),
        set__thresholds={"lo": result.lo, "hi": result.hi, "adaptive": result.adaptive},
        set__metrics=_jsonable(metrics),
    )
    generation.reload()
    return {"counts": _jsonable(result.counts), "selected": len(result.selected), "sentinels": len(result.sentinels)}


# --------------------------------------------------------------------- labels


def frames_to_label(config: SelfplayConfig, generation: Generation) -> list[Frame]:
    """Frames of this generation picked for labelling with neither label nor failure yet."""
    from pipeline.store import done_hashes

    done = done_hashes(config.dft.theory_key())
    picked = Frame.objects(generation=generation.number, selected_as__in=["candidate", "sentinel"]).order_by("id")
    return [frame for frame in picked if frame.hash not in done]


def store_outcome(config: SelfplayConfig, generation: Generation, frame: Frame, outcome) -> str:
    """Store one DFT outcome at once; returns "labelled" or "failed"."""
    from pipeline.store import add_failure, add_label

    theory = config.dft.theory_key()
    if outcome.ok:
        add_label(
            frame,
            theory=theory,
            energy=outcome.energy,
            forces=outcome.forces,
            stress=outcome.stress,
            theory_spec=_jsonable(config.dft.theory_spec()),
            info=_jsonable(outcome.info),
            wall_time=outcome.info.get("wall_time_s"),
            generation=generation.number,
            **outcome.state_fields(),
        )
        return "labelled"
    add_failure(
        frame,
        theory=theory,
        reason=f"{outcome.kind}: {outcome.reason}",
        attempts=_jsonable(outcome.attempts),
        generation=generation.number,
    )
    return "failed"


def label_workdir(config: SelfplayConfig) -> Path:
    """Where labeller kinds that write files (the ``ase`` kind) get a folder per frame."""
    return Path(config.workdir) / "labels"


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


def label_stage(
    config: SelfplayConfig,
    generation: Generation,
    labeller: Optional[Callable[[SelfplayConfig, list[Frame], bool], Iterable[tuple[Frame, object]]]] = None,
    progress: bool = False,
) -> dict:
    pending = frames_to_label(config, generation)
    labeller = labeller or label_with_processes
    new = {"labelled": 0, "failed": 0}
    # Time waiting for DFT outcomes is the work; storing them is overhead.
    outcomes = iter(labeller(config, pending, progress))
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
    result = {
        "picked": picked,
        "labelled": labelled,
        "failed": failed,
        "new": new,
        "labelled_fraction": fraction,
        "work_seconds": work_seconds,
    }
    if fraction < config.generation.min_labelled_fraction:
        raise GenerationFailed(
            f"generation {generation.number}: only {labelled} of {picked} frames labelled "
            f"({fraction:.0%} < min_labelled_fraction {config.generation.min_labelled_fraction:.0%}); "
            f"{failed} DFT failures recorded"
        )
    return result


# --------------------------------------------------------------------- report


@dataclass
class ErrorStats:
    frames: int
    energy_mae_per_atom: float
    force_mae: float
    force_rmse: float
    per_element: dict

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "energy_mae_per_atom": self.energy_mae_per_atom,
            "force_mae": self.force_mae,
            "force_rmse": self.force_rmse,
            "per_element": self.per_element,
        }


def model_errors(model, labelled: list[Atoms]) -> tuple[Optional[ErrorStats], list[dict]]:
    """Errors of ``model`` against labels, and per-frame calibration points (σ_F vs error)."""
    if model is None or not labelled:
        return None, []
    predictions = model.evaluate(labelled)
    energy_errors, force_errors = [], []
    per_element: dict[str, list[float]] = defaultdict(list)
    calibration = []
    for atoms, prediction in zip(labelled, predictions):
        forces = atoms.get_forces()
        error = np.asarray(prediction["forces"]) - forces
        norms = np.abs(error)
        energy_errors.append(abs(float(prediction["energy"]) - atoms.get_potential_energy()) / len(atoms))
        force_errors.append(norms.ravel())
        for symbol, row in zip(atoms.get_chemical_symbols(), norms):
            per_element[symbol].extend(row.tolist())
        deviation = np.asarray(prediction["force_deviation"])
        calibration.append(
            {
                "sigma_f": float(deviation.max()),
                "force_error_max": float(np.linalg.norm(error, axis=1).max()),
                "force_rmse": float(np.sqrt((error**2).mean())),
                "selected_as": atoms.info.get("selected_as"),
                "n_atoms": len(atoms),
            }
        )
    all_forces = np.concatenate(force_errors)
    stats = ErrorStats(
        frames=len(labelled),
        energy_mae_per_atom=float(np.mean(energy_errors)),
        force_mae=float(all_forces.mean()),
        force_rmse=float(np.sqrt((all_forces**2).mean())),
        per_element={el: {"force_mae": float(np.mean(v)), "n_atoms": len(v) // 3} for el, v in sorted(per_element.items())},
    )
    return stats, calibration


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


def report_stage(config: SelfplayConfig, generation: Generation, model, write_files: bool = True) -> dict:
    """Model error on the new labels, ledger completion, snapshot and report."""
    theory = config.dft.theory_key()
    labelled = generation_labelled_atoms(generation, theory)
    stats, calibration = model_errors(model, [a for a in labelled if a.info.get("selected_as") != "sentinel"])
    sentinel_stats, sentinel_calibration = model_errors(model, [a for a in labelled if a.info.get("selected_as") == "sentinel"])
    ledger = {element: dict(row) for element, row in (generation.ledger or {}).items()}
    for name, document in (("labelled", Label), ("dft_failed", Failure)):
        for frame in document.objects(generation=generation.number, theory=theory).only("elements"):
            for element in frame.elements:
                ledger.setdefault(element, {}).setdefault(name, 0)
                ledger[element][name] += 1
    for row in ledger.values():
        row.setdefault("labelled", 0)
        row.setdefault("dft_failed", 0)
    counts = dict(generation.counts or {})
    counts["labelled"] = Label.objects(generation=generation.number, theory=theory).count()
    counts["dft_failed"] = Failure.objects(generation=generation.number, theory=theory).count()
    metrics = dict(generation.metrics or {})
    metrics["model"] = stats.to_dict() if stats else None
    metrics["sentinel"] = sentinel_stats.to_dict() if sentinel_stats else None
    metrics["calibration"] = calibration + sentinel_calibration
    metrics["stage_seconds"] = {s: stage_state(generation, s).get("seconds") for s in STAGES}
    Generation.objects(id=generation.id).update_one(set__ledger=ledger, set__counts=counts, set__metrics=_jsonable(metrics))
    generation.reload()
    write_dashboard_summary(generation)
    files = {}
    if write_files:
        files = write_outputs(config, generation)
    return {"counts": counts, "model_error": metrics["model"], "files": files}


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


def finish_generation(generation: Generation) -> None:
    Generation.objects(id=generation.id).update_one(set__status="completed", set__finished_at=utcnow(), set__error=None)
    generation.reload()


# --------------------------------------------------------------- in-process run


def run_stage(generation: Generation, stage: str, work: Callable[[], dict]) -> dict:
    """Run ``work`` as ``stage`` unless it already completed; record its state either way."""
    if is_done(generation, stage):
        log.info("generation %d: %s already completed, not redone", generation.number, stage)
        return stage_state(generation, stage).get("result") or {}
    started = begin_stage(generation, stage)
    try:
        result = work()
    except BaseException as exc:
        fail_generation(generation, stage, exc)
        raise
    complete_stage(generation, stage, started, result)
    return result


def run_generation(
    config: SelfplayConfig,
    *,
    number: Optional[int] = None,
    progress: bool = False,
    stop_after: Optional[str] = None,
) -> Generation:
    """All stages in this process (no Prefect), resuming whatever is unfinished."""
    generation = open_generation(config, number)
    model = None

    def explorer():
        return load_generation_model(config, generation)

    run_stage(generation, "train", lambda: train_stage(config, generation))
    if stop_after != "train":
        model = explorer()
        run_stage(generation, "explore", lambda: explore_stage(config, generation, model))
    for stage, work in (
        ("select", lambda: select_stage(config, generation)),
        ("label", lambda: label_stage(config, generation, progress=progress)),
        ("report", lambda: report_stage(config, generation, model)),
    ):
        if stop_after in STAGES[: STAGES.index(stage)]:
            return generation
        run_stage(generation, stage, work)
    finish_generation(generation)
    return generation
