"""Checks that run before any SCF: the frame, the basis/ECP/pseudo coverage, charge and spin.

Everything here is cheap (basis-file look-ups, cached) so the batch API can check every
frame before it starts the first SCF.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, ground_state_magnetic_moments

from dft.settings import DFTSettings
from pipeline.atoms import check_atoms
from pipeline.errors import ConfigError, InvalidStructure

log = logging.getLogger(__name__)

#: Heaviest element without a core potential in the def2 family (Kr); def2 bases for
#: heavier elements are built for the def2 ECP and are wrong without it.
DEF2_LAST_ALL_ELECTRON = 36


@dataclass(frozen=True)
class ElectronicState:
    """Charge and spin of one frame, and where they came from."""

    charge: int
    spin: int  # 2S = N_alpha - N_beta
    n_electrons: int  # all-electron count (before ECP/pseudo removes cores)
    policy: str
    source: str  # "settings" or "atoms.info"
    #: Whether the lowest state is searched for (dft/spin.py) or this one is computed.
    search: bool = False

    @property
    def multiplicity(self) -> int:
        return self.spin + 1

    @property
    def unrestricted(self) -> bool:
        return self.spin != 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["multiplicity"] = self.multiplicity
        out["unrestricted"] = self.unrestricted
        return out


@dataclass(frozen=True)
class FramePlan:
    """What the SCF of one frame will be: periodic or not, and its electronic state."""

    periodic: bool
    state: ElectronicState
    elements: tuple[str, ...]


def is_periodic(atoms: Atoms, name: str = "frame") -> bool:
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        return True
    if not pbc.any():
        return False
    raise InvalidStructure(
        f"{name}: partially periodic frames (pbc={pbc.tolist()}) are not supported; "
        "use pbc=True with vacuum in the open directions, or pbc=False"
    )


def plan_frame(atoms: Atoms, settings: DFTSettings, name: str = "frame") -> FramePlan:
    """Validate ``atoms`` for ``settings`` and decide periodicity, charge and spin.

    Raises :class:`InvalidStructure` (bad frame, unsupported element, absurd charge/spin)
    or :class:`ConfigError` (settings that cannot describe these elements).
    """
    check_atoms(atoms, name, min_covalent_ratio=settings.min_covalent_ratio or None)
    periodic = is_periodic(atoms, name)
    elements = tuple(sorted(set(atoms.get_chemical_symbols()), key=lambda s: atomic_numbers[s]))
    if periodic:
        check_periodic_support(elements, settings, name)
    else:
        check_molecular_support(elements, settings, name)
    state = electronic_state(atoms, settings, name)
    return FramePlan(periodic=periodic, state=state, elements=elements)


# --- basis / ECP / pseudopotential coverage --------------------------------------------------


def check_molecular_support(elements: tuple[str, ...], settings: DFTSettings, name: str = "frame") -> None:
    missing = [s for s in elements if not _has_basis(settings.basis, s)]
    if missing:
        raise InvalidStructure(f"{name}: basis {settings.basis} has no functions for {', '.join(missing)}")
    ecp = settings.ecp_name
    is_def2 = settings.basis.lower().startswith("def2-")
    for symbol in elements:
        z = atomic_numbers[symbol]
        if is_def2 and z > DEF2_LAST_ALL_ELECTRON:
            if ecp is None:
                raise ConfigError(
                    f"{name}: basis {settings.basis} for {symbol} (Z={z}) is made for the def2 ECP, "
                    f"but ecp={settings.ecp!r}; use ecp='auto'"
                )
            if not has_ecp(ecp, symbol):
                raise InvalidStructure(f"{name}: ECP {ecp} has no core potential for {symbol} (Z={z})")
    if ecp is not None and settings.ecp.lower() != "auto" and not any(has_ecp(ecp, s) for s in elements):
        log.debug("%s: ECP %s covers none of %s; all-electron", name, ecp, elements)


def check_periodic_support(elements: tuple[str, ...], settings: DFTSettings, name: str = "frame") -> None:
    missing = [s for s in elements if not _has_pbc_basis(settings.pbc_basis, s)]
    if missing:
        raise InvalidStructure(f"{name}: periodic basis {settings.pbc_basis} has no functions for {', '.join(missing)}")
    missing = [s for s in elements if _pseudo_valence(settings.pbc_pseudo, s) is None]
    if missing:
        raise InvalidStructure(f"{name}: pseudopotential {settings.pbc_pseudo} has no entry for {', '.join(missing)}")
    for symbol in elements:
        q_basis = _gth_basis_valence(settings.pbc_basis, symbol)
        q_pseudo = _pseudo_valence(settings.pbc_pseudo, symbol)
        if q_basis is not None and q_pseudo is not None and q_basis != q_pseudo:
            raise ConfigError(
                f"{name}: {settings.pbc_basis} for {symbol} is made for {q_basis} valence electrons, "
                f"but {settings.pbc_pseudo} leaves {q_pseudo}"
            )


@lru_cache(maxsize=2048)
def _has_basis(basis: str, symbol: str) -> bool:
    from pyscf.gto import basis as gto_basis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(gto_basis.load(basis, symbol))
        except Exception:
            return False


@lru_cache(maxsize=2048)
def has_ecp(ecp: str, symbol: str) -> bool:
    from pyscf.gto import basis as gto_basis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(gto_basis.load_ecp(ecp, symbol))
        except Exception:
            return False


@lru_cache(maxsize=2048)
def _has_pbc_basis(basis: str, symbol: str) -> bool:
    from pyscf.pbc.gto import basis as pbc_basis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(pbc_basis.load(basis, symbol))
        except Exception:
            return False


@lru_cache(maxsize=2048)
def _pseudo_valence(pseudo: str, symbol: str) -> Optional[int]:
    from pyscf.pbc.gto import pseudo as pbc_pseudo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = pbc_pseudo.load(pseudo, symbol)
        except Exception:
            return None
    if not data:
        return None
    return int(sum(data[0]))


@lru_cache(maxsize=64)
def _gth_basis_file(basis: str) -> Optional[str]:
    """The data file PySCF reads for a named GTH basis, when it is one of its own."""
    import pyscf
    from pyscf.gto.basis import GTH_ALIAS, _format_basis_name

    filename = GTH_ALIAS.get(_format_basis_name(basis))
    if not filename:
        return None
    path = os.path.join(os.path.dirname(pyscf.__file__), "pbc", "gto", "basis", filename)
    return path if os.path.isfile(path) else None


@lru_cache(maxsize=2048)
def _gth_basis_valence(basis: str, symbol: str) -> Optional[int]:
    """The valence count ``qN`` a CP2K-format GTH basis was made for, if its header says."""
    path = _gth_basis_file(basis)
    if path is None:
        return None
    with open(path) as handle:
        for line in handle:
            tokens = line.split()
            if len(tokens) >= 2 and tokens[0] == symbol and "GTH" in line.upper():
                match = re.search(r"-q(\d+)\b", line)
                return int(match.group(1)) if match else None
    return None


# --- charge and spin -----------------------------------------------------------------------


def electronic_state(atoms: Atoms, settings: DFTSettings, name: str = "frame") -> ElectronicState:
    """Charge and 2S for ``atoms`` under ``settings.spin_policy``; absurd values raise."""
    total_z = int(np.sum(atoms.numbers))
    policy = settings.spin_policy
    charge = settings.charge
    spin: Optional[int] = None
    source = "settings"
    if policy == "from_info":
        if "charge" in atoms.info:
            charge = _integer(atoms.info["charge"], "charge", name)
            source = "atoms.info"
        if "spin" in atoms.info:
            spin = _integer(atoms.info["spin"], "spin (2S)", name)
            source = "atoms.info"
    n_electrons = total_z - charge
    if n_electrons <= 0:
        raise InvalidStructure(
            f"{name}: charge {charge:+d} leaves {n_electrons} electrons (the nuclei have {total_z} protons)"
        )
    parity = n_electrons % 2
    search = spin is None and policy in ("auto", "from_info")
    if spin is None:
        if policy == "high":
            moments = int(round(sum(ground_state_magnetic_moments[z] for z in atoms.numbers)))
            spin = moments if moments % 2 == parity else moments - 1 if moments > 0 else 1
            spin = min(spin, n_electrons)
        else:
            spin = parity
    if spin < 0:
        raise InvalidStructure(f"{name}: spin 2S={spin} is negative")
    if spin % 2 != parity:
        raise InvalidStructure(
            f"{name}: spin 2S={spin} is impossible with {n_electrons} electrons (charge {charge:+d}); "
            f"2S must be {'odd' if parity else 'even'}"
        )
    if spin > n_electrons:
        raise InvalidStructure(f"{name}: spin 2S={spin} exceeds the {n_electrons} electrons")
    return ElectronicState(
        charge=charge, spin=spin, n_electrons=n_electrons, policy=policy, source=source, search=search
    )


def _integer(value, what: str, name: str) -> int:
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise InvalidStructure(f"{name}: atoms.info {what} {value!r} is not a number") from None
    if not np.isfinite(as_float) or as_float != int(as_float):
        raise InvalidStructure(f"{name}: atoms.info {what} {value!r} is not an integer")
    return int(as_float)
