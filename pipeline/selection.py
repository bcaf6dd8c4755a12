"""Which explored frames are worth a DFT calculation: trust window, dedupe, diversity, cap.

Every explored frame is scored by σ_F, the largest per-atom force deviation across the
ensemble (eV/Å), and classified

* ``accurate``  σ_F < lo   the model already knows this; a few become *sentinels*
  (labelled anyway, to measure the model's true error on what it explores),
* ``candidate`` lo ≤ σ_F < hi   worth labelling,
* ``failed``    σ_F ≥ hi   too far out (usually unphysical) to be worth DFT,
* ``unscored``  no σ_F (no model yet, e.g. generation 0): eligible like a candidate.

σ_F alone misses energy errors: an isolated atom or a frame whose forces vanish by
symmetry has σ_F = 0 however wrong its energy. With ``e_lo``/``e_hi`` set (DP-GEN's
``e_trust_lo``/``e_trust_hi``), σ_E, the ensemble's energy deviation per atom (std of
the members' total energies / number of atoms, eV/atom), is a second trust window: a
frame is ``accurate`` only when σ_F < lo *and* σ_E < e_lo, ``failed`` when σ_F ≥ hi
*or* σ_E ≥ e_hi, and a ``candidate`` otherwise. A score a frame lacks does not vote;
a frame with no score at all is ``unscored``. See :func:`classify` and
:func:`uncertainty_score` (the ranking of candidates).

Candidates then lose frames with bad geometry, exact duplicates (content hash) of each
other and of frames already in the database, and near-duplicates (descriptor distance,
same elements), and the rest are picked for diversity by farthest-point sampling on
the model's descriptors, round-robin over elements from the rarest, up to a cap.

That is ``strategy: uncertainty`` (the default). ``strategy: random`` is the passive
baseline active learning is measured against (``benchmarks/bench_active_learning.py``):
σ_F and σ_E are ignored for picking (frames are still classified, for the ledger), and
``max_selected`` frames are drawn uniformly at random from *every* explored frame that
passes the geometry filter and is neither in the database nor an exact duplicate of an
earlier frame of the batch (no near-duplicate filter, no diversity, no element balance).
Two batch-mode alternatives keep the trust window and the filters of ``uncertainty`` but
weigh uncertainty by how representative a frame is, instead of pushing picks apart:
``weighted`` draws the cap at random with probability ∝ the uncertainty score (so the
picks follow where the explored frames are, tilted towards the uncertain ones), and
``representative`` clusters the eligible frames by k-means on the descriptors into
``max_selected`` clusters and takes the most uncertain frame of each (dense regions get
more clusters; a lone outlier gets at most one pick); with ``per_element_balance`` it
first fills every element's even share of the cap (:func:`element_floor`), rarest
element first, from k-means clusters of that element's frames.

With ``per_sampler_share`` the cap is first shared over the samplers that made the
explored frames (melt/quench MD, random structures, substitution ...), in proportion to
how many sane, new frames each made (:func:`sampler_quotas`: the share random picking
gives them on average), and each share is picked by the strategy among that sampler's
eligible frames. The ensemble doubts random structures far more than MD frames (they lie far
from anything labelled), so that without shares they can take most of every batch by
uncertainty alone, whatever the MD the model will be used for needs. ``sampler_strategy``
names another strategy for a sampler's share: ``{random: random}`` draws the random
structures' share at random from all their sane, new frames (as ``strategy: random``
does) and keeps ensemble disagreement for the rest.

All functions are pure: frames or arrays in, a :class:`SelectionResult` out, with one
:class:`FrameDecision` per input frame and the per-element ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, covalent_radii
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.atoms import MAX_Z, structure_problem
from pipeline.errors import ConfigError, InvalidStructure, validation_message
from pipeline.hashing import frame_hash
from pipeline.ledger import element_ledger, frame_elements, totals

log = logging.getLogger(__name__)

CLASSES = ("accurate", "candidate", "failed", "unscored")

#: Why a candidate (or unscored frame) was not selected.
DROP_REASONS = ("geometry", "duplicate-known", "duplicate-batch", "near-duplicate", "over-cap")


#: How the cap is picked from the eligible frames (see the module docstring).
Strategy = Literal["uncertainty", "random", "weighted", "representative"]


class SelectionConfig(BaseModel):
    """Trust windows and picking rules (σ_F values in eV/Å, σ_E values in eV/atom).

    ``e_lo``/``e_hi`` switch on the energy criterion; both or neither must be given
    (default: off, as DP-GEN's defaults of 1e10 leave it off). They stay fixed when
    ``adaptive`` moves lo/hi.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = Field(
        "uncertainty",
        description="uncertainty: trust window, near-duplicates out, farthest points up to the cap; "
        "random: the cap drawn at random from every sane, new explored frame (the passive baseline); "
        "weighted: trust window, the cap drawn with probability ∝ uncertainty; "
        "representative: trust window, k-means into cap clusters, the most uncertain frame of each",
    )
    lo: float = Field(0.05, gt=0, description="below: accurate (eV/Å)")
    hi: float = Field(0.5, gt=0, description="at or above: failed (eV/Å)")
    max_selected: int = Field(100, ge=0, description="per-generation cap on candidates sent to labelling")
    per_element_balance: bool = Field(
        True,
        description="rare chemistries get picks: uncertainty shares the cap round-robin over elements, rarest "
        "first; representative gives every element an even share of the cap first (element_floor)",
    )
    per_sampler_share: bool = Field(
        False,
        description="share the cap over the samplers that made the explored frames, in proportion to their "
        "sane, new frames (sampler_quotas), each share picked by the strategy among that sampler's eligible frames; "
        "strategy random ignores it (it draws from every frame alike)",
    )
    sampler_strategy: dict[str, Strategy] = Field(
        default_factory=dict,
        description="with per_sampler_share: the strategy of a named sampler's share instead of strategy (e.g. "
        "{random: random}: the random structures' share drawn at random from all their sane, new frames)",
    )
    adaptive: bool = Field(False, description="derive lo/hi from quantiles of recent σ_F history")
    calibrated: bool = Field(
        False,
        description="scale σ_F (per element) and σ_E by the last generation's fit of the true error against "
        "them, so that lo/hi and e_lo/e_hi are expected errors (eV/Å, eV/atom); off until shown to help",
    )
    lo_quantile: float = Field(0.5, ge=0, le=1, description="adaptive lo = this quantile of the history")
    hi_quantile: float = Field(0.95, ge=0, le=1, description="adaptive hi = this quantile of the history")
    lo_bounds: tuple[float, float] = Field((0.02, 0.25), description="adaptive lo is clipped to [min, max]")
    hi_bounds: tuple[float, float] = Field((0.3, 2.0), description="adaptive hi is clipped to [min, max]")
    min_history: int = Field(100, ge=1, description="fewer σ_F values than this: keep the fixed lo/hi")
    min_covalent_ratio: float = Field(
        0.5, ge=0, lt=2, description="geometry filter: closest pair / (sum of covalent radii) must reach this"
    )
    max_volume_per_atom: float = Field(200.0, gt=0, description="geometry filter for periodic cells (Å^3/atom)")
    near_duplicate_distance: float | None = Field(
        None, ge=0, description="absolute descriptor distance below which same-element frames are near-duplicates"
    )
    near_duplicate_relative: float = Field(
        0.05,
        ge=0,
        le=1,
        description="if no absolute distance: this fraction of the median descriptor distance between "
        "same-element candidates",
    )
    sentinel_count: int = Field(0, ge=0, description="accurate frames picked at random for labelling anyway")
    e_lo: float | None = Field(
        None, gt=0, description="σ_E (ensemble energy std per atom, eV/atom) at or above this: not accurate; None: off"
    )
    e_hi: float | None = Field(None, gt=0, description="σ_E at or above this: failed (eV/atom); None: off")

    @model_validator(mode="after")
    def _check(self) -> "SelectionConfig":
        if self.lo >= self.hi:
            raise ValueError(f"lo ({self.lo}) must be below hi ({self.hi})")
        _check_energy_window(self.e_lo, self.e_hi, ValueError)
        if self.sampler_strategy and not self.per_sampler_share:
            raise ValueError("sampler_strategy needs per_sampler_share: true")
        for name in ("lo_bounds", "hi_bounds"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must satisfy 0 < min <= max (got {low}, {high})")
        if self.lo_bounds[1] >= self.hi_bounds[0]:
            raise ValueError(
                f"lo_bounds max ({self.lo_bounds[1]}) must be below hi_bounds min ({self.hi_bounds[0]}) "
                "so that adaptive lo stays below hi"
            )
        if self.lo_quantile >= self.hi_quantile:
            raise ValueError(f"lo_quantile ({self.lo_quantile}) must be below hi_quantile ({self.hi_quantile})")
        return self


def _check_energy_window(e_lo: float | None, e_hi: float | None, error: type[Exception]) -> None:
    """Both or neither of e_lo/e_hi, and e_lo < e_hi."""
    if (e_lo is None) != (e_hi is None):
        raise error(f"e_lo and e_hi go together: give both or neither (got e_lo={e_lo}, e_hi={e_hi})")
    if e_lo is not None and not 0 < e_lo < e_hi:
        raise error(f"energy trust window needs 0 < e_lo < e_hi (got e_lo={e_lo}, e_hi={e_hi})")


def selection_config(**values) -> SelectionConfig:
    """Build a :class:`SelectionConfig`, turning validation problems into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return SelectionConfig(**values)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "selection config")) from None


# ----------------------------------------------------------------------------- scores


def sigma_f(force_deviation: np.ndarray | Sequence[float] | None) -> float:
    """σ_F of one frame: the largest per-atom force deviation (NaN when there is none)."""
    if force_deviation is None:
        return float("nan")
    values = np.asarray(force_deviation, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return float("nan")
    return float(values.max())


def frame_sigma_f(atoms: Atoms) -> float:
    """σ_F from ``arrays['force_deviation']``, else ``info['sigma_f']``, else NaN."""
    if "force_deviation" in atoms.arrays:
        return sigma_f(atoms.arrays["force_deviation"])
    value = atoms.info.get("sigma_f")
    return float("nan") if value is None else float(value)


def frame_sigma_e(atoms: Atoms) -> float:
    """σ_E (eV/atom) from ``info['sigma_e']``, else ``info['energy_deviation']`` / atoms, else NaN."""
    value = atoms.info.get("sigma_e")
    if value is not None:
        return float(value)
    deviation = atoms.info.get("energy_deviation")
    return float("nan") if deviation is None or len(atoms) == 0 else float(deviation) / len(atoms)


def _scores(values: np.ndarray | Sequence[float] | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) != n:
        raise ValueError(f"{len(values)} σ_E values for {n} σ_F values")
    return values


def classify(
    sigma: np.ndarray | Sequence[float],
    lo: float,
    hi: float,
    *,
    sigma_e: np.ndarray | Sequence[float] | None = None,
    e_lo: float | None = None,
    e_hi: float | None = None,
) -> np.ndarray:
    """Class of each frame: accurate, candidate, failed or unscored.

    Force criterion alone (``e_lo``/``e_hi`` None): accurate σ_F < lo, candidate
    lo ≤ σ_F < hi, failed σ_F ≥ hi, unscored NaN. With the energy window: accurate
    only if σ_F < lo and σ_E < e_lo, failed if σ_F ≥ hi or σ_E ≥ e_hi, candidate
    otherwise. A NaN score does not vote (a frame scored by one criterion is judged by
    it alone); unscored means no score at all. +inf counts as a score (failed).
    """
    if not lo < hi:
        raise ConfigError(f"trust window needs lo < hi (got lo={lo}, hi={hi})")
    _check_energy_window(e_lo, e_hi, ConfigError)
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    criteria = [(sigma, lo, hi)]
    if e_lo is not None:
        criteria.append((_scores(sigma_e, len(sigma)), e_lo, e_hi))
    present = [np.isfinite(v) | np.isposinf(v) for v, _, _ in criteria]
    scored = np.logical_or.reduce(present)
    failed = np.logical_or.reduce([p & (v >= h) for p, (v, _, h) in zip(present, criteria)])
    below = np.logical_and.reduce([~p | (v < low) for p, (v, low, _) in zip(present, criteria)])
    classes = np.full(sigma.shape, "unscored", dtype=object)
    classes[scored & ~failed & below] = "accurate"
    classes[scored & ~failed & ~below] = "candidate"
    classes[scored & failed] = "failed"
    return classes


def uncertainty_score(
    sigma: np.ndarray | Sequence[float],
    lo: float,
    *,
    sigma_e: np.ndarray | Sequence[float] | None = None,
    e_lo: float | None = None,
) -> np.ndarray:
    """How uncertain each frame is, in units of its trust thresholds: max(σ_F/lo, σ_E/e_lo).

    Candidates (score ≥ 1) are ranked by it: the most uncertain first when near-duplicates
    are resolved and for the first farthest-point pick. Dividing by the lower thresholds
    makes the two criteria comparable (a score of 2 is "twice past the trust threshold"
    whichever deviation it comes from). A NaN score is left out of the max; frames with
    no score at all get +inf (unscored frames, eligible like candidates, go first). With
    the energy criterion off this is σ_F/lo, which orders frames as σ_F does.
    """
    score = np.asarray(sigma, dtype=np.float64).reshape(-1) / lo
    if e_lo is not None:
        score = np.fmax(score, _scores(sigma_e, len(score)) / e_lo)
    return np.where(np.isnan(score), np.inf, score)


@dataclass(frozen=True)
class Thresholds:
    lo: float
    hi: float
    adaptive: bool  # True when lo/hi came from the history
    n_history: int
    e_lo: float | None = None  # energy window (eV/atom), fixed; None: off
    e_hi: float | None = None


def resolve_thresholds(config: SelectionConfig, history: Sequence[float] | np.ndarray | None = None) -> Thresholds:
    """lo/hi for this batch: the configured ones, or quantiles of recent σ_F clipped to bounds.

    With ``config.adaptive`` and at least ``config.min_history`` finite values in
    ``history``, lo = clip(quantile(history, lo_quantile), lo_bounds) and likewise hi;
    the bounds are validated disjoint, so lo < hi always holds. The energy window
    (``e_lo``/``e_hi``) is passed through as configured.
    """
    values = np.asarray([] if history is None else history, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    energy = {"e_lo": config.e_lo, "e_hi": config.e_hi}
    if not config.adaptive or values.size < config.min_history:
        return Thresholds(config.lo, config.hi, False, int(values.size), **energy)
    lo = float(np.clip(np.quantile(values, config.lo_quantile), *config.lo_bounds))
    hi = float(np.clip(np.quantile(values, config.hi_quantile), *config.hi_bounds))
    return Thresholds(lo, hi, True, int(values.size), **energy)


# ----------------------------------------------------------------------------- geometry


def geometry_problem(
    atoms: Atoms, min_covalent_ratio: float = 0.5, max_volume_per_atom: float | None = 200.0
) -> str | None:
    """Why ``atoms`` is unphysical (one line), or None when it is fine.

    The checks of :func:`pipeline.atoms.structure_problem` with the selection's limits: a
    pair closer than ``min_covalent_ratio`` times the sum of covalent radii (periodic
    images included), a degenerate or exploded periodic cell (volume per atom above
    ``max_volume_per_atom``), besides non-finite positions or cell and unknown elements.
    """
    return structure_problem(
        atoms, min_distance=0.0, min_covalent_ratio=min_covalent_ratio, max_volume_per_atom=max_volume_per_atom
    )


# ----------------------------------------------------------------------------- descriptors

#: Bins of d / (r_cov,i + r_cov,j) for the model-free fingerprint.
_FINGERPRINT_BINS = np.linspace(0.5, 2.0, 16)


def structure_fingerprint(atoms: Atoms) -> np.ndarray:
    """A model-free descriptor for frames that carry none from the model.

    Composition fractions over Z = 1..83, followed by the per-atom histogram of pair
    distances in units of the summed covalent radii (0.5-2.0). Invariant to rotation,
    translation, permutation and supercell choice; good enough to tell structures of one
    trajectory apart from each other and from other chemistries.
    """
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    composition = np.bincount(atoms.numbers, minlength=MAX_Z + 1)[1:].astype(np.float64) / max(n, 1)
    histogram = np.zeros(len(_FINGERPRINT_BINS) - 1)
    if n > 1 or atoms.pbc.any():
        radii = covalent_radii[atoms.numbers]
        cutoff = float(2.0 * 2 * radii.max())
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        ratio = d / (radii[i] + radii[j])
        histogram = np.histogram(ratio, bins=_FINGERPRINT_BINS)[0].astype(np.float64) / n
    return np.concatenate([composition, histogram])


def frame_descriptors(frames: Sequence[Atoms]) -> tuple[np.ndarray, str]:
    """Descriptor matrix of ``frames`` and where it came from ("model" or "fingerprint").

    The model's ``info['descriptor']`` is used when every frame has one of one length;
    otherwise every frame gets :func:`structure_fingerprint` (mixing the two spaces would
    make distances meaningless).
    """
    if not frames:
        return np.zeros((0, 0)), "model"
    model = [frame.info.get("descriptor") for frame in frames]
    if all(d is not None for d in model):
        arrays = [np.asarray(d, dtype=np.float64).reshape(-1) for d in model]
        if len({a.size for a in arrays}) == 1 and all(np.all(np.isfinite(a)) for a in arrays):
            return np.stack(arrays), "model"
    return np.stack([structure_fingerprint(frame) for frame in frames]), "fingerprint"


# ----------------------------------------------------------------------------- picking


def _distances_to(descriptors: np.ndarray, index: int) -> np.ndarray:
    return np.linalg.norm(descriptors - descriptors[index], axis=1)


def farthest_point_sampling(
    descriptors: np.ndarray,
    k: int,
    groups: Sequence[Iterable[str]] | None = None,
    priority: np.ndarray | None = None,
) -> list[int]:
    """Pick ``k`` rows of ``descriptors`` spread as far apart as possible.

    The first pick is the row of highest ``priority`` (e.g. σ_F; ties: lowest index);
    every later pick is the row farthest from all picks so far. With ``groups`` (the
    elements of each row), picks go round-robin over elements ordered from the rarest
    (fewest rows) to the most common, each turn taking the farthest row that contains
    that element, so that a rare element gets its share of the cap instead of being
    crowded out by abundant ones. Returns indices in pick order.
    """
    descriptors = np.asarray(descriptors, dtype=np.float64)
    n = len(descriptors)
    if descriptors.ndim != 2:
        raise ValueError(f"descriptors must be a 2-d array, got shape {descriptors.shape}")
    priority = np.zeros(n) if priority is None else np.nan_to_num(np.asarray(priority, dtype=np.float64), nan=-np.inf)
    k = min(int(k), n)
    if k <= 0:
        return []
    if groups is None:
        members = {"": np.arange(n)}
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} element groups for {n} descriptors")
        by_element: dict[str, list[int]] = {}
        for index, elements in enumerate(groups):
            for element in set(elements):
                by_element.setdefault(element, []).append(index)
        members = {e: np.asarray(rows) for e, rows in by_element.items()}
    # Rarest first; ties in order of atomic number so that the result is deterministic.
    turn_order = sorted(members, key=lambda e: (len(members[e]), atomic_numbers.get(e, 0), e))
    available = np.ones(n, dtype=bool)
    distance = np.full(n, np.inf)
    picks: list[int] = []
    while len(picks) < k:
        progressed = False
        for element in turn_order:
            if len(picks) >= k:
                break
            rows = members[element][available[members[element]]]
            if rows.size == 0:
                continue
            if not picks:
                best = rows[np.argmax(priority[rows])]
            else:
                # Farthest from the picks; ties broken by priority, then by index.
                far = distance[rows]
                tied = rows[far >= far.max()]
                best = tied[np.argmax(priority[tied])]
            picks.append(int(best))
            available[best] = False
            distance = np.minimum(distance, _distances_to(descriptors, best))
            progressed = True
        if not progressed:
            break
    return picks


def near_duplicates(
    descriptors: np.ndarray,
    groups: Sequence[Iterable[str]],
    order: Sequence[int],
    distance: float | None = None,
    relative: float = 0.05,
) -> dict[int, tuple[int, float]]:
    """Rows that lie within a small descriptor distance of an earlier kept row with the same elements.

    Rows are visited in ``order`` (e.g. by decreasing σ_F): a row is kept unless it is
    closer than the threshold to a row kept before it; dropped rows map to
    ``(kept row, distance)``. The threshold is ``distance`` when given, else
    ``relative`` times the median distance between rows with the same elements (so it
    scales with whatever units the model's descriptors have).
    """
    descriptors = np.asarray(descriptors, dtype=np.float64)
    keys = [tuple(sorted(set(g))) for g in groups]
    by_group: dict[tuple, list[int]] = {}
    for row in order:
        by_group.setdefault(keys[row], []).append(int(row))
    threshold = distance
    if threshold is None:
        samples = []
        rng = np.random.default_rng(0)  # subsampling only, for very large groups
        for rows in by_group.values():
            if len(rows) < 2:
                continue
            sub = np.asarray(rows)
            if sub.size > 1000:
                sub = rng.choice(sub, 1000, replace=False)
            block = descriptors[sub]
            d = np.linalg.norm(block[:, None, :] - block[None, :, :], axis=-1)
            samples.append(d[np.triu_indices(len(sub), 1)])
        if not samples:
            return {}
        threshold = relative * float(np.median(np.concatenate(samples)))
    dropped: dict[int, tuple[int, float]] = {}
    if threshold <= 0:
        return dropped
    for rows in by_group.values():
        kept: list[int] = []
        for row in rows:
            if kept:
                d = np.linalg.norm(descriptors[kept] - descriptors[row], axis=1)
                nearest = int(np.argmin(d))
                if d[nearest] < threshold:
                    dropped[row] = (kept[nearest], float(d[nearest]))
                    continue
            kept.append(row)
    return dropped


# ----------------------------------------------------------------------------- result


@dataclass
class FrameDecision:
    """What selection decided about one explored frame."""

    index: int
    hash: str
    elements: list[str]
    sigma_f: float | None
    cls: str  # accurate / candidate / failed / unscored
    selected_as: str | None = None  # "candidate", "sentinel" or None
    reason: str | None = None  # one of DROP_REASONS for eligible frames not selected
    detail: str | None = None
    sigma_e: float | None = None  # ensemble energy deviation per atom (eV/atom), None when not scored


@dataclass
class SelectionResult:
    lo: float
    hi: float
    adaptive: bool
    descriptor_source: str
    decisions: list[FrameDecision]
    selected: list[int]  # indices, in pick order
    sentinels: list[int]
    ledger: dict[str, dict[str, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    e_lo: float | None = None  # energy window applied (eV/atom); None: off
    e_hi: float | None = None

    def picked_frames(self, frames: Sequence[Atoms]) -> list[Atoms]:
        """Copies of the selected then sentinel frames, with ``info['selected_as']``,
        ``info['frame_hash']`` and, when scored, ``info['sigma_e']`` (eV/atom)."""
        out = []
        for index, role in [(i, "candidate") for i in self.selected] + [(i, "sentinel") for i in self.sentinels]:
            frame = frames[index].copy()
            frame.info["selected_as"] = role
            frame.info["frame_hash"] = self.decisions[index].hash
            if self.decisions[index].sigma_e is not None:
                frame.info["sigma_e"] = self.decisions[index].sigma_e
            out.append(frame)
        return out

    def to_dict(self) -> dict:
        """JSON-able record (strict JSON: non-finite σ_F/σ_E become None, the class still tells)."""
        decisions = []
        for decision in self.decisions:
            record = asdict(decision)
            for key in ("sigma_f", "sigma_e"):
                if record[key] is not None and not np.isfinite(record[key]):
                    record[key] = None
            decisions.append(record)
        thresholds = {"lo": self.lo, "hi": self.hi, "adaptive": self.adaptive, "e_lo": self.e_lo, "e_hi": self.e_hi}
        return {
            "thresholds": thresholds,
            "descriptor_source": self.descriptor_source,
            "selected": list(self.selected),
            "sentinels": list(self.sentinels),
            "counts": dict(self.counts),
            "ledger": {e: dict(row) for e, row in self.ledger.items()},
            "decisions": decisions,
        }


# ----------------------------------------------------------------------------- phases


def _score_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) or np.isposinf(value) else None


def _initial_decisions(
    hashes: Sequence[str], element_sets: list[list[str]], sigma: np.ndarray, sigma_e: np.ndarray, classes: np.ndarray
) -> list[FrameDecision]:
    return [
        FrameDecision(
            index=i,
            hash=hashes[i],
            elements=list(element_sets[i]),
            sigma_f=_score_or_none(sigma[i]),
            cls=str(classes[i]),
            sigma_e=_score_or_none(sigma_e[i]),
        )
        for i in range(len(sigma))
    ]


def _drop(decision: FrameDecision, reason: str, detail: str) -> None:
    decision.reason = reason
    decision.detail = detail


def _batch_duplicates(hashes: Sequence[str]) -> dict[int, int]:
    """Frame -> first frame with its content hash, over all frames in input order (so
    that a candidate repeated later in the batch is dropped whatever its class)."""
    first_seen: dict[str, int] = {}
    duplicate_of: dict[int, int] = {}
    for i, h in enumerate(hashes):
        if h in first_seen:
            duplicate_of[i] = first_seen[h]
        else:
            first_seen[h] = i
    return duplicate_of


def _filtered_out(
    i: int, decision: FrameDecision, problems: Sequence[str | None], known: Collection[str], duplicate_of: dict
) -> tuple[str, str] | None:
    """Why frame ``i`` may not be labelled (drop reason and detail: a geometry problem, a
    content hash already stored or seen earlier in the batch), or None for a sane, new frame."""
    if problems[i] is not None:
        return "geometry", problems[i]
    if decision.hash in known:
        return "duplicate-known", "frame already in the database"
    if i in duplicate_of:
        return "duplicate-batch", f"same content hash as frame {duplicate_of[i]}"
    return None


def _eligible(
    decisions: list[FrameDecision],
    problems: Sequence[str | None],
    known: Collection[str],
    duplicate_of: dict[int, int],
    classes: Collection[str] = ("candidate", "unscored"),
) -> list[int]:
    """Frames of ``classes`` (by default candidates and unscored frames) that pass the
    geometry and hash filters; the others of them get their drop reason."""
    eligible = []
    for i, decision in enumerate(decisions):
        if decision.cls not in classes:
            continue
        reason = _filtered_out(i, decision, problems, known, duplicate_of)
        if reason is None:
            eligible.append(i)
        else:
            _drop(decision, *reason)
    return eligible


def _pick_candidates(
    eligible: list[int],
    priority: np.ndarray,
    descriptors: np.ndarray,
    element_sets: list[list[str]],
    decisions: list[FrameDecision],
    config: SelectionConfig,
    cap: int,
) -> list[int]:
    """Near-duplicates out (the most uncertain of them kept), then farthest-point picks up to ``cap``."""
    by_priority = sorted(eligible, key=lambda i: (-priority[i], i))
    near = (
        near_duplicates(
            descriptors,
            element_sets,
            by_priority,
            distance=config.near_duplicate_distance,
            relative=config.near_duplicate_relative,
        )
        if len(eligible) > 1
        else {}
    )
    for i, (kept, distance) in near.items():
        _drop(decisions[i], "near-duplicate", f"descriptor distance {distance:.4g} to frame {kept}")
    pool = [i for i in by_priority if i not in near]
    picks_local = farthest_point_sampling(
        np.asarray(descriptors, dtype=np.float64)[pool] if pool else np.zeros((0, 1)),
        cap,
        groups=[element_sets[i] for i in pool] if config.per_element_balance else None,
        priority=priority[pool] if pool else np.zeros(0),
    )
    selected = [pool[j] for j in picks_local]
    for i in selected:
        decisions[i].selected_as = "candidate"
    chosen = set(selected)
    for i in pool:
        if i not in chosen:
            _drop(decisions[i], "over-cap", f"cap of {cap} reached")
    return selected


def _pick_random(eligible: list[int], decisions: list[FrameDecision], cap: int, seed: int) -> list[int]:
    """``cap`` eligible frames drawn uniformly without replacement (reproducible by ``seed``),
    in draw order; the rest are over the cap."""
    rng = np.random.default_rng([int(seed), 0x52414E44])  # a stream apart from the sentinels'
    order = [eligible[j] for j in rng.permutation(len(eligible))] if eligible else []
    selected = order[:cap]
    for i in selected:
        decisions[i].selected_as = "candidate"
    for i in order[cap:]:
        _drop(decisions[i], "over-cap", f"cap of {cap} reached (random picks)")
    return selected


def _finite_priority(priority: np.ndarray) -> np.ndarray:
    """Priorities with +inf (unscored frames) replaced by the largest finite one (1 if none)."""
    finite = priority[np.isfinite(priority)]
    top = float(finite.max()) if finite.size else 1.0
    return np.where(np.isfinite(priority), priority, top)


def _pick_weighted(
    eligible: list[int], priority: np.ndarray, decisions: list[FrameDecision], cap: int, seed: int
) -> list[int]:
    """``cap`` eligible frames drawn without replacement with probability ∝ uncertainty score."""
    rng = np.random.default_rng([int(seed), 0x57474854])
    if not eligible:
        return []
    weights = _finite_priority(np.asarray(priority, dtype=np.float64)[eligible])
    weights = np.clip(weights, 1e-12, None)
    k = min(cap, len(eligible))
    chosen = rng.choice(len(eligible), size=k, replace=False, p=weights / weights.sum())
    selected = [eligible[j] for j in chosen]
    for i in selected:
        decisions[i].selected_as = "candidate"
    picked = set(selected)
    for i in eligible:
        if i not in picked:
            _drop(decisions[i], "over-cap", f"cap of {cap} reached (weighted draw)")
    return selected


def kmeans_labels(x: np.ndarray, k: int, seed: int, iterations: int = 30, restarts: int = 4) -> np.ndarray:
    """Cluster of each row of ``x`` after k-means: the lowest within-cluster sum of squares of
    ``restarts`` runs (k-means++ start, Lloyd iterations)."""
    rng = np.random.default_rng([int(seed), 0x4B4D])
    best, best_cost = None, np.inf
    for _ in range(restarts):
        labels, cost = _kmeans_once(np.asarray(x, dtype=np.float64), k, rng, iterations)
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def _kmeans_once(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> tuple[np.ndarray, float]:
    n = len(x)
    centres = [x[int(rng.integers(n))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        index = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[index])
        d2 = np.minimum(d2, ((x - x[index]) ** 2).sum(1))
    centres = np.array(centres)
    labels = np.zeros(n, dtype=int)
    for _ in range(iterations):
        distances = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        new = distances.argmin(1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = x[labels == c]
            if len(members):
                centres[c] = members.mean(0)
    return labels, float(((x - centres[labels]) ** 2).sum())


def _standardised(x: np.ndarray) -> np.ndarray:
    scale = x.std(0)
    return (x - x.mean(0)) / np.where(scale > 0, scale, 1.0)


def _topped_up(picked: list[int], rows: np.ndarray, score: np.ndarray, k: int) -> list[int]:
    """``picked`` and then the most uncertain other ``rows`` until there are ``k``: k-means leaves a
    cluster empty when frames share a descriptor (symmetric frames, model-free fingerprints)."""
    chosen = set(picked)
    rest = sorted((int(r) for r in rows if int(r) not in chosen), key=lambda r: (-score[r], r))
    return picked + rest[: max(k - len(picked), 0)]


def _most_uncertain_per_cluster(rows: np.ndarray, x: np.ndarray, score: np.ndarray, k: int, seed: int) -> list[int]:
    """k-means of ``x[rows]`` into ``k`` clusters; the highest-``score`` row of each (all rows if k >= their number)."""
    if k >= len(rows):
        return [int(r) for r in rows]
    labels = kmeans_labels(x[rows], k, seed)
    picked = [
        int(rows[members[np.argmax(score[rows][members])]])
        for c in range(k)
        if (members := np.flatnonzero(labels == c)).size
    ]
    return _topped_up(picked, rows, score, k)


def element_floor(element_sets: Sequence[Sequence[str]], cap: int) -> int:
    """Picks each element should appear in when ``cap`` picks are shared evenly over the
    elements of ``element_sets``: cap × (mean elements per frame) / (number of elements),
    rounded down; what a uniform share of the cap gives every element."""
    elements = {e for s in element_sets for e in s}
    if not elements:
        return 0
    mean_size = float(np.mean([len(set(s)) for s in element_sets]))
    return int(cap * mean_size / len(elements))


def _pick_representative(
    eligible: list[int],
    priority: np.ndarray,
    descriptors: np.ndarray,
    element_sets: list[list[str]],
    decisions: list[FrameDecision],
    cap: int,
    seed: int,
    balance: bool,
) -> list[int]:
    """k-means of the eligible frames into ``cap`` clusters; the most uncertain frame of each.

    With ``balance``, every element first gets its :func:`element_floor` (or all the
    eligible frames that contain it, if fewer), rarest element first: the floor is filled
    with the most uncertain frame of each k-means cluster of that element's frames. The
    rest of the cap goes to the clusters of all eligible frames that hold no pick yet,
    largest first. Without the floor an element that few explored frames contain gets
    no pick for generations on end: k-means gives its frames no cluster of their own, and
    the dataset starves of it (benchmarks/results/active_learning.md, notes section 8).
    """
    if not eligible or cap <= 0:
        return []
    k = min(cap, len(eligible))
    rows = np.arange(len(eligible))
    x = _standardised(np.asarray(descriptors, dtype=np.float64)[eligible])
    score = _finite_priority(np.asarray(priority, dtype=np.float64)[eligible])
    local_sets = [element_sets[i] for i in eligible]
    picked: list[int] = []
    if balance:
        floor = element_floor(local_sets, k)
        holders = {e: rows[[e in s for s in local_sets]] for e in {e for s in local_sets for e in s}}
        for element in sorted(holders, key=lambda e: (len(holders[e]), atomic_numbers.get(e, 0), e)):
            have = sum(element in local_sets[r] for r in picked)
            free = np.array([r for r in holders[element] if r not in picked], dtype=int)
            need = min(floor - have, free.size, k - len(picked))
            if need > 0:
                picked += _most_uncertain_per_cluster(free, x, score, need, seed)
    clusters = kmeans_labels(x, k, seed) if k < len(eligible) else rows
    served = {int(clusters[r]) for r in picked}
    unserved = sorted(
        (c for c in range(k) if c not in served and (clusters == c).any()),
        key=lambda c: (-int((clusters == c).sum()), -float(score[clusters == c].max()), c),
    )
    for c in unserved[: k - len(picked)]:
        members = np.flatnonzero(clusters == c)
        picked.append(int(members[np.argmax(score[members])]))
    selected = [eligible[r] for r in _topped_up(picked, rows, score, k)]
    finite = _finite_priority(np.asarray(priority, dtype=np.float64))
    selected.sort(key=lambda i: (-finite[i], i))
    for i in selected:
        decisions[i].selected_as = "candidate"
    chosen = set(selected)
    for i in eligible:
        if i not in chosen:
            _drop(decisions[i], "over-cap", f"cap of {cap} reached (representative picks)")
    return selected


def _pick_sentinels(
    decisions: list[FrameDecision],
    problems: Sequence[str | None],
    known: Collection[str],
    duplicate_of: dict[int, int],
    count: int,
    seed: int,
) -> list[int]:
    """``count`` accurate, sane, new frames drawn at random (reproducible by ``seed``)."""
    accurate = [
        i
        for i, d in enumerate(decisions)
        if d.cls == "accurate" and d.selected_as is None and _filtered_out(i, d, problems, known, duplicate_of) is None
    ]
    if not count or not accurate:
        return []
    rng = np.random.default_rng(seed)
    sentinels = sorted(int(i) for i in rng.choice(accurate, size=min(count, len(accurate)), replace=False))
    for i in sentinels:
        decisions[i].selected_as = "sentinel"
    return sentinels


def _checked_inputs(
    sigma, sigma_e, element_sets, hashes, descriptors
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    n = len(sigma)
    element_sets = [sorted(set(e), key=lambda s: atomic_numbers.get(s, 0)) for e in element_sets]
    if not (len(element_sets) == len(hashes) == len(descriptors) == n):
        raise ValueError(
            f"selection inputs differ in length: {n} σ_F, {len(element_sets)} element sets, "
            f"{len(hashes)} hashes, {len(descriptors)} descriptors"
        )
    return sigma, _scores(sigma_e, n), element_sets


def _result(
    decisions: list[FrameDecision],
    selected: list[int],
    sentinels: list[int],
    thresholds: Thresholds,
    descriptor_source: str,
) -> SelectionResult:
    """The result with its ledger and counts (and one log line)."""
    element_sets = [d.elements for d in decisions]
    classes = [d.cls for d in decisions]
    is_selected = [d.selected_as == "candidate" for d in decisions]
    is_sentinel = [d.selected_as == "sentinel" for d in decisions]
    ledger = element_ledger(element_sets, classes, is_selected, is_sentinel)
    counts = totals(classes, is_selected, is_sentinel)
    energy = "" if thresholds.e_lo is None else f" e_lo={thresholds.e_lo:.3g} e_hi={thresholds.e_hi:.3g}"
    log.info(
        "selection: %d frames, lo=%.3g hi=%.3g%s%s: %s",
        len(decisions),
        thresholds.lo,
        thresholds.hi,
        " (adaptive)" if thresholds.adaptive else "",
        energy,
        counts,
    )
    return SelectionResult(
        lo=thresholds.lo,
        hi=thresholds.hi,
        adaptive=thresholds.adaptive,
        descriptor_source=descriptor_source,
        decisions=decisions,
        selected=selected,
        sentinels=sentinels,
        ledger=ledger,
        counts=counts,
        e_lo=thresholds.e_lo,
        e_hi=thresholds.e_hi,
    )


def _largest_remainder(weights: dict[str, int], k: int) -> dict[str, int]:
    """``k`` shared over ``weights``' keys in proportion: floors of the exact shares, then one
    more for the largest remainders (ties: the larger weight, then the name)."""
    total = sum(weights.values())
    exact = {s: k * w / total for s, w in weights.items()}
    shares = {s: int(np.floor(e)) for s, e in exact.items()}
    order = sorted(weights, key=lambda s: (-(exact[s] - shares[s]), -weights[s], s))
    for s in order[: k - sum(shares.values())]:
        shares[s] += 1
    return shares


def sampler_quotas(samplers: Sequence[str], cap: int, eligible: Sequence[str] | None = None) -> dict[str, int]:
    """Picks per sampler when ``cap`` picks are shared in proportion to each sampler's frames
    among ``samplers`` (one entry per sane, new explored frame, of any class): the share
    random picking gives each sampler on average. ``eligible`` (one entry per frame that
    may be picked; default: ``samplers``) bounds each share; what a sampler cannot use goes
    to the others, in the same proportions.

    A sampler whose frames the ensemble doubts most (random structures, far from anything
    labelled) would otherwise take most of a batch by uncertainty alone; the shares are
    counted over every sane frame rather than the eligible ones so that frames the trust
    window calls failed or accurate still count for their sampler, as they do for random picks."""
    weights: dict[str, int] = {}
    for sampler in samplers:
        weights[sampler] = weights.get(sampler, 0) + 1
    room: dict[str, int] = {}
    for sampler in samplers if eligible is None else eligible:
        room[sampler] = room.get(sampler, 0) + 1
    quotas = dict.fromkeys(room, 0)
    target = min(max(int(cap), 0), sum(room.values()))
    while (left := target - sum(quotas.values())) > 0:
        open_weights = {s: weights.get(s, 0) or 1 for s in room if quotas[s] < room[s]}
        for s, extra in _largest_remainder(open_weights, left).items():
            quotas[s] += min(extra, room[s] - quotas[s])
    return {s: q for s, q in quotas.items() if q > 0}


def _pick_by_strategy(
    eligible: list[int],
    cap: int,
    priority: np.ndarray,
    descriptors: np.ndarray,
    element_sets: list[list[str]],
    decisions: list[FrameDecision],
    config: SelectionConfig,
    seed: int,
) -> list[int]:
    """Up to ``cap`` of ``eligible`` by ``config.strategy``; the rest are dropped as over the cap."""
    if config.strategy == "random":
        return _pick_random(eligible, decisions, cap, seed)
    if config.strategy == "weighted":
        return _pick_weighted(eligible, priority, decisions, cap, seed)
    if config.strategy == "representative":
        return _pick_representative(
            eligible, priority, descriptors, element_sets, decisions, cap, seed, config.per_element_balance
        )
    return _pick_candidates(eligible, priority, descriptors, element_sets, decisions, config, cap)


def frame_sampler(atoms: Atoms) -> str:
    """The sampler that made a frame (``info['provenance']['sampler']``; "unknown" without one)."""
    provenance = atoms.info.get("provenance")
    sampler = provenance.get("sampler") if isinstance(provenance, dict) else None
    return str(sampler) if sampler else "unknown"


def select_arrays(
    sigma: Sequence[float] | np.ndarray,
    element_sets: Sequence[Iterable[str]],
    hashes: Sequence[str],
    descriptors: np.ndarray,
    config: SelectionConfig,
    *,
    sigma_e: Sequence[float] | np.ndarray | None = None,
    geometry_problems: Sequence[str | None] | None = None,
    known_hashes: Collection[str] = (),
    history: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    descriptor_source: str = "model",
    samplers: Sequence[str] | None = None,
) -> SelectionResult:
    """The selection on plain arrays (one entry per explored frame); see the module docstring.

    ``sigma_e`` is σ_E per frame (eV/atom; NaN or None where not scored), used when the
    config has an energy window; ``geometry_problems[i]`` is None for a physically sane
    frame, else the reason; ``known_hashes`` are content hashes of frames already in the
    database; ``history`` is recent σ_F for adaptive thresholds; ``seed`` drives the
    sentinel draw; ``samplers[i]`` names the sampler of frame i, used with
    ``config.per_sampler_share`` (:func:`sampler_quotas`).

    Phases: classify (trust windows), filter eligible frames (geometry, hashes), rank
    them by :func:`uncertainty_score`, drop near-duplicates and pick for diversity up to
    the cap, draw sentinels, count. With ``config.strategy == "random"`` every class is
    eligible and the cap is drawn at random instead (seeded by ``seed``); ``weighted`` and
    ``representative`` replace the near-duplicate and farthest-point phase (see the
    module docstring), also seeded by ``seed``.
    """
    sigma, sigma_e, element_sets = _checked_inputs(sigma, sigma_e, element_sets, hashes, descriptors)
    n = len(sigma)
    if samplers is not None and len(samplers) != n:
        raise ValueError(f"{len(samplers)} sampler names for {n} frames")
    problems = list(geometry_problems) if geometry_problems is not None else [None] * n
    thresholds = resolve_thresholds(config, history)
    classes = classify(sigma, thresholds.lo, thresholds.hi, sigma_e=sigma_e, e_lo=thresholds.e_lo, e_hi=thresholds.e_hi)
    decisions = _initial_decisions(hashes, element_sets, sigma, sigma_e, classes)
    known = set(known_hashes)
    duplicate_of = _batch_duplicates(hashes)
    if config.strategy == "random":
        eligible = _eligible(decisions, problems, known, duplicate_of, classes=CLASSES)
        selected = _pick_random(eligible, decisions, config.max_selected, seed)
    else:
        eligible = _eligible(decisions, problems, known, duplicate_of)
        priority = uncertainty_score(sigma, thresholds.lo, sigma_e=sigma_e, e_lo=thresholds.e_lo)
        if config.per_sampler_share and samplers is not None:
            sane = [i for i, d in enumerate(decisions) if _filtered_out(i, d, problems, known, duplicate_of) is None]
            # a share drawn at random draws, like strategy random, from every sane, new frame
            at_random = {name for name, strategy in config.sampler_strategy.items() if strategy == "random"}
            pickable = set(eligible)  # the eligible frames are sane and new
            pools: dict[str, list[int]] = {}
            for i in sane:
                if samplers[i] in at_random or i in pickable:
                    pools.setdefault(samplers[i], []).append(i)
            room = [name for name, rows in pools.items() for _ in rows]
            shares = sampler_quotas([samplers[i] for i in sane], config.max_selected, eligible=room)
            selected = []
            for sampler, quota in shares.items():
                strategy = config.sampler_strategy.get(sampler, config.strategy)
                own = config if strategy == config.strategy else config.model_copy(update={"strategy": strategy})
                selected += _pick_by_strategy(
                    pools[sampler], quota, priority, descriptors, element_sets, decisions, own, seed
                )
            for i in pickable - set(selected):  # a sampler whose share rounded to none
                if decisions[i].reason is None:
                    _drop(decisions[i], "over-cap", f"no share of the cap of {config.max_selected} for {samplers[i]}")
            finite = _finite_priority(priority)
            selected.sort(key=lambda i: (-finite[i], i))
        else:
            selected = _pick_by_strategy(
                eligible, config.max_selected, priority, descriptors, element_sets, decisions, config, seed
            )
    sentinels = _pick_sentinels(decisions, problems, known, duplicate_of, config.sentinel_count, seed)
    return _result(decisions, selected, sentinels, thresholds, descriptor_source)


def select_frames(
    frames: Sequence[Atoms],
    config: SelectionConfig,
    *,
    known_hashes: Collection[str] = (),
    history: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    descriptors: np.ndarray | None = None,
) -> SelectionResult:
    """Select from explored frames (``arrays['force_deviation']`` / ``info['sigma_f']``, ``info['descriptor']``).

    σ_E comes from ``info['sigma_e']`` (or ``info['energy_deviation']`` / atoms, see
    :func:`frame_sigma_e`). Frames without any score are "unscored". ``descriptors``
    overrides the frames' own (one row per frame); without either, a model-free
    fingerprint is used.
    """
    for index, frame in enumerate(frames):
        # What no selection can work with raises; the other geometry problems drop the frame.
        if not isinstance(frame, Atoms) or len(frame) == 0:
            raise InvalidStructure(f"frame {index}: {structure_problem(frame, distances=False)}")
    sigma = np.array([frame_sigma_f(frame) for frame in frames], dtype=np.float64)
    sigma_e = np.array([frame_sigma_e(frame) for frame in frames], dtype=np.float64)
    if descriptors is None:
        descriptors, source = frame_descriptors(frames)
    else:
        descriptors = np.asarray(descriptors, dtype=np.float64)
        source = "given"
        if len(descriptors) != len(frames):
            raise ValueError(f"{len(descriptors)} descriptors for {len(frames)} frames")
    problems = [geometry_problem(frame, config.min_covalent_ratio, config.max_volume_per_atom) for frame in frames]
    return select_arrays(
        sigma,
        [frame_elements(frame.numbers) for frame in frames],
        [frame_hash(frame) for frame in frames],
        descriptors if len(frames) else np.zeros((0, 1)),
        config,
        sigma_e=sigma_e,
        geometry_problems=problems,
        known_hashes=known_hashes,
        history=history,
        seed=seed,
        descriptor_source=source,
        samplers=[frame_sampler(frame) for frame in frames],
    )
