"""The explore stage's work: every enabled sampler of the configuration, with the current model."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
from ase import Atoms

from flows.config import SelfplayConfig
from flows.stage_state import stage_seed
from pipeline.documents import Frame, Label
from pipeline.reads import label_query


def database_structures(count: int, rng: np.random.Generator, elements: Iterable[str]) -> list[Atoms]:
    """Up to ``count`` labelled frames made only of ``elements``, drawn at random."""
    if count <= 0:
        return []
    query = label_query(elements=elements)
    hashes = sorted(Label._get_collection().distinct("frame_hash", query))
    if not hashes:
        return []
    chosen = rng.choice(len(hashes), size=min(count, len(hashes)), replace=False)
    by_hash = {f.hash: f for f in Frame.objects(hash__in=[hashes[i] for i in chosen])}
    structures = []
    for i in chosen:
        atoms = by_hash[hashes[i]].to_atoms()
        atoms.info = {"parent": hashes[i]}
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
    for name, sampler in (("random", _random), ("substitution", _substitution), ("melt_quench", _melt_quench)):
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


def _melt_quench(config: SelfplayConfig, number: int, model):
    from samplers.melt_quench import sample_melt_quench
    from samplers.random_structures import random_structures

    section = config.explore.melt_quench
    if not (section.enabled and section.trajectories):
        return [], None
    if model is None:
        return [], {"skipped": "no model yet (cold start)"}
    rng = np.random.default_rng(_seed(config, number, "melt-quench-seeds"))
    starts = database_structures(round(section.from_database * section.trajectories), rng, config.elements)
    fresh = section.trajectories - len(starts)
    if fresh:
        starts += random_structures(
            section.build_start(config.elements), _seed(config, number, "melt-quench-starts"), fresh
        )
    batch = list(sample_melt_quench(model, section.build(), _seed(config, number, "melt-quench"), starts))
    stops: dict[str, int] = defaultdict(int)
    for atoms in batch:
        reason = (atoms.info.get("provenance") or {}).get("stop_reason")
        if reason:
            stops[str(reason)] += 1
    return batch, {"frames": len(batch), "trajectories": len(starts), "stop_reasons": dict(stops)}
