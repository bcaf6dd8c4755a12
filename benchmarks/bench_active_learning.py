"""Does self-play save labels? The real generation loop in arms that differ in one thing each.

Every arm runs ``flows.stages.run_generation`` (the same stages, the same embedded store,
one database per arm and seed) for ``--generations`` generations with the same labeller
and the same number of labels per generation (``--budget`` = ``selection.max_selected``,
no sentinels), then the next generation's train stage, so that the last labels are
trained on too. The arms:

* ``selfplay``      exploration with the model (melt/quench MD, random structures) and
  ensemble-disagreement selection (``selection.strategy: uncertainty``) as configured;
* ``random-pick``   the same exploration, the same number of frames picked at random from
  what was explored (``selection.strategy: random``: still deduplicated against the store,
  unphysical geometries still skipped);
* ``no-self-play``  random structures only (the other samplers off, ``explore.random.count``
  raised to the number of frames the selfplay arm of the same seed explored in that
  generation), random picks;
* ``test-recipe``   a reference, not a loop: the same model, training and warm start on
  labels drawn at random from the test sets' own recipe (oracle MD and random structures,
  other seeds), ``--budget`` more per model: the label fraction when the data are the test
  distribution itself. A loop that needs far fewer labels than this must pick better than
  the very distribution it is tested on.

Seed set: a profile may name known structures (xtb: the H/C/N/O molecules of ASE's G2
collection) that every arm's store holds before generation 0, labelled by the loop's own
labeller and imported through ``pipeline.importer.import_file`` (what a user does with
``selfplay label ... && selfplay db import``); every model trains on them, melt/quench
starts from them like from any stored frame, and the label counts reported are the labels
the loop chose besides them. ``--no-seed-set`` starts every arm from an empty store.

``--variant NAME=JSON`` adds an arm: the selfplay arm with the JSON deep-merged onto its
configuration (e.g. ``'lo02={"selection": {"lo": 0.02}}'``), to try one change at a time.

Test sets, made by the oracle itself (the labeller's ASE calculator: ``tblite.ase.TBLite``
with the labeller's GFN2-xTB settings, or EMT), independently of every arm and cached as
extended XYZ under ``--cache-dir``: Langevin MD at several temperatures from independent,
oracle-relaxed starts (xtb: every G2 molecule of the seed set, one trajectory each, a few
frames per trajectory; EMT: random fcc alloys); random structures from the exploration's
own generator (other seeds); one out-of-domain set (larger molecules, or alloys with more
species, than any arm explores). A few test frames are relabelled through
``dft.label_frames`` to check that the oracle's numbers are the labeller's.

Each generation's model (from the store: ``ModelVersion`` → ``fetch_model`` →
``load_ensemble``) is scored on every test set (energy MAE per atom, force MAE; "in-domain"
pools the MD and random sets). MD stability: the final model of each arm drives NVT
Langevin runs (``samplers.batched_md``, the exploration's integrator) from oracle-relaxed
starts over several temperatures; a run is stable when no pair comes closer than
``min_covalent_ratio`` × the covalent-radius sum, nothing becomes NaN, the kinetic
temperature stays below 3 T + 2000 K and the potential energy per atom stays within
``max_drift`` of its start; with ``bond_factor`` (xtb) a run also counts whether its last
frame keeps the start's bonds, since a model that tears a molecule apart or fuses two atoms
can pass every check above. The oracle runs the same protocol (same starts, same random
streams) as the reference.

    python benchmarks/bench_active_learning.py --labeller ase        # EMT alloys, 3 arms + test-recipe x 5 seeds, ~50 min on 2 cores
    python benchmarks/bench_active_learning.py                       # xtb (GFN2-xTB clusters), the same
    python benchmarks/bench_active_learning.py --quick --out /tmp/al.json   # a smoke run (~1 min)
    python benchmarks/bench_active_learning.py --labeller ase --reuse benchmarks/results/active_learning.json \
        --arms selfplay random-pick MYVARIANT --variant 'MYVARIANT={"selection": {"lo": 0.05}}'   # one more arm

Training is a fixed number of epochs per generation (warm start; with EMT also at least
``training.min_steps`` optimizer steps, so that the first generations' few frames are
learned), not a time budget, so that the same labels give the same model whatever else
runs on the machine. PySCF labels
are not offered: their oracle MD would take hours on 2 cores.

Outputs: ``--out`` (JSON: every number, hardware, versions, configurations, seeds, timings),
and beside it the same name with ``.png`` (learning curves, stability) and ``.md`` (tables
and what they show; the part of an existing ``.md`` below :data:`KEEP_MARKER` is kept).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_active_learning")

ARMS = ("selfplay", "random-pick", "no-self-play")
#: Not a loop: the same model and training on labels drawn at random from the test sets' own
#: recipe (oracle MD and random structures, other seeds). A loop that needs far fewer labels
#: than this arm picks better than the very distribution it is tested on.
REFERENCE_ARMS = ("test-recipe",)
#: Seed of the test-recipe arm's pool (the test sets use the profile's ``test.seed``).
TEST_RECIPE_SEED = 800_000
#: The part of an existing markdown report below this line survives a rerun (notes by hand).
KEEP_MARKER = "<!-- kept across reruns: everything below this line -->"
#: Force MAE target: selfplay reaches random-pick's final error with at most this share of its labels.
TARGET_FRACTION = 0.30

# ----------------------------------------------------------------------------- profiles

XTB_CONFIG = """\
# bench_active_learning, labeller xtb: H/C/N/O clusters (after flows/demo_xtb.yaml)
elements: [H, C, N, O]
seed: 0
# twice the ase profile's channels, at least 1000 optimizer steps per generation: with 32
# channels and 500 steps selfplay ended above random-pick in domain, with these below it
# (benchmarks/results/active_learning_xtb_trials.md, session 18)
model: {scalar_channels: 64, vector_channels: 16, tensor_channels: 8, layers: 2, cutoff: 4.0,
        radial_hidden: 32, readout_hidden: 32}
training: {ensemble_size: 2, epochs: 25, min_steps: 1000, batch_size: 8, patience: 15, progress: false}
explore:
  random:
    count: 32
    params: {kind: cluster, min_atoms: 3, max_atoms: 6, max_species: 3, min_distance_fraction: 0.9}
  substitution: {enabled: false}
  # from_imported: every stored start is one of the seed molecules; it lowered every arm's
  # error on both means (benchmarks/results/active_learning_xtb_trials.md, session 14)
  melt_quench:
    trajectories: 12
    from_database: 0.8
    from_imported: 1.0
    start: {kind: cluster, min_atoms: 3, max_atoms: 6, max_species: 3}
    params: {t_start: 300, t_high: 1500, t_end: 300, heat_steps: 30, hold_steps: 30, cool_steps: 30,
             frame_interval: 5, hi: 3.0}
selection: {strategy: representative, lo: 0.05, hi: 3.0, max_selected: 20, sentinel_count: 0}
dft: {backend: xtb, method: GFN2-xTB, time_limit: 60}
generation: {min_train_frames: 8, write_report: false, export_hdf5: false}
resources: {dft_workers: 1, device: cpu}
"""

EMT_CONFIG = """\
# bench_active_learning, labeller ase (EMT): fcc-metal alloys
elements: [Cu, Ag, Au, Ni, Pd, Pt, Al]
seed: 0
model: {scalar_channels: 32, vector_channels: 8, tensor_channels: 4, layers: 2, cutoff: 4.5,
        radial_hidden: 16, readout_hidden: 16}
# min_steps: early generations (20-60 frames) train 500 optimizer steps at least, not 25
# epochs of 3-8 steps; see benchmarks/results/active_learning.md, notes, section 4
training: {ensemble_size: 2, epochs: 25, min_steps: 500, batch_size: 8, patience: 15, progress: false}
explore:
  random:
    count: 32
    params: {kind: periodic, min_atoms: 4, max_atoms: 8, max_species: 3, packing_fraction: 0.6,
             min_distance_fraction: 0.8}
  substitution: {enabled: false}
  melt_quench:
    trajectories: 12
    from_database: 0.8
    start: {kind: periodic, min_atoms: 4, max_atoms: 8, max_species: 3, packing_fraction: 0.6}
    params: {t_start: 300, t_high: 2000, t_end: 300, heat_steps: 30, hold_steps: 30, cool_steps: 30,
             timestep_fs: 2.0, frame_interval: 5, hi: 1.0}
# representative: k-means clusters, the most uncertain frame of each; it beat the library
# default (uncertainty: farthest points) here, see benchmarks/results/active_learning.md
selection: {strategy: representative, lo: 0.02, hi: 1.0, max_selected: 20, sentinel_count: 0}
dft: {backend: ase, calculator: "ase.calculators.emt:EMT", theory: EMT, time_limit: 60}
generation: {min_train_frames: 8, write_report: false, export_hdf5: false}
resources: {dft_workers: 1, device: cpu}
"""


@dataclass
class Profile:
    """One labeller's chemistry: the loop's configuration and the independent test protocol."""

    name: str
    description: str
    config_yaml: str
    #: the oracle's ASE calculator for one structure (fresh per structure)
    oracle: Callable[[Any], Any]
    oracle_description: str
    #: independent starting structures: (spec, seed, count) -> list[Atoms]
    starts: Callable[[dict, int, int], list]
    test: dict = field(default_factory=dict)
    stability: dict = field(default_factory=dict)
    #: known structures every arm's store holds, labelled, before generation 0 (what a user
    #: imports with ``selfplay label ... && selfplay db import``): {"description", "structures"}
    seed_set: Optional[dict] = None


def xtb_oracle(atoms):
    """GFN2-xTB through tblite's ASE calculator, with the labeller's settings (dft/xtb.py):
    neutral, 0 or 1 unpaired electron by parity, accuracy 1, electronic temperature 300 K."""
    from tblite.ase import TBLite

    unpaired = int(np.sum(atoms.numbers)) % 2
    return TBLite(
        method="GFN2-xTB", charge=0, multiplicity=unpaired + 1, accuracy=1.0, electronic_temperature=300.0, verbosity=0
    )


def emt_oracle(atoms):
    from ase.calculators.emt import EMT

    return EMT()


def random_starts(spec: dict, seed: int, count: int, elements: list[str]) -> list:
    from samplers.random_structures import RandomStructureParams, random_structures

    return list(random_structures(RandomStructureParams(**spec).with_elements(elements), seed, count))


def fcc_alloys(spec: dict, seed: int, count: int, elements: list[str]) -> list:
    """Random substitutional fcc alloys: conventional cells repeated, Vegard lattice constant, rattled."""
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        k = int(rng.integers(spec.get("min_species", 1), spec["max_species"] + 1))
        species = list(rng.choice(elements, size=k, replace=False))
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(tuple(spec["repeat"]))
        symbols = list(species) + list(rng.choice(species, size=len(atoms) - k))
        rng.shuffle(symbols)
        atoms.set_chemical_symbols(symbols)
        a = float(np.mean([reference_states[atomic_numbers[s]]["a"] for s in symbols]))
        atoms.set_cell(atoms.cell.array * a / 3.6, scale_atoms=True)
        atoms.positions += rng.normal(scale=spec.get("rattle", 0.05), size=atoms.positions.shape)
        out.append(atoms)
    return out


def known_molecules(elements: list[str], min_atoms: int, max_atoms: int) -> list:
    """The molecules of ASE's G2 collection made of ``elements`` only, at their G2 geometries."""
    from ase.collections import g2

    chosen = []
    for name in g2.names:
        atoms = g2[name]
        if set(atoms.get_chemical_symbols()) <= set(elements) and min_atoms <= len(atoms) <= max_atoms:
            atoms.info = {"name": name}
            chosen.append(atoms)
    return chosen


XTB_ELEMENTS = ["H", "C", "N", "O"]
XTB_CLUSTERS = {"kind": "cluster", "min_atoms": 3, "max_atoms": 6, "max_species": 3, "min_distance_fraction": 0.9}
#: The seed set's molecules (G2, H/C/N/O, 2-6 atoms): the MD test sets and the stability runs
#: start from them, one trajectory per molecule, so that a test set is tens of independent
#: molecules (a few frames each) rather than a few random compositions (see the xtb notes).
XTB_MOLECULES = {"kind": "molecules", "min_atoms": 2, "max_atoms": 6}


def molecule_starts(spec: dict, seed: int, count: int, elements: list[str]) -> list:
    """``count`` starts from the G2 molecules of ``elements`` with ``spec``'s atom counts:
    every molecule once per pass, the passes in seeded orders."""
    molecules = known_molecules(elements, spec["min_atoms"], spec["max_atoms"])
    rng = np.random.default_rng(seed)
    out: list = []
    while len(out) < count:
        out += [molecules[i].copy() for i in rng.permutation(len(molecules))]
    return out[:count]


def xtb_starts(spec: dict, seed: int, count: int) -> list:
    if spec.get("kind") == "molecules":
        return molecule_starts(spec, seed, count, XTB_ELEMENTS)
    return random_starts(spec, seed, count, XTB_ELEMENTS)


XTB_MOLECULE_MD = {
    "timestep_fs": 0.5,
    "friction_per_fs": 0.02,
    "equilibrate": 200,
    "steps": 160,
    "interval": 40,
}
XTB = Profile(
    name="xtb",
    description="GFN2-xTB (tblite) labels of H/C/N/O clusters of 3-6 atoms, tested on MD of the G2 molecules",
    config_yaml=XTB_CONFIG,
    oracle=xtb_oracle,
    oracle_description="tblite.ase.TBLite(method='GFN2-xTB', charge=0, multiplicity=1 + parity, accuracy=1, "
    "electronic_temperature=300)",
    starts=xtb_starts,
    test={
        "seed": 900_000,
        "relax": {"fmax": 0.2, "steps": 150},
        "md": {
            "starts": XTB_MOLECULES,
            "temperatures": [300, 600, 1000, 1500],
            # one trajectory per seed molecule (38 in ASE's G2 collection)
            "trajectories": len(known_molecules(XTB_ELEMENTS, XTB_MOLECULES["min_atoms"], XTB_MOLECULES["max_atoms"])),
            **XTB_MOLECULE_MD,
        },
        "random": {"params": XTB_CLUSTERS, "count": 100},
        "ood": {
            "description": "the G2 molecules of 7-9 atoms (the arms explore 3-6) at 600 K",
            "starts": {**XTB_MOLECULES, "min_atoms": 7, "max_atoms": 9},
            "temperatures": [600],
            # one trajectory per molecule of 7-9 atoms (21 in G2)
            "trajectories": len(known_molecules(XTB_ELEMENTS, 7, 9)),
            **XTB_MOLECULE_MD,
        },
    },
    stability={
        "seed": 910_000,
        "starts": XTB_MOLECULES,
        "temperatures": [300, 700, 1000, 1500],
        "runs_per_temperature": 5,
        "steps": 4000,
        "timestep_fs": 0.5,
        "friction_per_fs": 0.02,
        "interval": 40,
        "min_covalent_ratio": 0.5,
        "max_drift_ev_per_atom": 1.0,
        "bond_factor": 1.25,
    },
    seed_set={
        "description": "the molecules of ASE's G2 collection made of H, C, N and O with 2-6 atoms "
        "(H2, H2O, CO2, NH3, CH3OH, radicals such as OH and CH3 ...), at their G2 geometries",
        "structures": lambda: known_molecules(XTB_ELEMENTS, XTB_MOLECULES["min_atoms"], XTB_MOLECULES["max_atoms"]),
    },
)

EMT_ELEMENTS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"]
EMT_CELLS = {"repeat": [2, 1, 1], "max_species": 3, "rattle": 0.05}
EMT = Profile(
    name="ase",
    description="EMT (ASE) labels of Cu/Ag/Au/Ni/Pd/Pt/Al alloys, periodic cells of 4-8 atoms",
    config_yaml=EMT_CONFIG,
    oracle=emt_oracle,
    oracle_description="ase.calculators.emt.EMT()",
    starts=lambda spec, seed, count: fcc_alloys(spec, seed, count, EMT_ELEMENTS),
    test={
        "seed": 900_000,
        "relax": {"fmax": 0.2, "steps": 100},
        "md": {
            "starts": EMT_CELLS,
            "temperatures": [300, 800, 1300, 2000],
            "trajectories": 5,
            "timestep_fs": 2.0,
            "friction_per_fs": 0.02,
            "equilibrate": 100,
            "steps": 400,
            "interval": 20,
        },
        "random": {
            "params": {
                "kind": "periodic",
                "min_atoms": 4,
                "max_atoms": 8,
                "max_species": 3,
                "packing_fraction": 0.6,
                "min_distance_fraction": 0.8,
            },
            "count": 100,
        },
        "ood": {
            "description": "16-atom fcc alloys of 4-5 species (the arms explore at most 3 species, 4-8 atoms) at 800 K",
            "starts": {"repeat": [2, 2, 1], "min_species": 4, "max_species": 5, "rattle": 0.05},
            "temperatures": [800],
            "trajectories": 5,
            "timestep_fs": 2.0,
            "friction_per_fs": 0.02,
            "equilibrate": 100,
            "steps": 400,
            "interval": 20,
        },
    },
    stability={
        "seed": 910_000,
        "starts": EMT_CELLS,
        "temperatures": [300, 1000, 1500, 2000],
        "runs_per_temperature": 5,
        "steps": 500,
        "timestep_fs": 2.0,
        "friction_per_fs": 0.02,
        "interval": 10,
        "min_covalent_ratio": 0.5,
        "max_drift_ev_per_atom": 1.0,
    },
)

PROFILES = {"xtb": XTB, "ase": EMT}


def get_profile(name: str, quick: bool = False) -> Profile:
    return quick_profile(PROFILES[name]) if quick else PROFILES[name]


def quick_profile(profile: Profile) -> Profile:
    """The same protocol at smoke-test size (the test suite's run)."""
    quick = copy.deepcopy(profile)
    md = quick.test["md"]
    md.update(temperatures=md["temperatures"][:2], trajectories=1, equilibrate=20, steps=60, interval=20)
    quick.test["ood"].update(trajectories=1, equilibrate=20, steps=60, interval=20)
    quick.test["random"]["count"] = 6
    quick.test["relax"]["steps"] = 30
    quick.stability.update(temperatures=quick.stability["temperatures"][::3], runs_per_temperature=2, steps=60)
    return quick


# ----------------------------------------------------------------------------- small helpers


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def spec_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def labelled_copy(atoms, energy: float, forces: np.ndarray):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    clean.calc = SinglePointCalculator(clean, energy=float(energy), forces=np.asarray(forces, dtype=float).copy())
    return clean


def oracle_label(profile: Profile, atoms, stress: bool = False):
    """The oracle's energy and forces (and, with ``stress``, its stress on periodic cells)."""
    work = atoms.copy()
    work.calc = profile.oracle(work)
    labelled = labelled_copy(work, work.get_potential_energy(), work.get_forces())
    if stress and work.pbc.all():
        labelled.calc.results["stress"] = work.get_stress()
    return labelled


def relax(profile: Profile, atoms, fmax: float, steps: int):
    from ase.optimize import FIRE

    work = atoms.copy()
    work.calc = profile.oracle(work)
    FIRE(work, logfile=None).run(fmax=fmax, steps=steps)
    work.calc = None
    return work


# ----------------------------------------------------------------------------- test sets


def oracle_md(profile: Profile, start, temperature: float, spec: dict, seed: int) -> list:
    """Labelled frames of one oracle Langevin run (ASE's integrator, the oracle's calculator)."""
    from ase import units
    from ase.md.langevin import Langevin

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE before 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        def thermalize_momenta(atoms, temperature_K, rng=None):
            MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)

    atoms = start.copy()
    atoms.calc = profile.oracle(atoms)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature, rng=rng)
    dyn = Langevin(
        atoms,
        spec["timestep_fs"] * units.fs,
        temperature_K=temperature,
        friction=spec["friction_per_fs"] / units.fs,
        rng=rng,
        fixcm=False,
    )
    dyn.run(spec["equilibrate"])
    frames = []
    for _ in range(spec["steps"] // spec["interval"]):
        dyn.run(spec["interval"])
        frame = labelled_copy(atoms, atoms.get_potential_energy(), atoms.get_forces())
        frame.info.update(temperature=float(temperature), kinetic_temperature=float(atoms.get_temperature()))
        frames.append(frame)
    return frames


def _md_set(profile: Profile, spec: dict, seed: int, relax_spec: dict, problems: list) -> list:
    frames = []
    for t_index, temperature in enumerate(spec["temperatures"]):
        starts = profile.starts(spec["starts"], seed + 1000 * t_index, spec["trajectories"])
        for index, start in enumerate(starts):
            try:
                start = relax(profile, start, relax_spec["fmax"], relax_spec["steps"])
                frames += oracle_md(profile, start, temperature, spec, seed + 1000 * t_index + index + 1)
            except Exception as exc:  # noqa: BLE001 - an SCF that fails in the oracle's MD: drop that run
                problems.append(f"{temperature} K run {index}: {type(exc).__name__}: {str(exc)[:120]}")
    return frames


def build_test_sets(profile: Profile, elements: list[str], cache_dir: Path) -> tuple[dict[str, list], dict]:
    """The test sets, read from ``cache_dir`` when built before with the same protocol."""
    from ase.io import read, write

    spec = profile.test
    key = spec_hash(profile.name, profile.oracle_description, spec, elements)
    folder = Path(cache_dir) / f"test-{profile.name}-{key}"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        sets = {name: read(folder / f"{name}.extxyz", index=":") for name in meta["sets"]}
        meta["cached"] = True
        return sets, meta
    started = time.perf_counter()
    problems: list[str] = []
    seed = spec["seed"]
    sets: dict[str, list] = {}
    md = spec["md"]
    for t_index, temperature in enumerate(md["temperatures"]):
        one = {**md, "temperatures": [temperature]}
        sets[f"md_{temperature}K"] = _md_set(profile, one, seed + 10_000 * (t_index + 1), spec["relax"], problems)
    from samplers.random_structures import RandomStructureParams, random_structures

    random_spec = spec["random"]
    params = RandomStructureParams(**random_spec["params"]).with_elements(elements)
    sets["random"] = []
    for index, atoms in enumerate(random_structures(params, seed + 77, random_spec["count"])):
        try:
            sets["random"].append(oracle_label(profile, atoms))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"random {index}: {type(exc).__name__}: {str(exc)[:120]}")
    sets["ood"] = _md_set(profile, spec["ood"], seed + 99_000, spec["relax"], problems)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frames in sets.items():
        write(folder / f"{name}.extxyz", frames, format="extxyz")
    meta = {
        "key": key,
        "folder": str(folder),
        "sets": list(sets),
        "protocol": spec,
        "oracle": profile.oracle_description,
        "problems": problems,
        "build_seconds": time.perf_counter() - started,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    return sets, meta


def describe_sets(sets: dict[str, list]) -> dict:
    out = {}
    for name, frames in sets.items():
        if not frames:
            out[name] = {"frames": 0}
            continue
        forces = np.concatenate([a.get_forces().ravel() for a in frames])
        symbols: dict[str, int] = {}
        for atoms in frames:
            for symbol in atoms.get_chemical_symbols():
                symbols[symbol] = symbols.get(symbol, 0) + 1
        out[name] = {
            "frames": len(frames),
            "atoms_mean": float(np.mean([len(a) for a in frames])),
            "atoms_range": [int(min(len(a) for a in frames)), int(max(len(a) for a in frames))],
            "force_rms": float(np.sqrt(np.mean(forces**2))),
            "force_mean_abs": float(np.mean(np.abs(forces))),
            "elements": dict(sorted(symbols.items())),
        }
    return out


def check_oracle_is_labeller(config, sets: dict[str, list], count: int = 4) -> dict:
    """Relabel a few test frames through dft.label_frames: the oracle must give the labeller's numbers."""
    from dft import label_frames

    frames = [a for name in sorted(sets) for a in sets[name][:1]][:count]
    worst_e, worst_f, failed = 0.0, 0.0, 0
    for index, outcome in label_frames(frames, config.dft, workers=1, progress=False, invalid="fail"):
        if not outcome.ok:
            failed += 1
            continue
        worst_e = max(worst_e, abs(outcome.energy - frames[index].get_potential_energy()))
        worst_f = max(worst_f, float(np.abs(np.asarray(outcome.forces) - frames[index].get_forces()).max()))
    return {"frames": len(frames), "failed": failed, "max_energy_diff_ev": worst_e, "max_force_diff_ev_per_a": worst_f}


def build_seed_set(profile: Profile, config, cache_dir: Path) -> tuple[Optional[str], dict]:
    """The profile's known structures labelled by the loop's own labeller (``dft.label_frames``
    with the arms' settings), as extended XYZ whose frames name the labels' level of theory,
    so that ``pipeline.importer.import_file`` stores them where the train stage reads.
    ``(None, {})`` when the profile has no seed set."""
    from ase.io import read, write

    from dft import label_frames

    if profile.seed_set is None:
        return None, {}
    structures = profile.seed_set["structures"]()
    theory = config.dft.theory_key()
    key = spec_hash(
        profile.name, theory, [(a.get_chemical_formula(), a.positions.round(6).tolist()) for a in structures]
    )
    path = Path(cache_dir) / f"seed-set-{profile.name}-{key}.extxyz"
    meta = {"description": profile.seed_set["description"], "structures": len(structures), "path": str(path)}
    if path.exists():
        frames = read(path, index=":")
        return str(path), {**meta, "labelled": len(frames), "failed": [], "cached": True}
    frames, failed = [], []
    for index, outcome in label_frames(structures, config.dft, workers=1, progress=False, invalid="fail"):
        atoms = structures[index]
        if not outcome.ok:
            failed.append(f"{atoms.info.get('name', index)}: {outcome.kind}: {str(outcome.reason)[:120]}")
            continue
        labelled = labelled_copy(atoms, outcome.energy, outcome.forces)
        labelled.info.update(theory=theory, name=atoms.info.get("name", str(index)))
        frames.append(labelled)
    write(path, frames, format="extxyz")
    return str(path), {**meta, "labelled": len(frames), "failed": failed, "cached": False}


# ----------------------------------------------------------------------------- MD stability


class OracleEvaluator:
    """The oracle as a batch evaluator for the MD driver (one calculator kept per trajectory)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.calculators: dict[int, Any] = {}

    def evaluate(self, frames, stress: bool | None = None) -> list[dict]:
        out = []
        for atoms in frames:
            calc = self.calculators.get(id(atoms))
            if calc is None:
                calc = self.calculators[id(atoms)] = self.profile.oracle(atoms)
            work = atoms.copy()
            work.calc = calc
            out.append(
                {
                    "energy": work.get_potential_energy(),
                    "forces": work.get_forces(),
                    "force_deviation": np.zeros(len(work)),
                }
            )
        return out


def stability_starts(profile: Profile, cache_dir: Path) -> list:
    from ase.io import read, write

    spec = profile.stability
    key = spec_hash(
        profile.name,
        profile.oracle_description,
        spec["starts"],
        spec["seed"],
        profile.test["relax"],
        len(spec["temperatures"]) * spec["runs_per_temperature"],
    )
    path = Path(cache_dir) / f"stability-starts-{profile.name}-{key}.extxyz"
    if path.exists():
        return read(path, index=":")
    count = len(spec["temperatures"]) * spec["runs_per_temperature"]
    starts = []
    candidates = profile.starts(spec["starts"], spec["seed"], 2 * count)
    for atoms in candidates:
        if len(starts) == count:
            break
        try:
            starts.append(relax(profile, atoms, profile.test["relax"]["fmax"], profile.test["relax"]["steps"]))
        except Exception:  # noqa: BLE001 - a start the oracle cannot relax is replaced by the next
            continue
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, starts, format="extxyz")
    return starts


def run_stability(evaluator, profile: Profile, starts: list) -> dict:
    """NVT runs of ``evaluator`` from ``starts``: which stay physical (see the module docstring)."""
    from samplers.batched_md import run_batched
    from samplers.dynamics import MeltQuenchConfig

    spec = profile.stability
    per = spec["runs_per_temperature"]
    runs = []
    started = time.perf_counter()
    for t_index, temperature in enumerate(spec["temperatures"]):
        batch = starts[t_index * per : (t_index + 1) * per]
        config = MeltQuenchConfig(
            t_start=temperature,
            t_high=temperature,
            t_end=temperature,
            heat_steps=0,
            hold_steps=spec["steps"],
            cool_steps=0,
            timestep_fs=spec["timestep_fs"],
            friction_per_fs=spec["friction_per_fs"],
            frame_interval=spec["interval"],
            hi=None,
            min_covalent_ratio=spec["min_covalent_ratio"],
            driver="batched",
            include_stop_frames=True,
        )
        try:
            trajectories = run_batched(evaluator, batch, config, spec["seed"], first_index=t_index * per)
        except Exception as exc:  # noqa: BLE001 - e.g. an oracle SCF failure: every run of the batch counts as failed
            runs += [{"temperature": temperature, "stable": False, "reason": f"error: {exc}"[:200]} for _ in batch]
            continue
        for start, trajectory in zip(batch, trajectories):
            runs.append(judge_run(trajectory, temperature, spec, start))
    stable = [r["stable"] for r in runs]
    by_temperature = {}
    for temperature in spec["temperatures"]:
        chosen = [r["stable"] for r in runs if r["temperature"] == temperature]
        by_temperature[str(temperature)] = {"runs": len(chosen), "stable": int(sum(chosen))}
    reasons: dict[str, int] = {}
    for run in runs:
        reasons[run["reason"].split(":")[0]] = reasons.get(run["reason"].split(":")[0], 0) + 1
    kept = [bool(r.get("bonds_kept")) for r in runs] if "bond_factor" in spec else []
    return {
        "runs": len(runs),
        "stable": int(sum(stable)),
        "stable_fraction": float(np.mean(stable)) if stable else float("nan"),
        "bonds_kept_fraction": float(np.mean(kept)) if kept else None,
        "by_temperature": by_temperature,
        "reasons": reasons,
        "seconds": time.perf_counter() - started,
        "details": runs,
    }


def judge_run(trajectory, temperature: float, spec: dict, start) -> dict:
    """Whether one NVT run stayed physical and, with ``spec['bond_factor']``, whether its last
    frame has the start's bonds (no bond broken or formed): a molecule the model tears apart
    or fuses stays "physical" by the distance and drift checks, yet is not what the oracle does."""
    from pipeline.atoms import bonded

    frames = list(trajectory.frames)
    stop = trajectory.stop
    record: dict[str, Any] = {
        "temperature": temperature,
        "steps": stop.step if stop is not None else None,
        "frames": len(frames),
        "atoms": len(frames[0]) if frames else None,
    }
    completed = stop is not None and stop.reason == "completed"
    if "bond_factor" in spec:
        factor = spec["bond_factor"]
        record["bonds_kept"] = completed and bool(np.array_equal(bonded(frames[-1], factor), bonded(start, factor)))
    if not completed:
        record.update(stable=False, reason=f"unphysical: {stop.detail if stop else 'no stop record'}"[:200])
        return record
    n = len(frames[0])
    energies = np.array([a.info.get("model_energy", np.nan) for a in frames]) / n
    kinetic = np.array([a.info.get("kinetic_temperature", np.nan) for a in frames])
    reference = float(np.mean(energies[: max(1, len(energies) // 10)]))
    drift = float(np.nanmax(np.abs(energies - reference)))
    t_max = float(np.nanmax(kinetic))
    record.update(max_drift_ev_per_atom=drift, max_kinetic_temperature=t_max)
    if not np.all(np.isfinite(energies)) or not np.all(np.isfinite(kinetic)):
        record.update(stable=False, reason="non-finite energy or temperature")
    elif t_max > 3 * temperature + 2000:
        record.update(stable=False, reason=f"explosion: kinetic temperature {t_max:.0f} K")
    elif drift > spec["max_drift_ev_per_atom"]:
        record.update(stable=False, reason=f"drift: {drift:.2f} eV/atom")
    else:
        record.update(stable=True, reason="stable")
    return record


def oracle_stability(profile: Profile, cache_dir: Path, starts: list) -> dict:
    key = spec_hash(profile.name, profile.oracle_description, profile.stability, profile.test["relax"])
    path = Path(cache_dir) / f"stability-oracle-{profile.name}-{key}.json"
    if path.exists():
        result = json.loads(path.read_text())
        result["cached"] = True
        return result
    result = run_stability(OracleEvaluator(profile), profile, starts)
    path.write_text(json.dumps(result, indent=1))
    result["cached"] = False
    return result


# ----------------------------------------------------------------------------- errors


def score_model(model, sets: dict[str, list], in_domain: list[str]) -> dict:
    """Energy MAE per atom and force MAE/RMSE per test set, and their mean over the ``in_domain`` sets.

    The in-domain figure is the plain mean of the sets' errors (each set counts once), not
    a pool of their frames: pooled, the random structures' forces (several times those of
    thermal MD) would outweigh every MD set together.
    """
    out = {}
    for name, frames in sets.items():
        if not frames:
            continue
        predictions = model.evaluate(frames, stress=False)
        energy = [abs(float(p["energy"]) - a.get_potential_energy()) / len(a) for a, p in zip(frames, predictions)]
        force = [np.abs(np.asarray(p["forces"]) - a.get_forces()).ravel() for a, p in zip(frames, predictions)]
        out[name] = _stats(energy, force)
    mean = mean_of_sets(out, in_domain)
    if mean:
        out["in_domain"] = mean
    return out


def mean_of_sets(errors: dict, names: list[str]) -> Optional[dict]:
    """The plain mean of the errors of the sets ``names`` that ``errors`` has (None if none)."""
    present = [n for n in names if n in errors]
    if not present:
        return None
    chosen = [errors[n] for n in present]
    return {
        "frames": int(sum(c["frames"] for c in chosen)),
        "sets": present,
        **{k: float(np.mean([c[k] for c in chosen])) for k in ("energy_mae_per_atom", "force_mae", "force_rmse")},
    }


def _stats(energy: list[float], force: list[np.ndarray]) -> dict:
    components = np.concatenate(force)
    return {
        "frames": len(energy),
        "energy_mae_per_atom": float(np.mean(energy)),
        "force_mae": float(np.mean(components)),
        "force_rmse": float(np.sqrt(np.mean(components**2))),
    }


# ----------------------------------------------------------------------------- one arm


def arm_overrides(arm: str, variants: dict[str, dict], random_count: Optional[int]) -> dict:
    if arm == "selfplay":
        return {}
    if arm == "random-pick":
        return {"selection": {"strategy": "random"}}
    if arm == "no-self-play":
        overrides: dict = {
            "selection": {"strategy": "random"},
            "explore": {
                "melt_quench": {"enabled": False},
                "substitution": {"enabled": False},
                "relax": {"enabled": False},
            },
        }
        if random_count is not None:
            overrides["explore"]["random"] = {"count": int(random_count)}
        return overrides
    return variants[arm]


def nominal_explored(config) -> int:
    """Frames one generation of the configuration can explore at most (random, MD and relaxation frames)."""
    explore = config.explore
    count = explore.random.count if explore.random.enabled else 0
    if explore.melt_quench.enabled:
        params = explore.melt_quench.params
        count += explore.melt_quench.trajectories * (params.total_steps // params.frame_interval + 2)
    if explore.relax.enabled:
        params = explore.relax.params
        count += explore.relax.count * (params.max_steps // params.frame_interval + 2)
    if explore.substitution.enabled:
        count += explore.substitution.count
    return count


def load_arm_config(profile_yaml: str, overrides: dict, workdir: Path):
    from flows.config import load_config

    path = workdir / "base.yaml"
    path.write_text(profile_yaml)
    return load_config(path, **overrides)


def run_arm(job: dict) -> dict:
    """One arm and seed: the generations, every model's test errors, the final model's MD stability."""
    import torch

    torch.set_num_threads(job["threads"])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from ase.io import read

    from flows.stages import run_generation
    from pipeline.documents import Generation, Label, ModelVersion
    from pipeline.model_registry import fetch_model
    from pipeline.store import connect
    from potential.checkpoint import load_ensemble

    started = time.perf_counter()
    profile = get_profile(job["profile"], job["quick"])
    workdir = Path(job["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    database = f"al-{job['arm']}-{job['seed']}-{uuid.uuid4().hex[:8]}"
    connect(None, database=database)
    sets = {name: read(path, index=":") for name, path in job["test_paths"].items()}
    seed_labels = 0
    if job.get("seed_set_path"):
        from pipeline.importer import import_file

        # the user's path: labelled known structures imported before the first generation
        seed_labels = import_file(job["seed_set_path"]).new_labels
    generations = []
    config = None
    for number in range(job["generations"] + 1):
        counts = job.get("random_counts") or {}
        overrides = deep_merge(
            deep_merge(
                {"workdir": str(workdir), "seed": job["seed"], "selection": {"max_selected": job["budget"]}},
                job["common"],
            ),
            arm_overrides(job["arm"], job["variants"], counts.get(str(number), job.get("random_count_default"))),
        )
        config = load_arm_config(profile.config_yaml, overrides, workdir)
        last = number == job["generations"]
        tick = time.perf_counter()
        generation = run_generation(config, stop_after="train" if last else None)
        record = Generation.objects.get(id=generation.id)
        stages = record.stages or {}
        train = (stages.get("train") or {}).get("result") or {}
        explore = (stages.get("explore") or {}).get("result") or {}
        generations.append(
            {
                "number": record.number,
                "final_train_only": last,
                "trained_on": train.get("frames") if train.get("model") else None,
                "counts": {k: v for k, v in (record.counts or {}).items()},
                "labels_total": Label.objects(theory=config.dft.theory_key()).count(),
                "explore": {k: v for k, v in (explore.get("samplers") or {}).items()},
                "stage_seconds": {name: (stage or {}).get("seconds") for name, stage in stages.items()},
                "seconds": time.perf_counter() - tick,
            }
        )
    from pipeline.export import export_snapshot

    # the arm's labels, for looking at what it chose (sampler, σ, forces) after the run
    export_snapshot(workdir / "labelled.extxyz", format="extxyz")
    cache = workdir / "models"
    models = []
    final_model = None
    tick = time.perf_counter()
    for version in ModelVersion.objects.order_by("generation"):
        ensemble = load_ensemble(fetch_model(version, cache), device="cpu")
        if int(version.trained_on["frames"]) <= seed_labels:
            continue  # trained on the seed set alone: no label of the loop's yet
        models.append(
            {
                "generation": version.generation,
                # the labels the loop chose; every arm shares the seed set besides
                "labels": int(version.trained_on["frames"]) - seed_labels,
                "labels_with_seed_set": int(version.trained_on["frames"]),
                "errors": score_model(ensemble, sets, job["in_domain"]),
            }
        )
        final_model = ensemble
    evaluation_seconds = time.perf_counter() - tick
    stability = None
    if final_model is not None and job["stability_starts"]:
        starts = read(job["stability_starts"], index=":")
        stability = run_stability(final_model, profile, starts)
    return {
        "arm": job["arm"],
        "seed": job["seed"],
        "database": database,
        "seed_set_labels": seed_labels,
        "config": config.public_dict() if config is not None else None,
        "generations": generations,
        "models": models,
        "stability": stability,
        "evaluation_seconds": evaluation_seconds,
        "seconds": time.perf_counter() - started,
    }


def test_recipe_pool(
    profile: Profile, elements: list[str], cache_dir: Path, wanted: int
) -> tuple[dict[str, list], dict]:
    """The test-recipe arm's pool: the in-domain test sets' protocol again with other seeds,
    with runs and structures enough that each set holds its share of ``wanted`` labels."""
    pool_profile = copy.deepcopy(profile)
    spec = pool_profile.test
    spec["seed"] = TEST_RECIPE_SEED
    share = math.ceil(wanted / (len(spec["md"]["temperatures"]) + 1))
    per_run = spec["md"]["steps"] // spec["md"]["interval"]
    spec["md"]["trajectories"] = max(spec["md"]["trajectories"], math.ceil(share / per_run))
    spec["random"]["count"] = max(spec["random"]["count"], share)
    sets, meta = build_test_sets(pool_profile, elements, cache_dir)
    return {name: frames for name, frames in sets.items() if name != "ood"}, meta


def stratified_order(pool: dict[str, list], seed: int) -> list:
    """Every pool frame once, shuffled within each set and dealt round-robin across the sets,
    so that every prefix holds the sets in equal shares (as the in-domain mean weighs them)."""
    rng = np.random.default_rng(seed)
    queues = [[frames[i] for i in rng.permutation(len(frames))] for frames in pool.values()]
    order = []
    for position in range(max(len(q) for q in queues)):
        order += [q[position] for q in queues if position < len(q)]
    return order


def run_test_recipe(job: dict) -> dict:
    """The reference arm: the loop's model and training (same configuration, warm start,
    ``budget`` more labels per model) on frames drawn from the test recipe, no exploration."""
    import torch

    torch.set_num_threads(job["threads"])
    from ase.io import read

    from potential.train import train_ensemble

    started = time.perf_counter()
    profile = get_profile(job["profile"], job["quick"])
    workdir = Path(job["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    sets = {name: read(path, index=":") for name, path in job["test_paths"].items()}
    pool = {name: read(path, index=":") for name, path in job["pool_paths"].items()}
    overrides = deep_merge({"workdir": str(workdir), "seed": job["seed"]}, job["common"])
    config = load_arm_config(profile.config_yaml, overrides, workdir)
    wanted = job["budget"] * job["generations"]
    order = stratified_order(pool, job["seed"])[:wanted]
    if len(order) < wanted:
        raise SystemExit(f"the test-recipe pool has {len(order)} frames, {wanted} are wanted")
    # the loop's labels carry the stress of periodic cells; so do these
    labelled = [oracle_label(profile, atoms, stress=True) for atoms in order]
    seeds = read(job["seed_set_path"], index=":") if job.get("seed_set_path") else []
    models, ensemble = [], None
    for number in range(1, job["generations"] + 1):
        frames = labelled[: job["budget"] * number]
        training = config.training.model_copy(update={"seed": job["seed"] * 1000 + number})
        ensemble = train_ensemble(
            seeds + frames, training, model_config=config.model, warm_start=ensemble, device="cpu"
        ).ensemble
        models.append(
            {
                "generation": number,
                "labels": len(frames),
                "labels_with_seed_set": len(seeds) + len(frames),
                "errors": score_model(ensemble, sets, job["in_domain"]),
            }
        )
    stability = None
    if ensemble is not None and job["stability_starts"]:
        stability = run_stability(ensemble, profile, read(job["stability_starts"], index=":"))
    return {
        "arm": job["arm"],
        "seed": job["seed"],
        "database": None,
        "seed_set_labels": len(seeds),
        "config": config.public_dict(),
        "generations": [],
        "models": models,
        "stability": stability,
        "evaluation_seconds": None,
        "seconds": time.perf_counter() - started,
    }


def run_job(job: dict) -> dict:
    return run_test_recipe(job) if job["arm"] in REFERENCE_ARMS else run_arm(job)


# ----------------------------------------------------------------------------- summary


def curves(runs: list[dict], arm: str, test_set: str, metric: str) -> dict:
    """Mean, std, min, max of ``metric`` over the seeds of ``arm``, per number of labels."""
    chosen = [r for r in runs if r["arm"] == arm]
    if not chosen:
        return {}
    length = min(len(r["models"]) for r in chosen)
    labels = np.array([[m["labels"] for m in r["models"][:length]] for r in chosen], dtype=float)
    values = np.array(
        [[m["errors"].get(test_set, {}).get(metric, np.nan) for m in r["models"][:length]] for r in chosen]
    )
    return {
        "labels": labels.mean(0).tolist(),
        "labels_equal_across_seeds": bool(np.all(labels == labels[0])),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "seeds": len(chosen),
    }


def labels_to_reach(labels: list[float], errors: list[float], target: float) -> Optional[float]:
    """Labels at which the curve first reaches ``target`` (linear interpolation), None if never."""
    for i, (n, e) in enumerate(zip(labels, errors)):
        if e <= target:
            if i == 0:
                return float(n)
            n0, e0 = labels[i - 1], errors[i - 1]
            return float(n0 + (n - n0) * (e0 - target) / (e0 - e)) if e0 != e else float(n)
    return None


def label_fraction(
    runs: list[dict], arm: str, reference: str, test_set: str = "in_domain", quantity: str = "force_mae"
) -> dict:
    """Share of ``reference``'s labels ``arm`` needs to reach ``reference``'s final error
    (``quantity``: ``force_mae`` or ``energy_mae_per_atom``) on ``test_set``."""
    a, b = curves(runs, arm, test_set, quantity), curves(runs, reference, test_set, quantity)
    if not a or not b:
        return {}
    target = b["mean"][-1]
    reached = labels_to_reach(a["labels"], a["mean"], target)
    per_seed = []
    for seed in sorted({r["seed"] for r in runs if r["arm"] == arm}):
        mine = [r for r in runs if r["arm"] == arm and r["seed"] == seed]
        theirs = [r for r in runs if r["arm"] == reference and r["seed"] == seed]
        if not (mine and theirs and mine[0]["models"] and theirs[0]["models"]):
            continue
        goal = theirs[0]["models"][-1]["errors"][test_set][quantity]
        curve = mine[0]["models"]
        at = labels_to_reach([m["labels"] for m in curve], [m["errors"][test_set][quantity] for m in curve], goal)
        per_seed.append(
            {
                "seed": seed,
                "target": goal,
                "labels": at,
                "fraction": None if at is None else at / theirs[0]["models"][-1]["labels"],
            }
        )
    fractions = [p["fraction"] for p in per_seed if p["fraction"] is not None]
    return {
        "arm": arm,
        "reference": reference,
        "test_set": test_set,
        "quantity": quantity,
        "target": target,
        "reference_labels": b["labels"][-1],
        "labels_needed": reached,
        "fraction": None if reached is None else reached / b["labels"][-1],
        "first_point_labels": a["labels"][0],
        "note": "reached at the first model: the fraction is an upper bound"
        if reached is not None and reached == a["labels"][0]
        else None,
        "per_seed": per_seed,
        "per_seed_reached": f"{len(fractions)} of {len(per_seed)}",
        "per_seed_fraction_mean": float(np.mean(fractions)) if fractions else None,
        "per_seed_fraction_std": float(np.std(fractions)) if fractions else None,
    }


def stability_summary(runs: list[dict], arm: str) -> dict:
    chosen = [r["stability"] for r in runs if r["arm"] == arm and r.get("stability")]
    if not chosen:
        return {}
    fractions = [s["stable_fraction"] for s in chosen]
    kept = [s["bonds_kept_fraction"] for s in chosen if s.get("bonds_kept_fraction") is not None]
    return {
        "stable_fraction_mean": float(np.mean(fractions)),
        "stable_fraction_std": float(np.std(fractions)),
        "stable_fraction_per_seed": fractions,
        "bonds_kept_fraction_mean": float(np.mean(kept)) if kept else None,
        "bonds_kept_fraction_std": float(np.std(kept)) if kept else None,
        "runs_per_seed": chosen[0]["runs"],
    }


def add_md_mean(runs: list[dict]) -> None:
    """Give every model's errors an ``md`` entry: the mean over the MD test sets (each counts
    once, as in ``in_domain``), where it has none; what simulations will meet, without the
    random structures."""
    for run in runs:
        for model in run["models"]:
            errors = model["errors"]
            mean = mean_of_sets(errors, sorted(n for n in errors if n.startswith("md_")))
            if mean and "md" not in errors:
                errors["md"] = mean


def summarize(runs: list[dict], arms: list[str], sets: list[str], oracle: dict) -> dict:
    add_md_mean(runs)
    sets = [*sets, "md"] if any("md" in m["errors"] for r in runs for m in r["models"]) else sets
    summary: dict[str, Any] = {"arms": {}}
    for arm in arms:
        summary["arms"][arm] = {
            "force_mae": {s: curves(runs, arm, s, "force_mae") for s in sets},
            "energy_mae_per_atom": {s: curves(runs, arm, s, "energy_mae_per_atom") for s in sets},
            "stability": stability_summary(runs, arm),
        }
    grids = [tuple(d["force_mae"]["in_domain"].get("labels", ())) for d in summary["arms"].values()]
    summary["labels_per_model"] = {arm: list(g) for arm, g in zip(summary["arms"], grids)}
    summary["labels_equal_across_arms"] = len(set(grids)) == 1
    summary["oracle_stability"] = {
        k: oracle.get(k)
        for k in ("runs", "stable", "stable_fraction", "bonds_kept_fraction", "by_temperature", "reasons")
    }
    reference = "random-pick"
    summary["label_fraction"] = {
        arm: label_fraction(runs, arm, reference)
        for arm in arms
        if arm not in (reference, "no-self-play") and reference in arms
    }
    if "no-self-play" in arms and reference in arms:
        summary["label_fraction"]["no-self-play"] = label_fraction(runs, "no-self-play", reference)
    if "md" in sets:
        summary["label_fraction_md"] = {
            arm: label_fraction(runs, arm, reference, test_set="md") for arm in summary["label_fraction"]
        }
    summary["label_fraction_energy"] = {
        arm: label_fraction(runs, arm, reference, quantity="energy_mae_per_atom") for arm in summary["label_fraction"]
    }
    verdicts = {}
    for arm, fraction in summary["label_fraction"].items():
        if not fraction or arm == "no-self-play" or arm in REFERENCE_ARMS:
            continue
        mine = summary["arms"][arm]["stability"].get("stable_fraction_mean")
        theirs = summary["arms"][reference]["stability"].get("stable_fraction_mean")
        verdicts[arm] = {
            "labels_target_met": fraction["fraction"] is not None and fraction["fraction"] <= TARGET_FRACTION,
            "stability_target_met": None if mine is None or theirs is None else bool(mine >= theirs),
        }
    summary["verdict"] = verdicts
    return summary


# ----------------------------------------------------------------------------- outputs


def environment(threads: int, jobs: int) -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "tblite", "ase", "numpy", "selfplay", "mongomock-ng", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        )
    except OSError:
        commit, dirty = None, None
    versions["selfplay_commit"] = commit
    versions["selfplay_tree_dirty"] = dirty
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    wanted = (
        "Architecture",
        "CPU(s)",
        "Model name",
        "Thread(s) per core",
        "Core(s) per socket",
        "Socket(s)",
        "Hypervisor vendor",
        "L2 cache",
        "L3 cache",
    )
    cpu = {}
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            cpu[key.strip()] = value.strip()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads_per_job": threads,
        "parallel_jobs": jobs,
        "load_average_start": os.getloadavg(),
        "versions": versions,
    }


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_markdown(path: Path, result: dict) -> None:
    s = result["summary"]
    settings = result["settings"]
    env = result["environment"]
    lines = [
        "# Active-learning benchmark: does self-play save labels?",
        "",
        f"Labeller: **{result['profile']['description']}**. {settings['generations']} generations of "
        f"{settings['budget']} labels each per arm (plus the train stage of the next generation, so the last labels "
        f"are trained on), seeds {settings['seeds']}, {result['timings']['total_seconds'] / 60:.1f} min wall time on "
        f"{env['cpu'].get('Model name', '?')} ({env['cores']} cores, {settings['jobs']} runs at a time, "
        f"{settings['threads']} torch thread each; load average at start {env['load_average_start'][0]:.1f}).",
        f"Command: `{' '.join(result['command'])}`",
        *_reuse_line(result),
        "",
        _settings_paragraph(result),
        "",
        "## Final models (mean ± std over seeds)",
        "",
        "| arm | labels | in-domain force MAE eV/Å | in-domain energy MAE meV/atom | OOD force MAE eV/Å | MD stable "
        "| bonds kept |",
        "|---|---|---|---|---|---|---|",
    ]

    def share(mean, std=None) -> str:
        if mean is None:
            return "-"
        return f"{mean:.0%}" + ("" if std is None else f" ± {std:.0%}")

    for arm, data in s["arms"].items():
        f, e = data["force_mae"]["in_domain"], data["energy_mae_per_atom"]["in_domain"]
        o = data["force_mae"].get("ood") or {}
        st = data["stability"]
        lines.append(
            f"| {_arm_title(arm)} | {f['labels'][-1]:.0f} | {_fmt(f['mean'][-1], f['std'][-1])} | "
            f"{_fmt(e['mean'][-1] * 1000, e['std'][-1] * 1000, 1)} | "
            + (f"{_fmt(o['mean'][-1], o['std'][-1])}" if o else "-")
            + f" | {share(st.get('stable_fraction_mean'), st.get('stable_fraction_std'))}"
            + f" | {share(st.get('bonds_kept_fraction_mean'), st.get('bonds_kept_fraction_std'))} |"
        )
    oracle = s["oracle_stability"]
    lines.append(
        f"| oracle (reference) | - | 0 | 0 | 0 | {share(oracle.get('stable_fraction'))} "
        f"| {share(oracle.get('bonds_kept_fraction'))} |"
    )
    lines += ["", "## Labels needed (force MAE, in-domain test sets)", ""]
    for arm, frac in s["label_fraction"].items():
        if not frac:
            continue
        if frac["fraction"] is None:
            text = "never reached within the run"
        else:
            text = f"{frac['labels_needed']:.0f} labels = **{frac['fraction']:.0%}** of {frac['reference_labels']:.0f}"
            if frac["note"]:
                text += f" ({frac['note']})"
        lines.append(
            f"- {_arm_title(arm)} to reach {frac['reference']}'s final force MAE {frac['target']:.3f} eV/Å: {text}; "
            f"per seed (paired by seed): reached in {frac['per_seed_reached']}"
            + (
                f", fraction {frac['per_seed_fraction_mean']:.0%} ± {frac['per_seed_fraction_std']:.0%}"
                if frac["per_seed_fraction_mean"] is not None
                else ""
            )
            + _further_fractions_text(s, arm)
            + "."
        )
    if any(arm in REFERENCE_ARMS for arm in s["arms"]):
        lines += [
            "",
            "test-recipe is not a loop: the same model and training on labels drawn at random from the test sets' "
            "own recipe (other seeds), in equal shares per in-domain set: the label fraction when the data are the "
            "test distribution itself. A loop far below it picks better than the distribution it is tested on.",
        ]
    lines += ["", "Target: selfplay ≤ 30 % of random-pick's labels and MD stability at least random-pick's.", ""]
    for arm, verdict in s["verdict"].items():
        lines.append(
            f"- {arm}: labels target {'met' if verdict['labels_target_met'] else '**not met**'}; stability target "
            + (
                "met"
                if verdict["stability_target_met"]
                else "**not met**"
                if verdict["stability_target_met"] is False
                else "n/a"
            )
            + "."
        )
    lines += ["", "## Learning curves: force MAE eV/Å per test set (mean ± std over seeds)", ""]
    sets = list(result["test_sets"]) + ["in_domain"]
    for arm, data in s["arms"].items():
        f = data["force_mae"]["in_domain"]
        lines += [f"### {arm}", "", "| labels | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
        for i, n in enumerate(f["labels"]):
            cells = [
                _fmt(data["force_mae"][name]["mean"][i], data["force_mae"][name]["std"][i])
                if data["force_mae"].get(name)
                else "-"
                for name in sets
            ]
            lines.append(f"| {n:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Test sets (made by the oracle, never seen by any arm)",
        "",
        "| set | frames | atoms | force RMS eV/Å |",
        "|---|---|---|---|",
    ]
    for name, d in result["test_sets"].items():
        if d.get("frames"):
            lines.append(
                f"| {name} | {d['frames']} | {d['atoms_range'][0]}-{d['atoms_range'][1]} | {d['force_rms']:.2f} |"
            )
    check = result["oracle_check"]
    lines += [
        "",
        f"Oracle = labeller check ({check['frames']} test frames relabelled through `dft.label_frames`): largest "
        f"difference {check['max_energy_diff_ev']:.2e} eV in energy, {check['max_force_diff_ev_per_a']:.2e} eV/Å in forces.",
        "",
        "MD stability protocol: " + json.dumps(result["profile"]["stability"]),
        "",
        KEEP_MARKER,
    ]
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1]
    path.write_text("\n".join(lines) + (kept if kept else "\n"))


#: The further label fractions a summary line reports: (summary key, how to say its target).
FRACTION_TEXTS = (
    ("label_fraction_md", lambda target: f"on the MD test sets alone (their mean, {target:.3f} eV/Å)"),
    ("label_fraction_energy", lambda target: f"to its final in-domain energy MAE ({target * 1000:.1f} meV/atom)"),
)


def _further_fractions_text(summary: dict, arm: str) -> str:
    text = ""
    for key, target_text in FRACTION_TEXTS:
        frac = (summary.get(key) or {}).get(arm) or {}
        if frac:
            share = "never reached" if frac["fraction"] is None else f"{frac['fraction']:.0%}"
            text += f"; {target_text(frac['target'])}: {share}"
    return text


def _reuse_line(result: dict) -> list[str]:
    """Where reused runs came from: the wall time above is only this invocation's."""
    reused = (result["settings"].get("reused") or {}).get("runs") or []
    if not reused:
        return []
    seconds = sum(result["timings"]["run_seconds"].get(name, 0.0) for name in reused)
    return [
        f"{len(reused)} of {len(result['runs'])} runs were taken from `{result['settings']['reused']['file']}` "
        f"(`--reuse`); their own run times add up to {seconds / 60:.0f} min."
    ]


def _arm_title(arm: str) -> str:
    return f"{arm} (reference, no loop)" if arm in REFERENCE_ARMS else arm


def _settings_paragraph(result: dict) -> str:
    config = next(iter(c for c in result["configs"].values() if c), None) or {}
    model, training = config.get("model", {}), config.get("training", {})
    melt = config.get("explore", {}).get("melt_quench", {})
    stability = result["profile"]["stability"]
    runs = len(stability["temperatures"]) * stability["runs_per_temperature"]
    in_domain = ", ".join(result["settings"]["in_domain_sets"])
    return (
        f"Scaled to the machine: a {training.get('ensemble_size')}-member ensemble of {model.get('layers')}-layer models "
        f"({model.get('scalar_channels')} scalar channels, cutoff {model.get('cutoff')} Å), trained "
        + (f"{training.get('max_seconds')} s" if training.get("max_seconds") else f"{training.get('epochs')} epochs")
        + (f" (at least {training['min_steps']} optimizer steps)" if training.get("min_steps") else "")
        + " per generation (warm start from the previous model, one torch thread per run); selfplay's selection strategy "
        f"{config.get('selection', {}).get('strategy')}; "
        f"{melt.get('trajectories')} melt/quench trajectories of {sum(melt.get('params', {}).get(k, 0) for k in ('heat_steps', 'hold_steps', 'cool_steps'))} "
        f"steps up to {melt.get('params', {}).get('t_high')} K per generation. 'In-domain' is the mean of the errors on "
        f"{in_domain} (each set counts once). MD stability: {runs} NVT runs per final model "
        f"({stability['runs_per_temperature']} each at {', '.join(str(t) for t in stability['temperatures'])} K), "
        f"{stability['steps']} steps of {stability['timestep_fs']} fs = {stability['steps'] * stability['timestep_fs'] / 1000:g} ps "
        "each"
        + (
            f"; 'bonds kept': the last frame has the start's bonds (closer than {stability['bond_factor']} × the "
            "covalent-radius sum), none broken or formed."
            if "bond_factor" in stability
            else "."
        )
        + _seed_set_sentence(result)
    )


def _seed_set_sentence(result: dict) -> str:
    seed = result.get("seed_set") or {}
    if not (result["settings"].get("seed_set") and seed.get("labelled")):
        return " Every arm starts from an empty store."
    return (
        f" Every arm's store starts with the same {seed['labelled']} labelled known structures ({seed['description']}), "
        "imported before generation 0 and trained on by every model; the label counts here are the labels the loop "
        "chose besides them."
    )


def render(json_path: Path) -> dict:
    """Write the .png and .md of an existing result JSON again (the .md's kept part stays)."""
    result = json.loads(Path(json_path).read_text())
    # the summary again from the runs, so that an older result gains what summaries have since
    settings = result["settings"]
    sets = list(result["test_sets"]) + ["in_domain"]
    result["summary"] = summarize(result["runs"], settings["arms"], sets, result["oracle_stability"])
    Path(json_path).write_text(json.dumps(strict_json(result), indent=1, allow_nan=False))
    result["plot_problem"] = write_plot(Path(json_path).with_suffix(".png"), result)
    write_markdown(Path(json_path).with_suffix(".md"), result)
    return result


def write_plot(path: Path, result: dict) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    s = result["summary"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        (axes[0, 0], "force_mae", "in_domain", "in-domain force MAE (eV/Å)", 1.0),
        (axes[0, 1], "energy_mae_per_atom", "in_domain", "in-domain energy MAE (meV/atom)", 1000.0),
        (axes[1, 0], "force_mae", "ood", "out-of-domain force MAE (eV/Å)", 1.0),
    ]
    for ax, metric, test_set, title, scale in panels:
        for arm, data in s["arms"].items():
            c = data[metric].get(test_set)
            if not c:
                continue
            x, m = np.array(c["labels"], dtype=float), np.array(c["mean"], dtype=float) * scale
            lo, hi = np.array(c["min"], dtype=float) * scale, np.array(c["max"], dtype=float) * scale
            ax.plot(x, m, marker="o", label=arm)
            ax.fill_between(x, lo, hi, alpha=0.2)
        ax.set_xlabel("labels")
        ax.set_title(title + ", mean; band min-max over seeds", fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[1, 1]
    names = list(s["arms"]) + ["oracle"]

    def number(value, default):
        return default if value is None else float(value)

    measures = [("stable_fraction", "stay physical")]
    if any(s["arms"][a]["stability"].get("bonds_kept_fraction_mean") is not None for a in s["arms"]):
        measures.append(("bonds_kept_fraction", "keep their bonds"))
    width = 0.8 / len(measures)
    for k, (key, title) in enumerate(measures):
        values = [number(s["arms"][a]["stability"].get(f"{key}_mean"), np.nan) for a in s["arms"]]
        errors = [number(s["arms"][a]["stability"].get(f"{key}_std"), 0.0) for a in s["arms"]]
        values.append(number(s["oracle_stability"].get(key), np.nan))
        errors.append(0.0)
        x = np.arange(len(names)) + (k - (len(measures) - 1) / 2) * width
        colours = [f"C{i}" for i in range(len(names) - 1)] + ["grey"]
        ax.bar(x, values, width, yerr=errors, color=colours, hatch="//" if k else None, label=title)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    if len(measures) > 1:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_title("final model: share of NVT runs that " + " / ".join(t for _, t in measures), fontsize=9)
    fig.suptitle(
        f"bench_active_learning ({result['profile']['name']}): {result['settings']['budget']} labels/generation"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labeller", choices=sorted(PROFILES), default="xtb")
    parser.add_argument(
        "--generations", type=int, default=8, help="generations per arm (the last is followed by a train stage)"
    )
    parser.add_argument("--budget", type=int, default=20, help="labels per generation (selection.max_selected)")
    # five: three seeds once showed 43 % where five showed 71 % (results/active_learning.md, section 6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--arms",
        nargs="+",
        default=None,
        help=f"arms to run (default: {' '.join(ARMS + REFERENCE_ARMS)} and every --variant)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra arm: the selfplay arm with this JSON deep-merged onto its configuration",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="JSON",
        dest="common",
        help="JSON deep-merged onto every arm's configuration (e.g. training time)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one process each (1: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--no-stability", action="store_true", help="skip the MD stability runs")
    parser.add_argument(
        "--no-seed-set",
        action="store_true",
        help="start every arm from an empty store, without the profile's labelled known structures",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "selfplay" / "bench_active_learning")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "active_learning.json")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes: tiny test sets and stability runs")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="JSON",
        help="take the runs of arms and seeds already in this result (same labeller, generations "
        "and budget) instead of running them again, e.g. to add --variant arms to a finished run",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only write the .png and .md of an existing result JSON again",
    )
    args = parser.parse_args(argv)
    args.variants = {}
    for text in args.variant:
        name, _, payload = text.partition("=")
        if not name or not payload or name in ARMS + REFERENCE_ARMS:
            parser.error(f"--variant wants NAME=JSON with a new name, got {text!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            # the name becomes part of a database name (no '.', '/', spaces) and of file names
            parser.error(f"--variant name {name!r} may hold letters, digits, '-' and '_' only")
        try:
            args.variants[name] = json.loads(payload)
        except json.JSONDecodeError as exc:
            parser.error(f"--variant {name}: the JSON does not parse ({exc})")
    args.common_overrides = {}
    for text in args.common:
        args.common_overrides = deep_merge(args.common_overrides, json.loads(text))
    args.arms = args.arms or [*ARMS, *REFERENCE_ARMS, *args.variants]
    unknown = [a for a in args.arms if a not in ARMS + REFERENCE_ARMS and a not in args.variants]
    if unknown:
        parser.error(f"unknown arms {unknown}: choose from {list(ARMS + REFERENCE_ARMS)} or name a --variant")
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    started = time.perf_counter()
    profile = get_profile(args.labeller, args.quick)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="selfplay-al-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    base = load_arm_config(profile.config_yaml, {"workdir": str(workdir), **args.common_overrides}, workdir)

    tick = time.perf_counter()
    sets, test_meta = build_test_sets(profile, list(base.elements), args.cache_dir)
    test_paths = {name: str(Path(test_meta["folder"]) / f"{name}.extxyz") for name in sets}
    in_domain = [n for n in sets if n.startswith("md_")] + ["random"]
    oracle_check = check_oracle_is_labeller(base, sets)
    seed_set_path, seed_meta = (None, {}) if args.no_seed_set else build_seed_set(profile, base, args.cache_dir)
    starts = stability_starts(profile, args.cache_dir) if not args.no_stability else []
    oracle = oracle_stability(profile, args.cache_dir, starts) if starts else {}
    starts_path = None
    if starts:
        from ase.io import write

        starts_path = str(workdir / "stability-starts.extxyz")
        write(starts_path, starts, format="extxyz")
    pool_paths, pool_meta = {}, None
    if any(arm in REFERENCE_ARMS for arm in args.arms):
        wanted = args.budget * args.generations
        pool, pool_meta = test_recipe_pool(profile, list(base.elements), args.cache_dir, wanted)
        pool_paths = {name: str(Path(pool_meta["folder"]) / f"{name}.extxyz") for name in pool}
    setup_seconds = time.perf_counter() - tick
    log.info(
        "test sets %s (%s), oracle stable %s; %.0f s",
        {n: len(f) for n, f in sets.items()},
        "cached" if test_meta["cached"] else "built",
        oracle.get("stable_fraction"),
        setup_seconds,
    )

    nominal = nominal_explored(base)

    def job(arm: str, seed: int, random_counts: Optional[dict] = None) -> dict:
        return {
            "arm": arm,
            "seed": seed,
            "profile": args.labeller,
            "quick": args.quick,
            "variants": args.variants,
            "common": args.common_overrides,
            "generations": args.generations,
            "budget": args.budget,
            "threads": args.threads,
            "workdir": str(workdir / f"{arm}-seed{seed}"),
            "test_paths": test_paths,
            "pool_paths": pool_paths,
            "in_domain": in_domain,
            "stability_starts": starts_path,
            "seed_set_path": seed_set_path,
            "random_counts": random_counts,
            "random_count_default": nominal,
        }

    runs: list[dict] = []
    reused = reusable_runs(args)
    selfplay_counts: dict[int, dict] = {}
    pending_no_selfplay = (
        [s for s in args.seeds if ("no-self-play", s) not in reused] if "no-self-play" in args.arms else []
    )
    queue = [
        (arm, seed) for arm in args.arms if arm != "no-self-play" for seed in args.seeds if (arm, seed) not in reused
    ]
    queue.sort(key=lambda item: item[0] != "selfplay")  # selfplay first: no-self-play matches its counts

    def explored_counts(run: dict) -> dict:
        return {str(g["number"]): g["counts"].get("explored", nominal) for g in run["generations"] if g["counts"]}

    def finished(run: dict) -> None:
        runs.append(run)
        last = run["models"][-1] if run["models"] else None
        log.info(
            "%s seed %d: %d labels, in-domain force MAE %s, stable %s, %.0f s",
            run["arm"],
            run["seed"],
            last["labels"] if last else 0,
            f"{last['errors']['in_domain']['force_mae']:.3f}" if last else "-",
            (run["stability"] or {}).get("stable_fraction"),
            run["seconds"],
        )
        if run["arm"] == "selfplay":
            selfplay_counts[run["seed"]] = explored_counts(run)

    def ready_no_selfplay() -> list[tuple[str, int, Optional[dict]]]:
        out = []
        for seed in list(pending_no_selfplay):
            if "selfplay" not in args.arms or seed in selfplay_counts:
                pending_no_selfplay.remove(seed)
                out.append(("no-self-play", seed, selfplay_counts.get(seed)))
        return out

    for run in reused.values():
        finished(run)
    if args.jobs <= 1:
        for arm, seed in queue:
            finished(run_job(job(arm, seed)))
            for item in ready_no_selfplay():
                finished(run_job(job(*item)))
        for item in ready_no_selfplay():
            finished(run_job(job(*item)))
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_job, job(arm, seed)) for arm, seed in queue}
            for item in ready_no_selfplay():  # no selfplay arm to match: nominal counts
                futures.add(pool.submit(run_job, job(*item)))
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result())
                for item in ready_no_selfplay():
                    futures.add(pool.submit(run_job, job(*item)))

    runs.sort(key=lambda r: (args.arms.index(r["arm"]), r["seed"]))
    set_names = list(sets) + ["in_domain"]
    summary = summarize(runs, args.arms, set_names, oracle)
    result = {
        "benchmark": "active_learning",
        "command": ["python", "benchmarks/bench_active_learning.py", *(argv if argv is not None else sys.argv[1:])],
        "profile": {
            "name": profile.name,
            "description": profile.description,
            "oracle": profile.oracle_description,
            "test": profile.test,
            "stability": profile.stability,
            "config_yaml": profile.config_yaml,
        },
        "settings": {
            "generations": args.generations,
            "budget": args.budget,
            "seeds": args.seeds,
            "arms": args.arms,
            "variants": args.variants,
            "common_overrides": args.common_overrides,
            "jobs": args.jobs,
            "threads": args.threads,
            "quick": args.quick,
            "stability": not args.no_stability,
            "seed_set": not args.no_seed_set and profile.seed_set is not None,
            "in_domain_sets": in_domain,
            "target_fraction": TARGET_FRACTION,
            "reused": {
                "file": str(args.reuse) if args.reuse else None,
                "runs": sorted(f"{arm}/{seed}" for arm, seed in reused),
            },
        },
        "environment": environment(args.threads, args.jobs),
        "test_sets": describe_sets(sets),
        "test_set_meta": test_meta,
        "test_recipe_pool_meta": pool_meta,
        "seed_set": seed_meta,
        "oracle_check": oracle_check,
        "oracle_stability": oracle,
        "configs": {arm: next((r["config"] for r in runs if r["arm"] == arm), None) for arm in args.arms},
        "summary": summary,
        "runs": runs,
        "timings": {
            "setup_seconds": setup_seconds,
            "total_seconds": time.perf_counter() - started,
            "run_seconds": {f"{r['arm']}/{r['seed']}": r["seconds"] for r in runs},
        },
    }
    result["environment"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = strict_json(result)
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False))
    result["plot_problem"] = write_plot(args.out.with_suffix(".png"), result)
    write_markdown(args.out.with_suffix(".md"), result)
    log.info("wrote %s (.png, .md) in %.0f s", args.out, result["timings"]["total_seconds"])
    return result


def reusable_runs(args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """Runs of the wanted arms and seeds from ``--reuse``, when its settings match this run's."""
    if args.reuse is None:
        return {}
    import yaml

    earlier = json.loads(Path(args.reuse).read_text())
    # the configuration the arms ran with, however it was spelt (in the profile or by --set)
    mine = {
        "labeller": args.labeller,
        "seed_set": not args.no_seed_set and get_profile(args.labeller).seed_set is not None,
        "generations": args.generations,
        "budget": args.budget,
        "quick": args.quick,
        "config": deep_merge(yaml.safe_load(get_profile(args.labeller, args.quick).config_yaml), args.common_overrides),
        # a run judged by another MD stability protocol is not comparable
        "stability": None if args.no_stability else get_profile(args.labeller, args.quick).stability,
    }
    theirs = {
        "labeller": earlier["profile"]["name"],
        "seed_set": bool(earlier["settings"].get("seed_set")),
        "config": deep_merge(
            yaml.safe_load(earlier["profile"]["config_yaml"]), earlier["settings"].get("common_overrides") or {}
        ),
        "stability": earlier["profile"]["stability"] if earlier["settings"].get("stability") else None,
        **{k: earlier["settings"].get(k) for k in mine if k not in ("labeller", "config", "seed_set", "stability")},
    }
    if mine != theirs:
        differ = sorted(k for k in mine if mine[k] != theirs[k])
        raise SystemExit(f"--reuse {args.reuse}: {', '.join(differ)} differ from this run's; run those arms again")
    return {
        (run["arm"], run["seed"]): run
        for run in earlier["runs"]
        if run["arm"] in args.arms
        and run["seed"] in args.seeds
        and (run["arm"] in ARMS or earlier["settings"]["variants"].get(run["arm"]) == args.variants.get(run["arm"]))
    }


def strict_json(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain and non-finite floats made None."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


if __name__ == "__main__":
    main()
