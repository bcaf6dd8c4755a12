"""A small store whose every count is known by hand (see the tables below).

Frames (each frame's elements are the distinct elements of its structure):

====  ==========  ========  =============  ==============  =========================
name  structure   gen       source         picked as       outcome
====  ==========  ========  =============  ==============  =========================
f1    Cu4         0         random         candidate       label 10 s cpu 12 cycles
f2    Cu3Al       0         random         candidate       label 20 s cpu 14 cycles
f3    H2O         0         melt_quench    sentinel        label  5 s cpu 10 cycles
f4    CuO         0         substitution   candidate       failure unconverged
f5    Al4         1         melt_quench    candidate       label 30 s gpu 20 cycles
f6    CH4         1         substitution   candidate       label  8 s gpu  9 cycles
f7    Al2O        1         random         candidate       failure timeout
f8    Cu2O        1         random         candidate       failure unconverged
f9    Cu          imported  import         -               label (no wall time)
f10   H2          imported  import         -               label (no wall time)
====  ==========  ========  =============  ==============  =========================

Generations: 0 completed, 1 completed, 2 running (nothing labelled yet).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

THEORY = "test-theory"


def _cu3al() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[0] = 13
    return atoms


def _oxide(symbol: str, count: int) -> Atoms:
    positions = [(1.9 * i, 0.0, 0.0) for i in range(count)] + [(0.95, 1.5, 0.0)]
    return Atoms([symbol] * count + ["O"], positions=positions, cell=[10, 10, 10], pbc=False)


# name: (structure, generation, source, selected_as, outcome)
#   outcome: ("label", wall_time, device, scf_cycles) | ("failure", reason)
FRAMES = {
    "f1": (lambda: bulk("Cu", "fcc", a=3.6, cubic=True), 0, "random", "candidate", ("label", 10.0, "cpu", 12)),
    "f2": (_cu3al, 0, "random", "candidate", ("label", 20.0, "cpu", 14)),
    "f3": (lambda: molecule("H2O"), 0, "melt_quench", "sentinel", ("label", 5.0, "cpu", 10)),
    "f4": (
        lambda: _oxide("Cu", 1),
        0,
        "substitution",
        "candidate",
        ("failure", "unconverged: SCF did not converge after 4 attempts"),
    ),
    "f5": (lambda: bulk("Al", "fcc", a=4.05, cubic=True), 1, "melt_quench", "candidate", ("label", 30.0, "gpu", 20)),
    "f6": (lambda: molecule("CH4"), 1, "substitution", "candidate", ("label", 8.0, "gpu", 9)),
    "f7": (lambda: _oxide("Al", 2), 1, "random", "candidate", ("failure", "timeout: no result within 600 s")),
    "f8": (
        lambda: _oxide("Cu", 2),
        1,
        "random",
        "candidate",
        ("failure", "unconverged: SCF did not converge after 4 attempts"),
    ),
    "f9": (lambda: bulk("Cu", "fcc", a=3.61), None, "import", None, ("label", None, None, None)),
    "f10": (lambda: molecule("H2"), None, "import", None, ("label", None, None, None)),
}

# Hand-counted from the table in the module docstring.
LABELS_BY_ELEMENT = {
    (0, "Cu"): 2, (0, "Al"): 1, (0, "H"): 1, (0, "O"): 1,
    (1, "Al"): 1, (1, "C"): 1, (1, "H"): 1,
    (None, "Cu"): 1, (None, "H"): 1,
}  # fmt: skip
FAILURES_BY_ELEMENT = {(0, "Cu"): 1, (0, "O"): 1, (1, "Al"): 1, (1, "O"): 2, (1, "Cu"): 1}
LABELS_BY_GENERATION = {0: 3, 1: 2, None: 2}
FAILURES_BY_GENERATION = {0: 1, 1: 2}
FRAMES_BY_SOURCE = {
    (0, "random", "candidate"): 2, (0, "melt_quench", "sentinel"): 1, (0, "substitution", "candidate"): 1,
    (1, "melt_quench", "candidate"): 1, (1, "substitution", "candidate"): 1, (1, "random", "candidate"): 2,
    (None, "import", None): 2,
}  # fmt: skip
# Labels per (generation, source): the source is the frame's, copied onto the label.
LABELS_BY_SOURCE = {
    (0, "random"): 2, (0, "melt_quench"): 1, (1, "melt_quench"): 1, (1, "substitution"): 1, (None, "import"): 2,
}  # fmt: skip
DFT_TIME = {0: {"n": 3, "wall_time": 35.0}, 1: {"n": 2, "wall_time": 38.0}}
SCF_CYCLES = {0: {"n": 3, "cycles": 36}, 1: {"n": 2, "cycles": 29}}
# Per generation, as summaries store them: (generation, n_atoms, device).
WALL_TIME_BY_GENERATION_AND_SIZE = {
    (0, 4, "cpu"): {"n": 2, "wall_time": 30.0}, (0, 3, "cpu"): {"n": 1, "wall_time": 5.0},
    (1, 4, "gpu"): {"n": 1, "wall_time": 30.0}, (1, 5, "gpu"): {"n": 1, "wall_time": 8.0},
}  # fmt: skip
WALL_TIME_BY_SIZE = {
    (4, "cpu"): {"n": 2, "wall_time": 30.0}, (3, "cpu"): {"n": 1, "wall_time": 5.0},
    (4, "gpu"): {"n": 1, "wall_time": 30.0}, (5, "gpu"): {"n": 1, "wall_time": 8.0},
}  # fmt: skip
FAILURE_REASONS = {
    (0, "unconverged: SCF did not converge after 4 attempts"): 1,
    (1, "unconverged: SCF did not converge after 4 attempts"): 1,
    (1, "timeout: no result within 600 s"): 1,
}


def generation_documents() -> list[dict]:
    """Generation documents as the flow writes them (see pipeline.dashboard.queries)."""
    t = datetime(2025, 3, 1, 2, 0, 0)

    def stage(hour_start, hour_end, seconds=None):
        return {
            "status": "completed",
            "started_at": t.replace(hour=hour_start).isoformat(),
            "finished_at": t.replace(hour=hour_end).isoformat(),
            "seconds": seconds if seconds is not None else 3600.0 * (hour_end - hour_start),
        }

    gen0 = {
        "number": 0,
        "status": "completed",
        "thresholds": {"lo": 0.05, "hi": 0.5},
        "counts": {"explored": 40, "accurate": 0, "candidate": 0, "failed": 0, "unscored": 40, "selected": 3,
                   "sentinel": 1, "labelled": 3, "dft_failed": 1},
        "ledger": {"Cu": {"explored": 20, "accurate": 0, "candidate": 0, "failed": 0, "unscored": 20, "selected": 3,
                          "sentinel": 0, "labelled": 2, "dft_failed": 1}},
        "stages": {"train": stage(2, 3), "explore": stage(3, 4), "select": stage(4, 4, 5.0),
                   "label": stage(4, 6), "report": stage(6, 6, 2.0)},
        "metrics": {
            "model": None,
            "sentinel": None,
            "calibration": [],
            "sigma_f_sample": [0.1] * 50,
        },
        "prefect_flow_run_id": "0c0ffee0-0000-4000-8000-000000000000",
        "started_at": t,
        "finished_at": t.replace(hour=6),
    }  # fmt: skip
    gen1 = {
        "number": 1,
        "status": "completed",
        "thresholds": {"lo": 0.08, "hi": 0.6},
        "counts": {"explored": 50, "accurate": 30, "candidate": 15, "failed": 5, "unscored": 0, "selected": 4,
                   "sentinel": 0, "labelled": 2, "dft_failed": 2},
        "ledger": {"Al": {"explored": 25, "accurate": 12, "candidate": 10, "failed": 3, "unscored": 0, "selected": 2,
                          "sentinel": 0, "labelled": 1, "dft_failed": 1}},
        "stages": {"train": stage(7, 8), "explore": stage(8, 9), "select": stage(9, 9, 5.0),
                   "label": stage(9, 10, 1800.0), "report": stage(10, 10, 2.0)},
        "metrics": {
            "model": {"frames": 2, "energy_mae_per_atom": 0.012, "force_mae": 0.21, "force_rmse": 0.3,
                      "per_element": {"Al": {"force_mae": 0.25, "n_atoms": 4}, "C": {"force_mae": 0.1, "n_atoms": 1},
                                      "H": {"force_mae": 0.05, "n_atoms": 4}}},
            "sentinel": {"frames": 1, "energy_mae_per_atom": 0.004, "force_mae": 0.07, "force_rmse": 0.09,
                         "per_element": {"Cu": {"force_mae": 0.07, "n_atoms": 4}}},
            "calibration": [
                {"sigma_f": 0.2, "force_error_max": 0.3, "selected_as": "candidate", "n_atoms": 4},
                {"sigma_f": 0.15, "force_error_max": 0.1, "selected_as": "candidate", "n_atoms": 5},
                {"sigma_f": 0.03, "force_error_max": 0.04, "selected_as": "sentinel", "n_atoms": 4},
            ],
            "sigma_f_quantiles": {"q10": 0.02, "q50": 0.06, "q90": 0.3, "q99": 0.8},
        },
        "prefect_flow_run_id": "0c0ffee0-0000-4000-8000-000000000001",
        "started_at": t.replace(hour=7),
        "finished_at": t.replace(hour=10),
    }  # fmt: skip
    gen2 = {
        "number": 2,
        "status": "running",
        "thresholds": {"lo": 0.08, "hi": 0.6},
        "counts": {},
        "ledger": {},
        "stages": {
            "train": stage(11, 12),
            "explore": {"status": "running", "started_at": t.replace(hour=12).isoformat()},
        },
        "metrics": {},
        "started_at": t.replace(hour=11),
    }
    return [gen0, gen1, gen2]


def fill_store() -> dict:
    """Write the frames, labels, failures and generations above into the connected store."""
    from pipeline.documents import Generation
    from pipeline.store import add_failure, add_frame, add_label

    frames = {}
    for name, (build, generation, source, selected_as, outcome) in FRAMES.items():
        atoms = build()
        frame, created = add_frame(atoms, source=source, generation=generation, selected_as=selected_as,
                                   provenance={"sampler": source})  # fmt: skip
        assert created, name
        frames[name] = frame
        if outcome[0] == "label":
            _, wall_time, device, cycles = outcome
            info = {} if device is None else {"device": device, "scf_cycles": cycles, "converged": True}
            add_label(frame, theory=THEORY, energy=-1.0 * len(atoms), forces=np.zeros((len(atoms), 3)),
                      info=info, wall_time=wall_time, generation=generation)  # fmt: skip
        else:
            add_failure(frame, theory=THEORY, reason=outcome[1], attempts=[{"rung": 0}], generation=generation)
    for doc in generation_documents():
        Generation(**doc).save()
    return frames


def naive_element_counts(kind: str) -> dict:
    """(generation, element) -> count, straight from the FRAMES table (independent of any pipeline)."""
    counts: dict = {}
    for build, generation, _, _, outcome in FRAMES.values():
        if (outcome[0] == "label") != (kind == "labels"):
            continue
        for element in set(build().get_chemical_symbols()):
            counts[(generation, element)] = counts.get((generation, element), 0) + 1
    return counts


def probe_entry(force_mae: float, energy_mae_per_atom: float, labels: int, frames: int) -> dict:
    """One ``metrics.probes`` entry as the report stage writes it (flows.stages.evaluate_probe_sets)."""
    return {
        "frames": frames, "energy_mae_per_atom": energy_mae_per_atom, "energy_rmse_per_atom": energy_mae_per_atom,
        "force_mae": force_mae, "force_rmse": 1.2 * force_mae, "stress_mae": None, "stress_frames": 0,
        "per_element": {}, "trained_on_labels": labels, "model": None, "theory": THEORY, "probe_set": "0" * 24,
    }  # fmt: skip


#: generation -> metrics.probes. Generation 0 is a cold start (no model: no entry at all);
#: generation 2 scored "cells" but not "molecules" (added and removed sets look like this).
PROBES = {
    1: {
        "cells": probe_entry(0.30, 0.020, labels=3, frames=3),
        "molecules": probe_entry(0.20, 0.010, labels=3, frames=2),
    },
    2: {"cells": probe_entry(0.15, 0.010, labels=5, frames=3)},
}


def add_probe_metrics() -> None:
    """Give the generations of :func:`fill_store` the probe-set errors of :data:`PROBES`."""
    from pipeline.documents import Generation

    for number, probes in PROBES.items():
        Generation._get_collection().update_one({"number": number}, {"$set": {"metrics.probes": probes}})
