"""What a single point returns: a label, or a failure that says why.

Both are plain dataclasses that pickle (they cross the process boundary of the time
limit) and whose ``info`` dicts are JSON-ready (they go into the store as they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from ase import Atoms

#: Failure kinds: what a flow may want to count or retry differently.
FAILURE_KINDS = ("unconverged", "timeout", "error", "gpu_error", "out_of_memory", "invalid", "worker_died")


def theory_info(settings: Any) -> dict[str, Any]:
    """What every result and failure of a labeller kind records about its level of theory."""
    return {
        "theory_key": settings.theory_key(),
        "theory": settings.theory_spec(),
        "settings": settings.model_dump(mode="json"),
    }


@dataclass
class DFTResult:
    """A converged single point in ASE units.

    ``energy`` (eV) is the energy whose negative gradient is ``forces`` (eV/Å): with
    smearing that is the free energy ``E - σS``. ``stress`` (eV/Å³, Voigt order xx, yy,
    zz, yz, xz, xy, ASE's sign) is given for periodic cells when the backend provides it.
    """

    energy: float
    forces: np.ndarray
    stress: Optional[np.ndarray]
    theory_key: str
    info: dict[str, Any] = field(default_factory=dict)

    ok = True

    @property
    def magmoms(self) -> Optional[np.ndarray]:
        """Mulliken spin moment of each atom (electrons), when the labeller gives them."""
        moments = self.info.get("magnetic_moments")
        return None if moments is None else np.asarray(moments, dtype=float)

    @property
    def smeared(self) -> bool:
        """Whether ``energy`` is a free energy with fractional occupations."""
        return bool(self.info.get("smearing_used"))

    def state_fields(self) -> dict[str, Any]:
        """The electronic state as the store keeps it (``pipeline.store.add_label``)."""
        return {"magmoms": self.magmoms, "multiplicity": self.info.get("multiplicity"), "smeared": self.smeared}

    def to_atoms(self, atoms: Atoms) -> Atoms:
        """A copy of ``atoms`` carrying this result in a SinglePointCalculator."""
        from ase.calculators.singlepoint import SinglePointCalculator

        labelled = atoms.copy()
        labelled.calc = None
        results: dict[str, Any] = {"energy": self.energy, "forces": np.array(self.forces)}
        if self.stress is not None:
            results["stress"] = np.array(self.stress)
        if self.magmoms is not None:
            results["magmoms"] = self.magmoms
        labelled.calc = SinglePointCalculator(labelled, **results)
        return labelled


@dataclass
class DFTFailure:
    """A frame that could not be labelled, with the reason and every attempt made."""

    reason: str
    kind: str
    theory_key: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    ok = False

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {self.kind!r}")
        self.reason = " ".join(str(self.reason).split())
