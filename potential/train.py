"""Training of an ensemble in one pass: shared mini-batches, per-member bootstrap weights.

Every member sees the same mini-batches (so the graph is built once per batch), but
each member weights every frame by how often that frame occurs in the member's own
bootstrap resample of the training set (0, 1, 2, ... times). That is the classical
bootstrap expressed as frame weights; together with different initial weights it makes
the members disagree where the data are thin.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from pipeline.errors import ConfigError, DataFileError
from potential.checkpoint import load_ensemble, save_ensemble
from potential.config import ModelConfig, TrainConfig
from potential.data import Labels, fit_element_refs, frame_labels
from potential.graph import FrameGraph, collate, frame_graph
from potential.model import N_ELEMENTS, EnsemblePotential, build_ensemble, resolve_device

log = logging.getLogger(__name__)

VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])


@dataclass
class EpochMetrics:
    epoch: int
    lr: float
    train_loss: float
    val_loss: float | None
    val_energy_mae_per_atom: float | None  # eV/atom, ensemble mean prediction
    val_force_mae: float | None  # eV/Å, mean |ΔF| over components
    val_force_mae_per_element: dict[str, float] = field(default_factory=dict)
    val_stress_mae: float | None = None  # eV/Å³
    val_mean_force_deviation: float | None = None  # mean σ_i over validation atoms, eV/Å
    seconds: float = 0.0


@dataclass
class TrainResult:
    ensemble: EnsemblePotential
    metrics: list[EpochMetrics]
    best_epoch: int
    n_train: int
    n_val: int
    val_force_baseline_mae: float | None  # MAE of predicting the mean training force
    out_dir: Path | None
    seconds: float

    @property
    def best(self) -> EpochMetrics:
        return next(m for m in self.metrics if m.epoch == self.best_epoch)

    def summary(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.metrics),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "val_force_baseline_mae": self.val_force_baseline_mae,
            "best": asdict(self.best),
            "seconds": self.seconds,
        }


@dataclass
class _Sample:
    graph: FrameGraph
    labels: Labels
    residual_energy: float = 0.0  # energy minus element references


def _prepare(frames: list[Atoms], cutoff: float) -> list[_Sample]:
    samples = []
    for index, atoms in enumerate(frames):
        name = f"training frame {index}"
        labels = frame_labels(atoms, name)
        samples.append(_Sample(graph=frame_graph(atoms, cutoff, name), labels=labels))
    return samples


class _Batch:
    """Collated graph plus targets of a list of samples.

    The frames' neighbour lists are built once (``_prepare``); a batch only concatenates
    them. Validation batches never change, so they are collated once per training run
    and reused every epoch (see ``_validation_batches``).
    """

    def __init__(self, samples: list[_Sample], device, dtype):
        self.size = len(samples)
        self.graph = collate([s.graph for s in samples], device, dtype)
        self.n_atoms = self.graph.n_atoms.to(torch.float64)
        self.residual_energy = torch.tensor([s.residual_energy for s in samples], dtype=torch.float64, device=device)
        self.forces = torch.as_tensor(np.concatenate([s.labels.forces for s in samples]), dtype=dtype, device=device)
        has_stress = [s.labels.stress is not None for s in samples]
        self.stress_mask = torch.tensor(has_stress, dtype=dtype, device=device)
        self.n_stress = sum(has_stress)
        self.any_stress = self.n_stress > 0
        stress = np.stack([s.labels.stress if s.labels.stress is not None else np.zeros(6) for s in samples])
        self.stress = torch.as_tensor(stress, dtype=dtype, device=device)
        self.numbers = self.graph.numbers
        # host copy of the element counts (force components per element), for metrics
        self.element_counts = np.bincount(np.concatenate([s.graph.numbers for s in samples]), minlength=N_ELEMENTS)


def _frame_errors(model: EnsemblePotential, batch: _Batch, create_graph: bool):
    """Per member and frame: squared energy error per atom, summed squared force error,
    mean squared stress error; plus the predictions (for metrics)."""
    pred = model(batch.graph, forces=True, stress=batch.any_stress, create_graph=create_graph)
    ref = pred.energy.new_zeros(batch.graph.n_structures).index_add_(
        0, batch.graph.batch, model.element_refs[batch.graph.numbers]
    )
    learned = pred.energy - ref  # (K, B) float64
    energy_sq = ((learned - batch.residual_energy) / batch.n_atoms) ** 2
    diff = pred.forces - batch.forces
    force_sq = (diff * diff).sum(-1)  # (K, N)
    force_sq = force_sq.new_zeros(force_sq.shape[0], batch.graph.n_structures).index_add_(
        1, batch.graph.batch, force_sq
    )
    stress_sq = None
    stress_pred = None
    if batch.any_stress:
        volumes = torch.where(batch.graph.volumes > 0, batch.graph.volumes, torch.ones_like(batch.graph.volumes))
        stress_pred = (pred.virial / volumes.view(1, -1, 1, 1))[:, :, VOIGT[0], VOIGT[1]]  # (K, B, 6)
        stress_sq = ((stress_pred - batch.stress) ** 2).mean(-1) * batch.stress_mask
    return energy_sq, force_sq, stress_sq, pred, stress_pred


def _member_loss(cfg: TrainConfig, batch: _Batch, weights: torch.Tensor, errors) -> torch.Tensor:
    """(K,) weighted loss of each member; ``weights`` (K, B) are bootstrap counts."""
    energy_sq, force_sq, stress_sq = errors[:3]
    w = weights.to(force_sq.dtype)
    frames = w.sum(1).clamp(min=1e-12)
    loss = cfg.energy_weight * (w.to(energy_sq.dtype) * energy_sq).sum(1).to(force_sq.dtype) / frames
    atoms = (w * batch.n_atoms.to(w.dtype)).sum(1).clamp(min=1e-12)
    loss = loss + cfg.force_weight * (w * force_sq).sum(1) / (3.0 * atoms)
    if stress_sq is not None and cfg.stress_weight > 0:
        labelled = (w * batch.stress_mask).sum(1).clamp(min=1e-12)
        loss = loss + cfg.stress_weight * (w * stress_sq).sum(1) / labelled
    return loss


def _lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


@torch.no_grad()
def _ema_update(ema: EnsemblePotential, model: EnsemblePotential, decay: float) -> None:
    # one multi-tensor op instead of one small op per parameter
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def _validation_batches(samples: list[_Sample], device, dtype, batch_size: int) -> list[_Batch]:
    return [
        _Batch([samples[i] for i in chunk], device, dtype) for chunk in _batches(np.arange(len(samples)), batch_size)
    ]


def _validate(model: EnsemblePotential, cfg: TrainConfig, batches: list[_Batch], device) -> dict:
    """Validation loss (mean over members) and metrics of the ensemble-mean prediction.

    Sums stay on the device and are read back once, after the last batch."""
    k = model.n_members
    zero = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum, e_abs, f_abs, s_abs, sigma_sum = zero, zero, zero, zero, zero
    per_element_abs = torch.zeros(N_ELEMENTS, dtype=torch.float64, device=device)
    per_element_count = np.zeros(N_ELEMENTS, dtype=np.int64)
    loss_frames, f_count, s_count = 0, 0, 0
    for batch in batches:
        errors = _frame_errors(model, batch, create_graph=False)
        weights = torch.ones(k, batch.size, device=device)
        loss_sum = loss_sum + _member_loss(cfg, batch, weights, errors).detach().mean().to(torch.float64) * batch.size
        loss_frames += batch.size
        pred, stress_pred = errors[3], errors[4]
        learned = pred.energy.detach().mean(0)
        ref = learned.new_zeros(batch.graph.n_structures).index_add_(
            0, batch.graph.batch, model.element_refs[batch.graph.numbers]
        )
        e_abs = e_abs + (((learned - ref) - batch.residual_energy) / batch.n_atoms).abs().sum()
        forces = pred.forces.detach()
        mean_forces = forces.mean(0)
        sigma_sum = sigma_sum + ((forces - mean_forces) ** 2).sum(-1).mean(0).sqrt().sum().to(torch.float64)
        abs_err = (mean_forces - batch.forces).abs().to(torch.float64)  # (N, 3)
        f_abs = f_abs + abs_err.sum()
        f_count += abs_err.numel()
        per_element_abs.index_add_(0, batch.numbers, abs_err.sum(1))
        per_element_count += 3 * batch.element_counts
        if stress_pred is not None:
            mask = batch.stress_mask.bool()
            s_abs = s_abs + (stress_pred.detach().mean(0)[mask] - batch.stress[mask]).abs().sum().to(torch.float64)
            s_count += 6 * batch.n_stress
    loss_sum, e_abs, f_abs, s_abs, sigma_sum = torch.stack([loss_sum, e_abs, f_abs, s_abs, sigma_sum]).tolist()
    per_element = per_element_abs.tolist()
    n_atoms = f_count // 3
    return {
        "val_loss": loss_sum / max(1, loss_frames),
        "val_energy_mae_per_atom": e_abs / max(1, loss_frames),
        "val_force_mae": f_abs / max(1, f_count),
        "val_force_mae_per_element": {
            chemical_symbols[z]: per_element[z] / float(per_element_count[z]) for z in np.flatnonzero(per_element_count)
        },
        "val_stress_mae": s_abs / s_count if s_count else None,
        "val_mean_force_deviation": sigma_sum / max(1, n_atoms),
    }


def train_ensemble(
    frames: list[Atoms],
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    model_config: ModelConfig | None = None,
    warm_start: str | Path | EnsemblePotential | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train an ensemble on labelled frames; returns the best (EMA) ensemble and metrics.

    ``warm_start`` (a checkpoint directory or an ensemble) continues from earlier
    weights; its architecture wins over ``model_config``. With ``out_dir`` the best
    ensemble is saved there (``weights.safetensors`` + ``model.json``) with
    ``metrics.json`` beside it.
    """
    cfg = config or TrainConfig()
    started = time.perf_counter()
    device = resolve_device(device)
    if not frames:
        raise DataFileError("no training frames")
    # One generator for every random choice of the run, drawn from in a fixed order
    # (subsample, split, bootstrap, then the epochs' shuffles): the seed fixes the run.
    rng = np.random.default_rng(cfg.seed)
    model, model_cfg = _warm_start_model(warm_start, model_config, cfg, device)
    data = _training_data(frames, cfg, model_cfg.cutoff, rng)
    if model is None:
        model = _new_ensemble(model_cfg, cfg, data, device)
    else:
        model.set_element_refs(data.refs)
    training = _Training.start(model, cfg, len(data.train), rng, device)
    val_batches = _validation_batches(data.val, device, model.dtype, max(cfg.batch_size, 16))
    baseline = _force_baseline_mae(data.train, data.val)

    metrics = _run_epochs(training, data, val_batches, rng)

    result = TrainResult(
        ensemble=training.best_ensemble(),
        metrics=metrics,
        best_epoch=training.best_epoch,
        n_train=len(data.train),
        n_val=len(data.val),
        val_force_baseline_mae=baseline,
        out_dir=Path(out_dir) if out_dir is not None else None,
        seconds=time.perf_counter() - started,
    )
    if out_dir is not None:
        _write_result(Path(out_dir), result, cfg)
    return result


# --- data preparation ---------------------------------------------------------------------


@dataclass
class _TrainingData:
    """The run's frames split into training and validation, energies relative to ``refs``."""

    train: list[_Sample]
    val: list[_Sample]
    refs: np.ndarray  # per-element reference energies fitted on the training frames


def _warm_start_model(
    warm_start: str | Path | EnsemblePotential | None,
    model_config: ModelConfig | None,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[EnsemblePotential | None, ModelConfig]:
    """``(a copy of the warm-start ensemble or None, the architecture to train)``."""
    if warm_start is None:
        return None, model_config or ModelConfig()
    model = warm_start if isinstance(warm_start, EnsemblePotential) else load_ensemble(warm_start, device)
    model = copy.deepcopy(model).to(device)
    if model.n_members != cfg.ensemble_size:
        raise ConfigError(f"warm start has {model.n_members} members but ensemble_size is {cfg.ensemble_size}")
    if model_config is not None and model_config != model.config:
        log.warning("warm start: keeping the checkpoint's architecture, ignoring the given model_config")
    return model, model.config


def _training_data(frames: list[Atoms], cfg: TrainConfig, cutoff: float, rng: np.random.Generator) -> _TrainingData:
    """Subsample to ``max_frames``, build the graphs, split, and fit the element references."""
    frames = list(frames)
    if cfg.max_frames is not None and len(frames) > cfg.max_frames:
        keep = np.sort(rng.choice(len(frames), cfg.max_frames, replace=False))
        frames = [frames[i] for i in keep]
    samples = _prepare(frames, cutoff)

    order = rng.permutation(len(samples))
    n_val = int(round(cfg.val_fraction * len(samples)))
    if cfg.val_fraction > 0 and len(samples) >= 5:
        n_val = max(1, n_val)
    n_val = min(n_val, len(samples) - 1)  # at least one training frame
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = [samples[i] for i in train_idx]
    val = [samples[i] for i in val_idx]

    refs = fit_element_refs([s.graph.numbers for s in train], np.array([s.labels.energy for s in train]), N_ELEMENTS)
    missing = sorted({int(z) for s in val for z in s.graph.numbers} - {int(z) for s in train for z in s.graph.numbers})
    if missing:
        log.warning(
            "validation frames contain elements absent from training: %s", [chemical_symbols[z] for z in missing]
        )
    for s in samples:
        s.residual_energy = s.labels.energy - float(refs[s.graph.numbers].sum())
    return _TrainingData(train=train, val=val, refs=refs)


def _new_ensemble(model_cfg: ModelConfig, cfg: TrainConfig, data: _TrainingData, device) -> EnsemblePotential:
    """A fresh ensemble whose output scale and neighbour normalisation fit the training frames."""
    train = data.train
    train_forces = np.concatenate([s.labels.forces for s in train])
    force_rms = float(np.sqrt(np.mean(train_forces**2)))
    residual_per_atom = np.array([s.residual_energy / s.graph.n_atoms for s in train])
    # Forces set the scale; frames (nearly) without forces fall back to the energies' spread.
    scale = force_rms if force_rms > 1e-3 else float(max(np.std(residual_per_atom), 1e-2))
    avg_neighbors = float(sum(len(s.graph.src) for s in train) / sum(s.graph.n_atoms for s in train))
    return build_ensemble(
        model_cfg,
        cfg.ensemble_size,
        cfg.seed,
        device=device,
        element_refs=data.refs,
        energy_scale=scale,
        avg_num_neighbors=max(avg_neighbors, 1.0),
    )


def _force_baseline_mae(train: list[_Sample], val: list[_Sample]) -> float | None:
    """Validation force MAE of always predicting the mean training force (None without validation)."""
    train_mean_force = np.concatenate([s.labels.forces for s in train]).mean(0)
    if not val:
        return None
    return float(np.mean(np.abs(np.concatenate([s.labels.forces for s in val]) - train_mean_force)))


# --- the epoch loop -------------------------------------------------------------------------


@dataclass
class _Training:
    """What the epoch loop changes: weights, EMA, optimizer, schedule position, best epoch."""

    cfg: TrainConfig
    model: EnsemblePotential
    ema: EnsemblePotential  # the evaluated (and returned) weights
    optimizer: torch.optim.Optimizer
    counts: torch.Tensor  # (K, n_train) bootstrap weight of each training frame per member
    device: torch.device
    steps_per_epoch: int
    epochs: int  # cfg.epochs, raised to reach cfg.min_steps
    total_steps: int
    warmup: int
    step: int = 0
    lr: float = 0.0
    loop_started: float = 0.0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0  # epochs since the monitored loss last improved

    @classmethod
    def start(
        cls, model: EnsemblePotential, cfg: TrainConfig, n_train: int, rng: np.random.Generator, device
    ) -> "_Training":
        k = model.n_members
        if cfg.bootstrap and k > 1:
            counts = np.stack([rng.multinomial(n_train, np.full(n_train, 1.0 / n_train)) for _ in range(k)])
        else:
            counts = np.ones((k, n_train))
        ema = copy.deepcopy(model)
        for p in ema.parameters():
            p.requires_grad_(False)
        steps_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
        epochs = max(cfg.epochs, math.ceil((cfg.min_steps or 0) / steps_per_epoch))
        return cls(
            cfg=cfg,
            model=model,
            ema=ema,
            optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay),
            counts=torch.as_tensor(counts, dtype=model.dtype, device=device),
            device=device,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            total_steps=epochs * steps_per_epoch,
            warmup=int(cfg.warmup_epochs * steps_per_epoch),
        )

    def out_of_time(self) -> bool:
        return self.cfg.max_seconds is not None and time.perf_counter() - self.loop_started > self.cfg.max_seconds

    def train_epoch(self, epoch: int, train: list[_Sample], rng: np.random.Generator, progress) -> float:
        """One pass over the shuffled training frames (or until the time budget ends); the mean loss."""
        self.model.train()
        perm = rng.permutation(len(train))
        loss_sum, seen = 0.0, 0
        batch_task = progress.add_task(f"epoch {epoch}", total=self.steps_per_epoch)
        for chunk in _batches(perm, self.cfg.batch_size):
            loss_sum += self._step(epoch, [train[i] for i in chunk], chunk) / self.model.n_members * len(chunk)
            seen += len(chunk)
            progress.advance(batch_task)
            if self.out_of_time():
                break
        progress.remove_task(batch_task)
        return loss_sum / max(1, seen)

    def _step(self, epoch: int, samples: list[_Sample], chunk: np.ndarray) -> float:
        """One optimizer step on one mini-batch; the summed loss of the members."""
        cfg, model = self.cfg, self.model
        self.lr = cfg.learning_rate * _lr_factor(self.step, self.total_steps, self.warmup, cfg.min_learning_rate_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        batch = _Batch(samples, self.device, model.dtype)
        errors = _frame_errors(model, batch, create_graph=True)
        member_losses = _member_loss(cfg, batch, self.counts[:, torch.as_tensor(chunk, device=self.device)], errors)
        loss = member_losses.sum()
        loss_value = float(loss.detach())  # the step's one read-back from the device
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss_value})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip * math.sqrt(model.n_members))
        self.optimizer.step()
        # Short memory early on, while the first steps move the weights far.
        _ema_update(self.ema, model, min(cfg.ema_decay, (1 + self.step) / (10 + self.step)))
        self.step += 1
        return loss_value

    def keep_if_best(self, monitored: float, epoch: int) -> bool:
        """Remember the EMA weights of an improved epoch; True once patience is used up.

        Until ``min_steps`` optimizer steps are done every epoch counts as the best and
        nothing stops: the validation set of an early generation is a frame or two, whose
        loss can stall, or rise, long before the model has learned its training frames, and
        the weights of epoch 3 are no model."""
        # (<=: an epoch ending exactly at min_steps still counts; the first one compared ends after it)
        if self.step <= (self.cfg.min_steps or 0) or monitored < self.best_loss:
            self.best_loss, self.best_epoch, self.stale = monitored, epoch, 0
            self.best_state = {n: t.detach().clone() for n, t in self.ema.state_dict().items()}
            return False
        self.stale += 1
        return self.stale >= self.cfg.patience

    def best_ensemble(self) -> EnsemblePotential:
        """The EMA ensemble with the weights of the best epoch, trainable again, in eval mode."""
        self.ema.load_state_dict(self.best_state)
        for p in self.ema.parameters():
            p.requires_grad_(True)
        self.ema.eval()
        return self.ema


def _run_epochs(
    training: _Training, data: _TrainingData, val_batches: list[_Batch], rng: np.random.Generator
) -> list[EpochMetrics]:
    """Train epoch after epoch until the last, early stopping, or the time budget; the metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = training.cfg
    # The budget is for the epochs: neighbour lists, the reference fit and torch's one-off
    # optimizer import (seconds) are not charged to it.
    training.loop_started = time.perf_counter()
    metrics: list[EpochMetrics] = []
    progress = Progress(
        TextColumn("[bold]train[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not cfg.progress,
        transient=True,
    )
    log.info(
        "training %d members on %d frames (%d validation), %d epochs, device %s",
        training.model.n_members,
        len(data.train),
        len(data.val),
        training.epochs,
        training.device,
    )
    with progress:
        epochs_task = progress.add_task("epochs", total=training.epochs)
        for epoch in range(1, training.epochs + 1):
            t0 = time.perf_counter()
            train_loss = training.train_epoch(epoch, data.train, rng, progress)
            row = EpochMetrics(epoch, training.lr, train_loss, None, None, None)
            if data.val:
                for name, value in _validate(training.ema, cfg, val_batches, training.device).items():
                    setattr(row, name, value)
            row.seconds = time.perf_counter() - t0
            metrics.append(row)
            _report_epoch(row, progress, epochs_task)
            # Without validation frames the training loss is all there is to select on.
            monitored = row.val_loss if row.val_loss is not None else train_loss
            if training.keep_if_best(monitored, epoch):
                log.info("early stop at epoch %d (best %d)", epoch, training.best_epoch)
                break
            if training.out_of_time():
                log.info("training time budget of %.0f s used up at epoch %d", cfg.max_seconds, epoch)
                break
    return metrics


def _report_epoch(row: EpochMetrics, progress, epochs_task) -> None:
    log.info(
        "epoch %d lr %.2e train %.4g val %s force MAE %s",
        row.epoch,
        row.lr,
        row.train_loss,
        f"{row.val_loss:.4g}" if row.val_loss is not None else "-",
        f"{row.val_force_mae:.4g}" if row.val_force_mae is not None else "-",
    )
    progress.update(
        epochs_task,
        advance=1,
        description=f"loss {row.train_loss:.4g}"
        + (f" val F-MAE {row.val_force_mae:.3g} eV/Å" if row.val_force_mae is not None else ""),
    )


def _write_result(out: Path, result: TrainResult, cfg: TrainConfig) -> None:
    """The best ensemble (weights + model.json, with the run's summary) and metrics.json."""
    save_ensemble(result.ensemble, out, extra={"train_config": cfg.model_dump(), **result.summary()})
    (out / "metrics.json").write_text(
        json.dumps({"summary": result.summary(), "epochs": [asdict(m) for m in result.metrics]}, indent=2)
    )
