"""Element substitution in seed structures (prototypes or frames from the database).

Every species of a seed is mapped to an element of the configured set, either by
chemical similarity — pymatgen's data-mined ionic substitution probabilities (Hautier et
al., Inorg. Chem. 50, 656 (2011); the lambda table ships with pymatgen, no network) —
or uniformly at random. Species already in the set may be kept (``keep_probability``)
but at least one species always changes, and two species never map to the same element
unless the set has fewer elements than the seed has species. The cell is rescaled for
the new covalent radii, the atoms rattled, and optionally the structure is relaxed or
briefly run through MD with the model. The mapping is recorded in each frame's provenance.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols, covalent_radii
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.atoms import MAX_Z, check_atoms, min_distance_ratio
from pipeline.errors import ConfigError
from samplers.config import ElementSet
from samplers.dynamics import MeltQuenchConfig, trajectory_frames
from samplers.frames import make_frame, parent_hash, provenance
from samplers.model import score_frames
from samplers.relax import RelaxConfig, relax_structures

log = logging.getLogger(__name__)

SAMPLER = "substitute"

#: Built-in seeds: real structures of well-known compounds (conventional cells, lattice
#: parameters in Å), built with ase.build.bulk or pymatgen's space-group constructor.
#: (pymatgen's own "rocksalt" prototype puts both species on the same 4a orbit, so
#: rocksalt comes from ASE.)
PROTOTYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "fcc-Cu": ("ase", {"name": "Cu", "crystalstructure": "fcc", "a": 3.615, "cubic": True}),
    "bcc-Fe": ("ase", {"name": "Fe", "crystalstructure": "bcc", "a": 2.866, "cubic": True}),
    "hcp-Mg": ("ase", {"name": "Mg", "crystalstructure": "hcp", "a": 3.209, "c": 5.211}),
    "diamond-Si": ("ase", {"name": "Si", "crystalstructure": "diamond", "a": 5.431, "cubic": True}),
    "rocksalt-NaCl": ("ase", {"name": "NaCl", "crystalstructure": "rocksalt", "a": 5.640, "cubic": True}),
    "cscl-CsCl": ("ase", {"name": "CsCl", "crystalstructure": "cesiumchloride", "a": 4.123}),
    "zincblende-ZnS": ("ase", {"name": "ZnS", "crystalstructure": "zincblende", "a": 5.409, "cubic": True}),
    "wurtzite-ZnO": ("ase", {"name": "ZnO", "crystalstructure": "wurtzite", "a": 3.250, "c": 5.207}),
    "fluorite-CaF2": ("ase", {"name": "CaF2", "crystalstructure": "fluorite", "a": 5.463, "cubic": True}),
    "antifluorite-Li2O": (
        "pymatgen",
        {
            "spacegroup": "Fm-3m",
            "lattice": ("cubic", 4.611),
            "species": ["Li", "O"],
            "coords": [[0.25, 0.25, 0.25], [0, 0, 0]],
        },
    ),
    "perovskite-SrTiO3": (
        "pymatgen",
        {
            "spacegroup": "Pm-3m",
            "lattice": ("cubic", 3.905),
            "species": ["Sr", "Ti", "O"],
            "coords": [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]],
        },
    ),
    "rutile-TiO2": (
        "pymatgen",
        {
            "spacegroup": "P4_2/mnm",
            "lattice": ("tetragonal", 4.594, 2.959),
            "species": ["Ti", "O"],
            "coords": [[0, 0, 0], [0.3048, 0.3048, 0]],
        },
    ),
}


def prototype_species(name: str) -> list[str]:
    kind, spec = PROTOTYPES[name]
    if kind == "pymatgen":
        return list(spec["species"])
    return list(dict.fromkeys(Atoms(spec["name"]).get_chemical_symbols()))


class SubstitutionParams(BaseModel):
    """Everything of :class:`SubstitutionConfig` except the element set (the root
    configuration's ``explore.substitution.params``)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["similar", "random"] = Field(
        "similar", description="similar: pymatgen substitution probabilities; random: uniform over the set"
    )
    prototypes: list[str] = Field(
        default_factory=lambda: list(PROTOTYPES), description="built-in seeds used when no structures are given"
    )
    keep_probability: float = Field(0.5, ge=0, le=1, description="chance to keep a species that is already allowed")
    min_atoms: int = Field(8, ge=1, le=5000, description="seeds are repeated to at least this many atoms")
    rattle: float = Field(0.05, ge=0, le=0.5, description="Gaussian displacement of every atom (Å)")
    scale_volume: bool = Field(True, description="rescale the cell by the change in covalent volume")
    min_covalent_ratio: float = Field(
        0.8, gt=0, lt=2, description="expand the cell until no pair is closer than this x sum of covalent radii"
    )
    relax: Literal["none", "relax", "md"] = Field("none", description="follow-up with the model")
    relax_steps: int = Field(30, ge=1, description="FIRE steps for relax")
    fmax: float = Field(0.05, gt=0, description="relax convergence (eV/Å)")
    md: MeltQuenchConfig = Field(
        default_factory=lambda: MeltQuenchConfig(
            t_start=600, t_high=600, t_end=600, heat_steps=0, hold_steps=100, cool_steps=0, frame_interval=20
        ),
        description="follow-up MD schedule for relax='md'",
    )
    hi: float | None = Field(0.5, gt=0, description="relax stops at the first frame with σ_F >= hi (eV/Å)")

    @field_validator("prototypes")
    @classmethod
    def _prototypes(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in PROTOTYPES]
        if unknown:
            raise ValueError(f"unknown prototype {unknown[0]!r}; known: {', '.join(PROTOTYPES)}")
        if not value:
            raise ValueError("no prototypes given")
        return value

    def with_elements(self, elements: list[str]) -> "SubstitutionConfig":
        return SubstitutionConfig(elements=elements, **self.model_dump())


class SubstitutionConfig(ElementSet, SubstitutionParams):
    """Substitutions that leave only ``elements`` in the structures."""


def prototype_structure(name: str) -> Atoms:
    """The built-in seed ``name`` (conventional cell) as ``ase.Atoms`` (a fresh copy)."""
    if name not in PROTOTYPES:
        raise ConfigError(f"unknown prototype {name!r}; known: {', '.join(PROTOTYPES)}")
    atoms = _build_prototype(name).copy()
    atoms.info["seed_name"] = name
    return atoms


@functools.lru_cache(maxsize=None)
def _build_prototype(name: str) -> Atoms:
    # cached: pymatgen's space-group set-up takes most of a second
    kind, spec = PROTOTYPES[name]
    if kind == "ase":
        from ase.build import bulk

        atoms = bulk(**spec)
    else:
        from pymatgen.core import Lattice, Structure
        from pymatgen.io.ase import AseAtomsAdaptor

        shape, *params = spec["lattice"]
        lattice = getattr(Lattice, shape)(*params)
        structure = Structure.from_spacegroup(spec["spacegroup"], lattice, spec["species"], spec["coords"])
        atoms = AseAtomsAdaptor.get_atoms(structure)
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=True)


#: λ of ion pairs never seen substituting (pymatgen's SubstitutionProbability default alpha).
UNSEEN_LAMBDA = -5.0


@functools.lru_cache(maxsize=1)
def similarity_table() -> np.ndarray:
    """w[a, b]: how readily element b substitutes for element a (indices are Z, 0..MAX_Z).

    From pymatgen's data-mined ionic substitution table, as its
    ``SubstitutionProbability.cond_prob`` defines it: for ions s (of a) and t (of b),
    P(t | s) = exp(λ(s, t)) / p(s) with p(s) = Σ_u exp(λ(s, u)) and λ = alpha (-5) for
    pairs never observed. w[a, b] is the largest P(t | s) over the oxidation states in
    the table. Rows of elements absent from the table are uniform (substitution at random).
    The table (``lambda.json``) is read from pymatgen's package data, no network needed.
    """
    import json
    from pathlib import Path

    import pymatgen.core.structure_prediction.substitution_probability as source
    from pymatgen.core import Species

    rows = json.loads((Path(source.__file__).parent / "data" / "lambda.json").read_text())
    alpha = UNSEEN_LAMBDA
    rows = [row for row in rows if "D1+" not in row]
    names = sorted({row[0] for row in rows} | {row[1] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    z = np.array([Species.from_str(name).Z for name in names])
    lam = np.full((len(names), len(names)), float(alpha))
    for s1, s2, value in rows:
        lam[index[s1], index[s2]] = lam[index[s2], index[s1]] = float(value)
    expl = np.exp(lam)
    conditional = expl / expl.sum(axis=1, keepdims=True)  # [s, t] = P(t | s)
    weights = np.zeros((MAX_Z + 1, MAX_Z + 1))
    inside = z <= MAX_Z
    for i in np.flatnonzero(inside):
        for j in np.flatnonzero(inside):
            if z[i] != z[j]:
                weights[z[i], z[j]] = max(weights[z[i], z[j]], conditional[i, j])
    known = np.zeros(MAX_Z + 1, dtype=bool)
    known[z[inside]] = True
    weights[~known, 1:] = 1.0
    weights[:, 0] = 0.0
    np.fill_diagonal(weights, 0.0)
    return weights


def choose_mapping(species: Sequence[str], config: SubstitutionConfig, rng: np.random.Generator) -> dict[str, str]:
    """Map each seed species to an allowed element (see module docstring)."""
    allowed = list(config.elements)
    if len(species) == 1 and allowed == list(species):
        raise ConfigError(f"substitution: the element set {allowed} leaves no element to substitute for {species[0]}")
    weights = similarity_table() if config.mode == "similar" else None
    for _ in range(100):
        kept = {s for s in species if s in allowed and rng.random() < config.keep_probability}
        mapping = {s: s for s in kept}
        used = set(kept)
        for s in rng.permutation(list(species)):
            s = str(s)
            if s in mapping:
                continue
            options = [b for b in allowed if b not in used and b != s]
            if not options:
                options = [b for b in allowed if b not in used] or [b for b in allowed if b != s] or allowed
            if weights is not None:
                w = np.array([weights[atomic_numbers[s], atomic_numbers[b]] if b != s else 0.0 for b in options])
                if w.sum() <= 0:
                    w = np.ones(len(options))
            else:
                w = np.ones(len(options))
            target = options[int(rng.choice(len(options), p=w / w.sum()))]
            mapping[s] = target
            used.add(target)
        if any(mapping[s] != s for s in species):
            return {s: mapping[s] for s in species}
    raise ConfigError(f"substitution: could not find a mapping of {list(species)} onto {allowed} that changes anything")


def _supercell(atoms: Atoms, min_atoms: int) -> Atoms:
    if len(atoms) >= min_atoms:
        return atoms
    n = math.ceil((min_atoms / len(atoms)) ** (1 / 3))
    repeated = atoms.repeat((n, n, n))
    repeated.info.update(atoms.info)
    return repeated


def substitute(
    seed: Atoms, config: SubstitutionConfig, rng: np.random.Generator
) -> tuple[Atoms, dict[str, str], float]:
    """Substituted copy of ``seed`` (after supercell, rescale and rattle), its mapping and cell scale."""
    species = list(dict.fromkeys(seed.get_chemical_symbols()))
    mapping = choose_mapping(species, config, rng)
    atoms = _supercell(
        Atoms(numbers=seed.numbers, positions=seed.positions, cell=seed.cell.array, pbc=seed.pbc), config.min_atoms
    )
    old = atoms.numbers.copy()
    atoms.numbers = np.array([atomic_numbers[mapping[chemical_symbols[z]]] for z in old])
    scale = 1.0
    if config.scale_volume:
        scale = float((covalent_radii[atoms.numbers] ** 3).sum() / (covalent_radii[old] ** 3).sum()) ** (1 / 3)
    if config.rattle > 0:
        atoms.positions = atoms.positions + rng.normal(scale=config.rattle, size=atoms.positions.shape)
    _apply_scale(atoms, scale)
    _, ratio = min_distance_ratio(atoms)
    if ratio < config.min_covalent_ratio:
        extra = config.min_covalent_ratio / ratio * (1 + 1e-6)
        _apply_scale(atoms, extra)
        scale *= extra
    if atoms.pbc.all():
        atoms.wrap()
    return atoms, mapping, scale


def _apply_scale(atoms: Atoms, factor: float) -> None:
    if atoms.pbc.any():
        atoms.set_cell(atoms.cell.array * factor, scale_atoms=True)
    else:
        center = atoms.positions.mean(0)
        atoms.positions = center + (atoms.positions - center) * factor


def seed_structures(config: SubstitutionConfig, count: int, rng: np.random.Generator) -> list[Atoms]:
    """``count`` built-in prototype seeds, cycling through the usable ones in random order."""
    usable = []
    for name in config.prototypes:
        species = prototype_species(name)
        if not (len(species) == 1 and config.elements == list(species)):
            usable.append(name)
    if not usable:
        raise ConfigError(f"substitution: no prototype can be changed into the element set {config.elements}")
    order = [usable[i] for i in rng.permutation(len(usable))]
    return [prototype_structure(order[i % len(order)]) for i in range(count)]


def sample_substitution(
    model: Any | None,
    config: SubstitutionConfig,
    seed: int,
    count: int,
    structures: Sequence[Atoms] | None = None,
) -> Iterator[Atoms]:
    """``count`` substituted structures (and their relaxation/MD frames when configured).

    Seeds are ``structures`` (cycled) or the built-in prototypes. Substitution ``i``
    depends only on ``(seed, i)`` and its seed structure.
    """
    params = config.model_dump()
    if structures is not None:
        if not structures:
            raise ConfigError("substitution: no seed structures given")
        for i, structure in enumerate(structures):
            check_atoms(structure, f"seed structure {i}")
        seeds = [structures[i % len(structures)] for i in range(count)]
    else:
        seeds = seed_structures(config, count, np.random.default_rng([seed, 0x5EED]))
    substituted: list[Atoms] = []
    for index, seed_atoms in enumerate(seeds):
        rng = np.random.default_rng([seed, index])
        atoms, mapping, scale = substitute(seed_atoms, config, rng)
        record = provenance(
            SAMPLER,
            params,
            seed,
            parent=parent_hash(seed_atoms),
            temperature=None,
            step=0,
            index=index,
            mode=config.mode,
            mapping=mapping,
            seed_name=seed_atoms.info.get("seed_name"),
            cell_scale=scale,
            stage="substituted",
        )
        substituted.append(make_frame(atoms, record))
    if config.relax == "none" or model is None:
        if config.relax != "none":
            raise ConfigError(f"substitution with relax='{config.relax}' needs a model")
        if model is None:
            yield from substituted
            return
        for frame, result in zip(substituted, score_frames(model, substituted)):
            yield make_frame(frame, frame.info["provenance"], result)
        return
    if config.relax == "relax":
        relax = RelaxConfig(
            fmax=config.fmax,
            max_steps=config.relax_steps,
            frame_interval=max(1, config.relax_steps // 5),
            hi=config.hi,
        )
        for trajectory, frame in zip(relax_structures(model, substituted, relax, seed), substituted):
            base = frame.info["provenance"]
            status = trajectory.report()["stop"]
            for out in trajectory_frames([trajectory], relax.include_stop_frames):
                step = out.info["provenance"]["step"]
                out.info["provenance"] = dict(
                    base, step=step, stage="relax", parent=parent_hash(frame), seed_parent=base["parent"]
                )
                out.info["provenance"]["relax_stop"] = status
                yield out
        return
    from samplers.melt_quench import run_melt_quench

    trajectories = run_melt_quench(model, substituted, config.md, seed)
    for trajectory, frame in zip(trajectories, substituted):
        base = frame.info["provenance"]
        for out in trajectory_frames([trajectory], config.md.include_stop_frames):
            out.info["provenance"].update(
                sampler=SAMPLER,
                params=base["params"],
                stage="md",
                mapping=base["mapping"],
                seed_name=base["seed_name"],
                seed_parent=base["parent"],
                index=base["index"],
            )
            yield out
