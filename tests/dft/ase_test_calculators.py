"""Small ASE calculators for the tests of the ``ase`` labeller kind (tests/dft/test_ase_calculator.py).

They are importable by path (``tests.dft.ase_test_calculators:SlowEMT``) from a worker
process too: the runner puts the repository root on the worker's PYTHONPATH. Each one
exercises one behaviour of a real code: taking long, raising, reporting non-convergence,
rejecting a keyword, running as a separate program that reads and writes files, or one
that hangs.

Run as a program (``python tests/dft/ase_test_calculators.py IN OUT``) it is the "code"
that :class:`EMTProgram` starts: EMT on the frame in IN, results to OUT.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, FileIOCalculator, all_changes
from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT after sleeping ``seconds``: a code that takes (nearly) forever when asked to."""

    default_parameters = {**EMT.default_parameters, "seconds": 3600.0}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(float(self.parameters.seconds))
        super().calculate(atoms, properties, system_changes)


class SlowForLargeEMT(EMT):
    """EMT that hangs for ``seconds`` on frames of ``min_atoms`` atoms or more: one bad frame in a batch."""

    default_parameters = {**EMT.default_parameters, "seconds": 3600.0, "min_atoms": 10}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if len(atoms if atoms is not None else self.atoms) >= int(self.parameters.min_atoms):
            time.sleep(float(self.parameters.seconds))
        super().calculate(atoms, properties, system_changes)


class RaisingCalculator(Calculator):
    """A code that fails: every calculation raises."""

    implemented_properties = ["energy", "forces"]
    default_parameters = {"message": "SCF diverged"}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        raise RuntimeError(self.parameters.message)


class FlaggedEMT(EMT):
    """EMT that reports its convergence the way ASE's Vasp does: a ``converged`` attribute."""

    default_parameters = {**EMT.default_parameters, "report_converged": True}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.converged = bool(self.parameters.report_converged)


class StrictCalculator(Calculator):
    """A calculator whose constructor takes only the keywords it names: EMT scaled by ``scale``."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        frame = self.atoms.copy()
        frame.calc = EMT()
        energy = self.scale * frame.get_potential_energy()
        self.results = {"energy": energy, "free_energy": energy, "forces": self.scale * frame.get_forces()}


class EMTProgram(FileIOCalculator):
    """EMT as a separate program that communicates through files in ``directory``."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    # Run as a script by absolute path: the program starts in the frame's directory.
    _legacy_default_command = f"{sys.executable} {Path(__file__).resolve()} frame.json results.json"

    def write_input(self, atoms, properties=None, system_changes=None):
        super().write_input(atoms, properties, system_changes)  # creates the directory
        frame = {
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(),
        }
        with open(f"{self.directory}/frame.json", "w") as handle:
            json.dump(frame, handle)

    def read_results(self):
        with open(f"{self.directory}/results.json") as handle:
            raw = json.load(handle)
        self.results = {key: np.array(value) if isinstance(value, list) else value for key, value in raw.items()}


class HangingProgram(EMTProgram):
    """A separate program that never finishes (as a stuck ``mpirun vasp``): it writes its
    process id to ``program.pid`` in its directory and sleeps."""

    _legacy_default_command = f"{sys.executable} {Path(__file__).resolve()} --hang frame.json results.json"


def _run_emt_program(frame_file: str, results_file: str) -> None:
    with open(frame_file) as handle:
        frame = json.load(handle)
    atoms = Atoms(numbers=frame["numbers"], positions=frame["positions"], cell=frame["cell"], pbc=frame["pbc"])
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist()}
    results["free_energy"] = results["energy"]
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress().tolist()
    with open(results_file, "w") as handle:
        # repr-exact floats: json writes the shortest string that reads back identically
        json.dump(results, handle)


if __name__ == "__main__":
    if sys.argv[1] == "--hang":
        Path("program.pid").write_text(str(os.getpid()))
        time.sleep(600)
    else:
        _run_emt_program(sys.argv[1], sys.argv[2])
