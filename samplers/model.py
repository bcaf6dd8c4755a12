"""How samplers talk to the model: a batch evaluator or an ASE calculator, either way.

Two interfaces are accepted wherever a sampler takes a ``model``:

* a **batch evaluator**: any object with ``evaluate(list[Atoms]) -> list[dict]``
  (``potential.EnsemblePotential``), one model call for many structures, each dict with
  ``energy``, ``forces`` (n, 3), ``force_deviation`` (n,) and optionally ``stress``,
  ``energy_deviation``, ``descriptor``;
* an **ASE calculator** whose results include ``force_deviation`` (per-atom ensemble
  force deviation, eV/Å), e.g. ``potential.EnsembleCalculator``.

:func:`as_evaluator` and :func:`as_calculator` turn either into the other, so that the
batched MD driver can run on a calculator and the ASE integrators on an evaluator.
:class:`ScoredCalculator` drives dynamics with one calculator (e.g. a classical or
foundation potential) while the ensemble scores the frames.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from pipeline.errors import ConfigError

#: Result keys copied from a calculator into an evaluation dict.
RESULT_KEYS = (
    "energy",
    "forces",
    "stress",
    "force_deviation",
    "energy_deviation",
    "descriptor",
    "model_forces",
    "bias_energy",
)


@runtime_checkable
class BatchEvaluator(Protocol):
    def evaluate(self, frames: Sequence[Atoms]) -> list[dict]: ...


class CalculatorEvaluator:
    """Batch interface over an ASE calculator: structures are evaluated one after another."""

    def __init__(self, calculator: Calculator):
        self.calculator = calculator

    def evaluate(self, frames: Sequence[Atoms], stress: bool | None = None, scores: bool = True) -> list[dict]:
        """One dict per frame.

        ``stress``: None computes it for periodic frames when the calculator can, False
        never; ``scores=False`` skips the deviation (e.g. MD steps between frames).
        """
        out = []
        implemented = getattr(self.calculator, "implemented_properties", ())
        for frame in frames:
            atoms = frame.copy()
            atoms.calc = self.calculator
            # Through get_property, so that results of an earlier structure are never reused.
            result = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
            if stress is not False and atoms.pbc.all() and "stress" in implemented:
                result["stress"] = atoms.get_stress()
            if scores and "force_deviation" in implemented:
                result["force_deviation"] = self.calculator.get_property("force_deviation", atoms)
            for key in RESULT_KEYS:
                if key not in result and key in self.calculator.results:
                    result[key] = self.calculator.results[key]
            out.append(result)
        return out


#: What the sampler calculators return: ASE's properties and the ensemble's scores.
SCORED_PROPERTIES = ("energy", "free_energy", "forces", "stress", "force_deviation", "energy_deviation", "descriptor")


class EvaluatorCalculator(Calculator):
    """ASE calculator over a batch evaluator (one structure per call)."""

    implemented_properties = list(SCORED_PROPERTIES)

    def __init__(self, evaluator: BatchEvaluator, **kwargs):
        super().__init__(**kwargs)
        self.evaluator = evaluator

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        (result,) = self.evaluator.evaluate([self.atoms.copy()])
        self.results = {key: result[key] for key in RESULT_KEYS if key in result}
        self.results["free_energy"] = self.results["energy"]


class ScoredCalculator(Calculator):
    """Forces from ``driver``, ensemble deviation from ``scorer``, computed only when asked.

    Dynamics runs on the driver every step; ``force_deviation`` / ``descriptor`` are
    computed by the scorer (an ensemble calculator or batch evaluator) only for the
    configurations whose score is requested, i.e. the frames a sampler keeps.
    """

    implemented_properties = list(SCORED_PROPERTIES)

    def __init__(self, driver: Calculator, scorer: Any, **kwargs):
        super().__init__(**kwargs)
        self.driver = driver
        self.scorer = as_evaluator(scorer)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        wanted = set(properties) & {"energy", "free_energy", "forces", "stress"}
        if not {"energy", "forces"} <= set(self.results) or ("stress" in wanted and "stress" not in self.results):
            driven = self.atoms.copy()
            driven.calc = self.driver
            self.results["energy"] = float(driven.get_potential_energy())
            self.results["free_energy"] = self.results["energy"]
            self.results["forces"] = np.asarray(driven.get_forces())
            if self.atoms.pbc.all() and "stress" in getattr(self.driver, "results", {}):
                self.results["stress"] = np.array(self.driver.results["stress"])  # came for free (EMT)
        if "stress" in wanted and "stress" not in self.results and self.atoms.pbc.all():
            driven = self.atoms.copy()
            driven.calc = self.driver
            self.results["stress"] = np.asarray(driven.get_stress())
        if {"force_deviation", "energy_deviation", "descriptor"} & set(properties):
            (scored,) = self.scorer.evaluate([self.atoms.copy()])
            for key in ("force_deviation", "energy_deviation", "descriptor"):
                if key in scored:
                    self.results[key] = scored[key]


def as_evaluator(model: Any) -> BatchEvaluator:
    """The batch interface of ``model`` (an evaluator, or an ASE calculator wrapped)."""
    if model is None:
        raise ConfigError("this sampler needs a model (an ensemble calculator or evaluator); none was given")
    if isinstance(model, EvaluatorCalculator):
        return model.evaluator
    for attribute in ("potential", "ensemble", "model"):
        inner = getattr(model, attribute, None)
        if isinstance(model, Calculator) and callable(getattr(inner, "evaluate", None)):
            return inner
    if callable(getattr(model, "evaluate", None)):
        return model
    if isinstance(model, Calculator):
        return CalculatorEvaluator(model)
    raise ConfigError(f"model of type {type(model).__name__} has neither evaluate() nor the ASE calculator interface")


def as_calculator(model: Any) -> Calculator:
    """An ASE calculator for ``model`` (the calculator itself, or an evaluator wrapped)."""
    if model is None:
        raise ConfigError("this sampler needs a model (an ensemble calculator or evaluator); none was given")
    if isinstance(model, Calculator):
        return model
    if callable(getattr(model, "evaluate", None)):
        return EvaluatorCalculator(model)
    raise ConfigError(f"model of type {type(model).__name__} has neither evaluate() nor the ASE calculator interface")


def evaluate_parameters(evaluator: Any) -> set[str]:
    """The parameter names of ``evaluator.evaluate`` (empty where they cannot be read)."""
    try:
        return set(inspect.signature(evaluator.evaluate).parameters)
    except (TypeError, ValueError):
        return set()


def evaluate_options(evaluator: Any, *, stress: bool | None = None, scores: bool = True) -> dict:
    """The ``stress``/``scores`` keywords for ``evaluator.evaluate``, those it accepts.

    ``stress=False`` spares the virial (fixed-cell work), ``scores=False`` the ensemble
    deviation (steps whose frames are not kept); evaluators without the keyword
    compute what they always compute.
    """
    accepted = evaluate_parameters(evaluator)
    options: dict[str, Any] = {}
    if "stress" in accepted and stress is not None:
        options["stress"] = stress
    if "scores" in accepted:
        options["scores"] = scores
    return options


def load_model(path: Path | str, device: str | None = None) -> Calculator:
    """The ensemble calculator saved at ``path`` (a potential/ checkpoint)."""
    import potential

    return potential.load_calculator(Path(path), device=device)


def score_frames(model: Any, frames: Sequence[Atoms], batch_size: int = 64) -> list[dict]:
    """Evaluate ``frames`` with ``model`` in batches; one result dict per frame."""
    evaluator = as_evaluator(model)
    results: list[dict] = []
    for start in range(0, len(frames), batch_size):
        results.extend(evaluator.evaluate(list(frames[start : start + batch_size])))
    return results
