"""The explore stage's work: every enabled sampler of the configuration, with the current model."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from ase import Atoms

from flows.config import SelfplayConfig
from flows.stage_state import stage_seed
from pipeline.documents import Frame, Label
from pipeline.reads import label_query


def database_structures(
    count: int, rng: np.random.Generator, elements: Iterable[str], imported_share: float = 0.0
) -> list[Atoms]:
    """Up to ``count`` labelled frames made only of ``elements``, drawn at random; with
    ``imported_share``, that share of them drawn first from the imported frames (the
    structures a user seeded the store with), the rest from every labelled frame."""
    if count <= 0:
        return []
    collection = Label._get_collection()
    query = label_query(elements=elements)
    hashes = sorted(collection.distinct("frame_hash", query))
    if not hashes:
        return []
    imported = sorted(collection.distinct("frame_hash", {**query, "source": "import"})) if imported_share > 0 else []
    first = min(round(imported_share * count), len(imported))
    # with nothing drawn first, ``others`` is ``hashes`` and the draw is the plain one
    chosen = [imported[i] for i in rng.choice(len(imported), size=first, replace=False)] if first else []
    others = sorted(set(hashes) - set(chosen))
    chosen += [others[i] for i in rng.choice(len(others), size=min(count, len(hashes)) - first, replace=False)]
    by_hash = {f.hash: f for f in Frame.objects(hash__in=chosen)}
    structures = []
    for frame_hash in chosen:
        atoms = by_hash[frame_hash].to_atoms()
        atoms.info = {"parent": frame_hash}
        structures.append(atoms)
    return structures


def _all_elements() -> list[str]:
    from ase.data import chemical_symbols

    from pipeline.atoms import MAX_Z

    return list(chemical_symbols[1 : MAX_Z + 1])


def explore(config: SelfplayConfig, number: int, model) -> tuple[list[Atoms], dict]:
    """Run every enabled sampler with ``model`` (None: model-free samplers only)."""
    frames: list[Atoms] = []
    report: dict = {}
    samplers = (("random", _random), ("substitution", _substitution), ("relax", _relax), ("melt_quench", _melt_quench))
    for name, sampler in samplers:
        batch, summary = sampler(config, number, model)
        frames += batch
        if summary is not None:
            report[name] = summary
    return frames, report


def _seed(config: SelfplayConfig, number: int, stage: str) -> int:
    return stage_seed(config.seed, number, stage)


def _random(config: SelfplayConfig, number: int, model):
    from samplers.random_structures import sample_random

    section = config.explore.random
    if not (section.enabled and section.count):
        return [], None
    batch = list(sample_random(model, section.build(config.elements), _seed(config, number, "random"), section.count))
    return batch, {"frames": len(batch)}


def _substitution(config: SelfplayConfig, number: int, model):
    from samplers.substitution import sample_substitution

    section = config.explore.substitution
    if not (section.enabled and section.count):
        return [], None
    rng = np.random.default_rng(_seed(config, number, "substitution-seeds"))
    seeds = database_structures(round(section.from_database * section.count), rng, _all_elements())
    batch = list(
        sample_substitution(
            model, section.build(config.elements), _seed(config, number, "substitution"), section.count, seeds or None
        )
    )
    return batch, {"frames": len(batch), "database_seeds": len(seeds)}


def _starts(section, config: SelfplayConfig, number: int, sampler: str, count: int) -> list[Atoms]:
    """``count`` starting structures: a ``from_database`` share of stored frames, the rest random."""
    from samplers.random_structures import random_structures

    rng = np.random.default_rng(_seed(config, number, f"{sampler}-seeds"))
    starts = database_structures(round(section.from_database * count), rng, config.elements, section.from_imported)
    fresh = count - len(starts)
    if fresh:
        starts += random_structures(
            section.build_start(config.elements), _seed(config, number, f"{sampler}-starts"), fresh
        )
    return starts


def _relax(config: SelfplayConfig, number: int, model):
    from samplers.dynamics import stop_summary, trajectory_frames
    from samplers.relax import relax_structures

    section = config.explore.relax
    if not (section.enabled and section.count):
        return [], None
    if model is None:
        return [], {"skipped": "no model yet (cold start)"}
    starts = _starts(section, config, number, "relax", section.count)
    trajectories = relax_structures(model, starts, section.params, _seed(config, number, "relax"))
    batch = list(trajectory_frames(trajectories, section.params.include_stop_frames))
    return batch, {"frames": len(batch), "relaxations": len(starts), "stop_reasons": stop_summary(trajectories)}


def _melt_quench(config: SelfplayConfig, number: int, model):
    from samplers.dynamics import stop_summary, trajectory_frames
    from samplers.melt_quench import run_melt_quench
    from samplers.relax import relaxed_end_points

    section = config.explore.melt_quench
    if not (section.enabled and section.trajectories):
        return [], None
    if model is None:
        return [], {"skipped": "no model yet (cold start)"}
    starts = _starts(section, config, number, "melt-quench", section.trajectories)
    relax = section.build_relax()
    if relax is not None:
        starts = relaxed_end_points(model, starts, relax)
    trajectories = run_melt_quench(model, starts, section.build(), _seed(config, number, "melt-quench"))
    batch = list(trajectory_frames(trajectories, section.params.include_stop_frames))
    return batch, {"frames": len(batch), "trajectories": len(starts), "stop_reasons": stop_summary(trajectories)}
