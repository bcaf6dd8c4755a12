"""Random multi-element structures: periodic cells or clusters with no overlapping atoms.

A composition is drawn over the configured elements (1..``max_species`` species, each
present at least once), a volume is chosen from the covalent radii (``packing_fraction``
of the cell filled by covalent spheres), ``volume_per_atom`` or a mass ``density``, and atoms are placed
one by one at random positions that keep every pair — periodic images included — at
least ``min_distance_fraction`` × (r_cov,i + r_cov,j) apart. Cells are random triclinic
shapes near cubic; clusters are packed in a sphere and padded with vacuum.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers, covalent_radii
from ase.geometry import cellpar_to_cell
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ConfigError
from samplers.config import ElementSet
from samplers.frames import make_frame, provenance
from samplers.model import score_frames

log = logging.getLogger(__name__)

SAMPLER = "random"

#: grams per atomic mass unit (1 g/cm^3 = 1e-24 g/Å^3)
AMU_GRAMS = 1.66053906660e-24

#: Densest packing of equal spheres; covalent spheres shrunk by the distance fraction
#: cannot fill more of space than this, whatever the placement.
MAX_PACKING = math.pi / (3 * math.sqrt(2))


class RandomStructureParams(BaseModel):
    """Everything of :class:`RandomStructureConfig` except the element set (the root
    configuration's ``explore.random.params``, whose elements are the run's)."""

    model_config = ConfigDict(extra="forbid")

    min_atoms: int = Field(4, ge=1, le=10_000)
    max_atoms: int = Field(32, ge=1, le=10_000)
    max_species: int = Field(3, ge=1, description="most distinct elements in one structure")
    kind: Literal["periodic", "cluster", "mixed"] = "periodic"
    cluster_fraction: float = Field(0.3, ge=0, le=1, description="share of clusters when kind is 'mixed'")
    packing_fraction: float = Field(
        0.35,
        gt=0,
        le=1,
        description="cell volume = sum of covalent sphere volumes / this (ignored with volume_per_atom)",
    )
    volume_per_atom: float | None = Field(None, gt=0, description="target volume per atom (Å^3), overrides packing")
    density: float | None = Field(None, gt=0, le=30, description="target mass density (g/cm^3), overrides packing")
    volume_jitter: float = Field(0.15, ge=0, lt=1, description="volume drawn uniformly within ± this fraction")
    min_distance_fraction: float = Field(
        0.75, gt=0, le=2, description="no pair closer than this x the sum of their covalent radii"
    )
    max_skew_degrees: float = Field(15.0, ge=0, lt=60, description="cell angles within 90 ± this")
    max_aspect: float = Field(1.3, ge=1, le=4, description="cell lengths within this factor of each other")
    vacuum: float = Field(6.0, ge=0, description="vacuum padding around clusters (Å)")
    max_attempts: int = Field(30, ge=1, description="fresh cells tried before giving up on a structure")
    insertion_tries: int = Field(300, ge=1, description="random positions tried per atom within one cell")

    @model_validator(mode="after")
    def _check(self):
        if self.volume_per_atom is not None and self.density is not None:
            raise ValueError("give volume_per_atom or density, not both")
        if self.min_atoms > self.max_atoms:
            raise ValueError(f"min_atoms ({self.min_atoms}) exceeds max_atoms ({self.max_atoms})")
        return self

    def with_elements(self, elements: list[str]) -> "RandomStructureConfig":
        return RandomStructureConfig(elements=elements, **self.model_dump())


class RandomStructureConfig(ElementSet, RandomStructureParams):
    """Random structures with compositions drawn over ``elements``."""


def draw_composition(config: RandomStructureConfig, rng: np.random.Generator) -> np.ndarray:
    """Atomic numbers of one structure: n atoms of 1..max_species elements, each present."""
    n = int(rng.integers(config.min_atoms, config.max_atoms + 1))
    k = int(rng.integers(1, min(config.max_species, len(config.elements), n) + 1))
    species = rng.choice(len(config.elements), size=k, replace=False)
    counts = np.ones(k, dtype=int)
    if n > k:
        counts += rng.multinomial(n - k, rng.dirichlet(np.ones(k)))
    numbers = [atomic_numbers[config.elements[s]] for s, c in zip(species, counts) for _ in range(c)]
    return np.asarray(numbers, dtype=int)


def target_volume(numbers: np.ndarray, config: RandomStructureConfig) -> float:
    """Volume (Å^3) before jitter: from volume_per_atom, density, or covalent sphere volume / packing."""
    if config.volume_per_atom is not None:
        return config.volume_per_atom * len(numbers)
    if config.density is not None:
        return float(atomic_masses[numbers].sum() * AMU_GRAMS * 1e24 / config.density)
    radii = covalent_radii[numbers]
    return float((4.0 / 3.0 * math.pi * radii**3).sum() / config.packing_fraction)


def _hard_sphere_fraction(numbers: np.ndarray, volume: float, fraction: float) -> float:
    radii = fraction * covalent_radii[numbers]
    return float((4.0 / 3.0 * math.pi * radii**3).sum() / volume)


def _image_shifts(cell: np.ndarray, cutoff: float) -> np.ndarray:
    """Cartesian lattice translations that can bring an image within ``cutoff`` (zero first)."""
    inverse = np.linalg.inv(cell)
    heights = 1.0 / np.linalg.norm(inverse, axis=0)  # distances between opposite faces
    reach = [int(math.ceil(cutoff / h)) for h in heights]
    shifts = [s for s in itertools.product(*(range(-r, r + 1) for r in reach))]
    shifts.sort(key=lambda s: (s != (0, 0, 0), s))
    return np.asarray(shifts, dtype=np.float64) @ cell


def _random_cell(volume: float, config: RandomStructureConfig, rng: np.random.Generator) -> np.ndarray:
    log_aspect = math.log(config.max_aspect)
    lengths = np.exp(rng.uniform(-log_aspect / 2, log_aspect / 2, size=3))
    angles = 90.0 + rng.uniform(-config.max_skew_degrees, config.max_skew_degrees, size=3)
    cell = cellpar_to_cell(np.concatenate([lengths, angles]))
    return cell * (volume / abs(np.linalg.det(cell))) ** (1.0 / 3.0)


def _first_free(
    trial: np.ndarray, placed: np.ndarray, placed_radii: np.ndarray, radius: float, shifts: np.ndarray, fraction: float
) -> np.ndarray | None:
    """The first trial position clear of every placed atom and its images, or None."""
    images = (placed[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    limit = np.tile(fraction * (radius + placed_radii), len(shifts))
    chunk = max(1, 4096 // len(images))  # bounds the (chunk, images) distance block
    for start in range(0, len(trial), chunk):
        block = trial[start : start + chunk]
        d2 = ((block[:, None, :] - images[None, :, :]) ** 2).sum(-1)
        ok = np.flatnonzero((d2 >= limit[None, :] ** 2).all(axis=1))
        if ok.size:
            return block[ok[0]]
    return None


def _pack(
    numbers: np.ndarray, config: RandomStructureConfig, rng: np.random.Generator, volume: float, periodic: bool
) -> Atoms | None:
    """One packing attempt in a fresh cell/sphere; None when some atom found no room."""
    radii = covalent_radii[numbers]
    fraction = config.min_distance_fraction
    cutoff = fraction * 2 * float(radii.max())
    if periodic:
        cell = _random_cell(volume, config, rng)
        shifts = _image_shifts(cell, cutoff)
        # An atom must also stay clear of its own periodic images.
        own = np.linalg.norm(shifts[1:], axis=1)
        if own.size and own.min() < fraction * 2 * radii.max():
            return None
    else:
        radius = (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
        shifts = np.zeros((1, 3))
    order = np.argsort(-radii, kind="stable")  # big atoms first: they are the hardest to place
    placed = np.zeros((0, 3))
    placed_radii = np.zeros(0)
    positions = np.zeros((len(numbers), 3))
    for index in order:
        if periodic:
            trial = rng.random((config.insertion_tries, 3)) @ cell
        else:
            direction = rng.normal(size=(config.insertion_tries, 3))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            trial = direction * radius * rng.random((config.insertion_tries, 1)) ** (1.0 / 3.0)
        choice = (
            trial[0] if not len(placed) else _first_free(trial, placed, placed_radii, radii[index], shifts, fraction)
        )
        if choice is None:
            return None
        positions[index] = choice
        placed = np.vstack([placed, choice])
        placed_radii = np.append(placed_radii, radii[index])
    if periodic:
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
        atoms.wrap()
    else:
        atoms = Atoms(numbers=numbers, positions=positions, pbc=False)
        atoms.center(vacuum=config.vacuum)
    return atoms


def random_structure(config: RandomStructureConfig, rng: np.random.Generator, periodic: bool | None = None) -> Atoms:
    """One random structure; raises ConfigError when the density makes packing impossible."""
    if periodic is None:
        if config.kind == "mixed":
            periodic = bool(rng.random() >= config.cluster_fraction)
        else:
            periodic = config.kind == "periodic"
    numbers = draw_composition(config, rng)
    base_volume = target_volume(numbers, config)
    formula = Atoms(numbers=numbers).get_chemical_formula()
    filled = _hard_sphere_fraction(numbers, base_volume * (1 - config.volume_jitter), config.min_distance_fraction)
    if filled > MAX_PACKING:
        raise ConfigError(
            f"impossible density for {formula}: spheres of {config.min_distance_fraction} x covalent radius fill "
            f"{filled:.2f} of the volume (max {MAX_PACKING:.2f}); lower packing_fraction, density or "
            "min_distance_fraction, or raise volume_per_atom"
        )
    for _ in range(config.max_attempts):
        volume = base_volume * rng.uniform(1 - config.volume_jitter, 1 + config.volume_jitter)
        atoms = _pack(numbers, config, rng, volume, periodic)
        if atoms is not None:
            return atoms
    what = "cell" if periodic else "cluster"
    raise ConfigError(
        f"could not pack {formula} into a {what} of {base_volume / len(numbers):.2f} Å^3/atom with pairs at least "
        f"{config.min_distance_fraction} x covalent radii apart after {config.max_attempts} attempts; "
        "the density is too high: lower packing_fraction or density, or raise volume_per_atom"
    )


def random_structures(config: RandomStructureConfig, seed: int, count: int) -> list[Atoms]:
    """``count`` random structures with provenance (unscored).

    Structure ``i`` depends only on ``(seed, i)``: asking for more structures extends the
    list without changing the first ones.
    """
    params = config.model_dump()
    frames = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        atoms = random_structure(config, rng)
        record = provenance(SAMPLER, params, seed, parent=None, temperature=None, step=0, index=index)
        frames.append(make_frame(atoms, record))
    return frames


def sample_random(
    model: Any | None, config: RandomStructureConfig, seed: int, count: int, batch_size: int = 64
) -> Iterator[Atoms]:
    """Random structures, scored by ``model`` when one is given (evaluated in batches)."""
    frames = random_structures(config, seed, count)
    if model is None:
        yield from frames
        return
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size]
        for frame, result in zip(batch, score_frames(model, batch, batch_size)):
            yield make_frame(frame, frame.info["provenance"], result)
