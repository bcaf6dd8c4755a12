"""The level of theory and how to reach it: one settings object for CPU and GPU.

:class:`DFTSettings` holds everything that decides the number (functional, basis, ECP,
pseudopotential, grids, tolerances, spin/charge policy, smearing) and everything that only
decides how the number is obtained (device, time limit, memory). Only the first group
enters :meth:`DFTSettings.theory_key`, the key under which labels are stored, so moving a
job from CPU to GPU, or giving it more time, never invalidates labels.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import ConfigError

#: Bump when the meaning of a field in :meth:`DFTSettings.theory_spec` changes.
THEORY_SPEC_VERSION = 1
#: Bump when the electronic-state search of ``spin_policy='auto'`` changes what it can find.
SPIN_SEARCH_VERSION = 1

Device = Literal["auto", "cpu", "gpu"]
SpinPolicy = Literal["auto", "lowest", "high", "from_info"]
Rung = Literal["damping", "guess", "newton", "smearing"]
SmearingMethod = Literal["fermi", "gaussian"]
#: Dispersion corrections any labeller kind can add (dft/dispersion.py); part of the key when set.
Dispersion = Literal["d3bj", "d4"]

DEFAULT_LADDER: tuple[Rung, ...] = ("damping", "guess", "newton", "smearing")


class DFTSettings(BaseModel):
    """Kohn-Sham DFT single points with PySCF (CPU) or GPU4PySCF (GPU).

    Molecules and clusters (``atoms.pbc`` all False) use Gaussian basis ``basis`` with the
    matching ECP; periodic cells (``pbc`` all True) use ``pbc_basis`` with the GTH
    pseudopotential ``pbc_pseudo`` on a plane-wave (FFT) density grid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The labeller kind (dft/labeller.py); not in theory_spec, so existing keys stay.
    backend: Literal["pyscf"] = "pyscf"
    #: Whether :meth:`compute` needs a working directory of its own per frame.
    uses_workdir: ClassVar[bool] = False

    # --- level of theory: molecules and clusters ------------------------------------------
    functional: str = Field("PBE", description="Exchange-correlation functional (libxc name as PySCF reads it).")
    basis: str = Field("def2-SVP", description="Gaussian basis for molecules and clusters.")
    ecp: str = Field(
        "auto",
        description="Effective core potential: 'auto' = the def2 ECP for def2 bases (Rb..Rn), none otherwise; "
        "'none'; or a named ECP set applied to every element that has one.",
    )
    density_fit: bool = Field(True, description="Density fitting (RI-J) for the Coulomb term of molecules.")
    auxbasis: Optional[str] = Field(None, description="Auxiliary basis; None = PySCF's default for the basis.")
    grids_level: int = Field(3, ge=0, le=9, description="Becke-Lebedev grid level (PySCF's 0..9) for molecules.")
    grid_response: bool = Field(
        False, description="Include the grid-weight response in molecular forces (exact derivative of the energy)."
    )
    # --- level of theory: periodic cells --------------------------------------------------
    pbc_basis: str = Field("gth-dzvp-molopt-sr", description="GTH-matched Gaussian basis for periodic cells.")
    pbc_pseudo: str = Field("gth-pbe", description="GTH pseudopotential family for periodic cells.")
    pbc_ke_cutoff: Optional[float] = Field(
        None, gt=0, description="Kinetic energy cutoff (Hartree) of the FFT grid; None = PySCF's choice from the basis."
    )
    pbc_precision: float = Field(1e-8, gt=0, lt=1e-3, description="Integral screening precision for cells.")
    kpts: Optional[tuple[int, int, int]] = Field(
        None, description="Monkhorst-Pack mesh (Γ-centred); None = from kpoint_density. (1, 1, 1) = Γ only."
    )
    kpoint_density: float = Field(
        1.5,
        ge=0,
        description="k-points per Å⁻¹ along each reciprocal vector (ASE's convention): n_i = ceil(2π·density·|b_i|). "
        "0 = Γ only.",
    )
    # --- SCF convergence ------------------------------------------------------------------
    conv_tol: float = Field(1e-9, gt=0, lt=1e-3, description="SCF energy tolerance (Hartree).")
    conv_tol_grad: Optional[float] = Field(
        None, gt=0, lt=1e-1, description="SCF orbital-gradient tolerance; None = sqrt(conv_tol) (PySCF's rule)."
    )
    max_cycle: int = Field(60, ge=1, le=1000, description="SCF iterations per ladder rung.")
    # --- electronic state -----------------------------------------------------------------
    charge: int = Field(0, description="Net charge unless spin_policy='from_info' and atoms.info has 'charge'.")
    spin_policy: SpinPolicy = Field(
        "auto",
        description="'auto': search for the lowest electronic state (spin-polarized, broken-symmetry and higher "
        "multiplicities, SCF stability; see dft/spin.py); 'lowest': singlet or doublet only; 'high': sum of "
        "free-atom ground-state moments (parity-corrected); 'from_info': atoms.info['charge'] and "
        "atoms.info['spin'] (= 2S), falling back to 'auto'.",
    )
    spin_search_gap: float = Field(
        3.0,
        ge=0,
        description="'auto': a frame whose first (lowest-spin) solution has a HOMO-LUMO gap of at least this "
        "many eV is accepted as it is (the cheap path of closed-shell molecules near equilibrium); below it the "
        "state search runs.",
    )
    spin_max_states: int = Field(
        6, ge=2, le=40, description="'auto': at most this many spin multiplicities per frame in the search."
    )
    spin_abandon_ev: Optional[float] = Field(
        1.0,
        gt=0,
        description="'auto': stop a candidate state whose SCF energy has settled more than this many eV above the "
        "best state found so far (it cannot win); None: run every candidate to convergence.",
    )
    # --- smearing and the rescue ladder ---------------------------------------------------
    smearing_method: SmearingMethod = "fermi"
    smearing_sigma: float = Field(0.1, gt=0, le=2.0, description="Smearing width in eV (0.1 eV ≈ 1160 K).")
    always_smear: bool = Field(False, description="Smear from the first SCF (metals), not only as the last rung.")
    ladder: tuple[Rung, ...] = Field(
        DEFAULT_LADDER, description="Rescue rungs tried in order after the plain DIIS SCF fails to converge."
    )
    dispersion: Optional[Dispersion] = Field(
        None, description="D3(BJ) or D4 correction added to energy, forces and stress (dft/dispersion.py)."
    )
    # --- execution (not part of the level of theory) --------------------------------------
    device: Device = Field("auto", description="'auto' = GPU4PySCF when a CUDA GPU and gpu4pyscf exist, else CPU.")
    time_limit: Optional[float] = Field(
        3600.0, gt=0, description="Wall-clock seconds per frame (SCF ladder + forces); None = no limit."
    )
    threads: Optional[int] = Field(
        None, ge=1, description="CPU threads per frame; None = OpenMP's default, or cores/workers in a batch."
    )
    max_memory_mb: Optional[int] = Field(None, ge=500, description="PySCF max_memory; None = PySCF's default.")
    min_covalent_ratio: float = Field(
        0.3, ge=0, le=1, description="Refuse frames with two atoms closer than this × the sum of covalent radii."
    )

    @field_validator("functional", "basis", "pbc_basis", "pbc_pseudo", "ecp")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("kpts")
    @classmethod
    def _positive_mesh(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError("k-point mesh entries must be >= 1")
        return value

    @model_validator(mode="after")
    def _ladder_unique(self) -> "DFTSettings":
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError(f"ladder has repeated rungs: {list(self.ladder)}")
        return self

    # --- derived quantities -----------------------------------------------------------------
    @property
    def ecp_name(self) -> Optional[str]:
        """The ECP set actually used for molecules (None = all-electron)."""
        key = self.ecp.lower()
        if key == "none":
            return None
        if key == "auto":
            return self.basis if self.basis.lower().startswith("def2-") else None
        return self.ecp

    @property
    def smearing_sigma_hartree(self) -> float:
        from ase.units import Hartree

        return self.smearing_sigma / Hartree

    @property
    def smearing_possible(self) -> bool:
        return self.always_smear or "smearing" in self.ladder

    def theory_spec(self) -> dict[str, Any]:
        """The level of theory as a JSON-ready dict: what a label's number depends on."""
        spec: dict[str, Any] = {
            "spec_version": THEORY_SPEC_VERSION,
            "method": "KS-DFT",
            "functional": self.functional.lower(),
            "molecule": {
                "basis": self.basis.lower(),
                "ecp": self.ecp_name.lower() if self.ecp_name else None,
                "density_fit": self.density_fit,
                "auxbasis": self.auxbasis.lower() if self.auxbasis else ("default" if self.density_fit else None),
                "grids_level": self.grids_level,
                "grid_response": self.grid_response,
            },
            "periodic": {
                "basis": self.pbc_basis.lower(),
                "pseudo": self.pbc_pseudo.lower(),
                "ke_cutoff": self.pbc_ke_cutoff,
                "precision": self.pbc_precision,
                "kpts": list(self.kpts) if self.kpts is not None else None,
                "kpoint_density": None if self.kpts is not None else self.kpoint_density,
                "integrals": "fftdf",
            },
            "scf": {"conv_tol": self.conv_tol, "conv_tol_grad": self.conv_tol_grad},
            "electronic_state": self._electronic_state_spec(),
            # Smearing changes the number (free energy) for the frames that need it.
            "smearing": (
                {
                    "method": self.smearing_method,
                    "sigma_ev": self.smearing_sigma,
                    "when": "always" if self.always_smear else "last_rung",
                }
                if self.smearing_possible
                else None
            ),
        }
        if self.dispersion:  # only when set: labels without dispersion keep their key
            from dft.dispersion import dispersion_spec

            spec["dispersion"] = dispersion_spec(self)
        return spec

    def _electronic_state_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"charge": self.charge, "spin_policy": self.spin_policy}
        if self.spin_policy in ("auto", "from_info"):
            # What decides which state the search can find; the older policies keep the
            # spec (and so the keys) they always had.
            spec["search"] = {
                "version": SPIN_SEARCH_VERSION,
                "gap_ev": self.spin_search_gap,
                "max_states": self.spin_max_states,
            }
            if self.spin_abandon_ev is not None:
                # A winner could in principle be abandoned, so the margin is part of the key
                # (search version 2); without it the search is version 1's, key and all.
                spec["search"].update(version=2, abandon_ev=self.spin_abandon_ev)
        return spec

    def theory_key(self) -> str:
        """Stable short hash of :meth:`theory_spec` (16 hex digits of SHA-256)."""
        return spec_key(self.theory_spec())

    def check(self) -> None:
        """Raise :class:`ConfigError` if the functional is unknown to PySCF/libxc."""
        _check_functional(self.functional)

    # --- the labeller protocol (dft/labeller.py) --------------------------------------------
    def plan(self, atoms, name: str = "frame"):
        """Validate one frame; a picklable :class:`dft.validate.FramePlan`."""
        from dft.validate import plan_frame

        return plan_frame(atoms, self, name)

    def preload(self, plan) -> None:
        """Import PySCF (and GPU4PySCF) in the worker before its time limit starts."""
        from dft.runner import preload_pyscf

        preload_pyscf(plan, self)

    def compute(self, atoms, plan, *, on_attempt=None, name: str = "frame", workdir=None):
        """The SCF rescue ladder and forces in this process: a result or a recorded failure."""
        from dft.compute import compute_frame

        return compute_frame(atoms, self, plan=plan, on_attempt=on_attempt, name=name)


def spec_key(spec: dict[str, Any]) -> str:
    """The level-of-theory key of a spec: 16 hex digits of the SHA-256 of its canonical JSON."""
    return _hash_spec(json.dumps(spec, sort_keys=True, separators=(",", ":")))


@lru_cache(maxsize=64)
def _hash_spec(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@lru_cache(maxsize=32)
def _check_functional(functional: str) -> None:
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(functional)
    except Exception as exc:  # libxc raises KeyError/ValueError/NotImplementedError
        raise ConfigError(f"unknown exchange-correlation functional {functional!r}: {exc}") from None
