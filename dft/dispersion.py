"""D3(BJ) and D4 dispersion corrections for any labeller kind.

``dispersion: d3bj`` adds Grimme's D3 with Becke-Johnson (rational) damping through the
``dftd3`` package (simple-dftd3), ``dispersion: d4`` adds D4 through the ``dftd4``
package, to the energy, forces and (fully periodic cells) stress of a label
(``pip install -e '.[dispersion]'``). The damping parameters are those fitted for the
functional of the label: the PySCF kind's ``functional``, the ASE kind's
``dispersion_functional``; the xTB kind refuses (GFN2-xTB contains D4, GFN1-xTB D3).

Conventions, each the one of the package's own ``method=`` default:

- D3(BJ) is two-body only (``s9 = 0``): ``RationalDampingParam(method=...)`` loads it
  that way, as do Grimme's original D3(BJ) and VASP's ``IVDW = 12``.
- D4 includes the three-body (ATM) term (``s9 = 1``), the model ``d4``, and the frame's
  total charge for its EEQ charges.

The damping parameters are read from the package's own parameter table
(``parameters.toml``) and passed explicitly, so the values in the level-of-theory spec
(:func:`dispersion_spec`) are by construction the ones the number was computed with.
The spec also holds the package's major version: the reference C6 data inside the
package, which the parameters do not show, change only with major releases.

The packages work in Bohr and Hartree; everything here returns ASE units (eV, eV/Å,
eV/Å³ Voigt xx, yy, zz, yz, xz, xy with ASE's sign).
"""

from __future__ import annotations

import copy
import importlib
import logging
import sys
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from dft.results import DFTResult
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Per method: the package, the section of its parameter table, the damping variant used.
PACKAGES = {"d3bj": "dftd3", "d4": "dftd4"}
#: Keys of a parameter-table entry that are metadata, not damping parameters.
_METADATA_KEYS = ("damping", "mbd", "doi")
INSTALL_HINT = "pip install -e '.[dispersion]'"


def dispersion_functional(settings: Any) -> str:
    """The functional whose damping parameters ``settings.dispersion`` uses (lower case).

    Raises :class:`ConfigError` for the xTB kind (its methods contain dispersion) and for
    the ASE kind without ``dispersion_functional``.
    """
    backend = getattr(settings, "backend", "pyscf")
    method = getattr(settings, "dispersion", None)
    if backend == "xtb":
        raise ConfigError(
            f"dispersion {method!r} cannot be added to xTB labels: GFN2-xTB already contains D4 "
            "and GFN1-xTB D3; leave dispersion unset"
        )
    if backend == "ase":
        functional = getattr(settings, "dispersion_functional", None)
        if not functional or not str(functional).strip():
            raise ConfigError(
                f"dispersion {method!r} with backend 'ase' needs dispersion_functional: the functional "
                "the calculator uses (e.g. 'pbe'), whose damping parameters are applied"
            )
        return str(functional).strip().lower()
    functional = getattr(settings, "functional", None)
    if not functional:
        raise ConfigError(f"dispersion {method!r}: settings of backend {backend!r} name no functional")
    return str(functional).strip().lower()


def dispersion_spec(settings: Any) -> Optional[dict[str, Any]]:
    """The level-of-theory entry of the dispersion correction; None when there is none.

    Method, functional, damping form, three-body term, the damping parameter values and
    the package's major version: what changes the number. Raises :class:`ConfigError`
    when the package is missing or does not know the functional.
    """
    method = getattr(settings, "dispersion", None)
    if not method:
        return None
    return _spec(method, dispersion_functional(settings))


def check_dispersion(settings: Any) -> None:
    """Settings-level check before any work: package installed, functional known."""
    dispersion_spec(settings)


@dataclass(frozen=True)
class DispersionTerms:
    """One dispersion evaluation in ASE units."""

    energy: float  # eV
    forces: np.ndarray  # eV/Å, (n, 3)
    stress: Optional[np.ndarray]  # eV/Å³ Voigt, fully periodic cells only
    spec: dict[str, Any]
    version: str


def dispersion_terms(atoms: Atoms, method: str, functional: str, charge: float = 0.0) -> DispersionTerms:
    """Energy, forces and stress of D3(BJ) or D4 for ``atoms`` (charge: D4 only)."""
    spec = _spec(method, functional)
    package = _import_package(method)
    interface = importlib.import_module(f"{package.__name__}.interface")
    positions = np.ascontiguousarray(atoms.positions, dtype=float) / Bohr
    numbers = np.asarray(atoms.numbers)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    lattice = np.ascontiguousarray(atoms.cell.array, dtype=float) / Bohr if pbc.any() else None
    periodic = pbc if pbc.any() else None
    if method == "d3bj":
        model = interface.DispersionModel(numbers, positions, lattice, periodic)
        param = interface.RationalDampingParam(**spec["parameters"])
    else:
        # The model stays the package's default, D4 (dftd4 < 3.7 has no ``model`` argument).
        model = interface.DispersionModel(numbers, positions, float(charge), lattice, periodic)
        param = interface.DampingParam(**spec["parameters"])
    raw = model.get_dispersion(param, grad=True)
    energy = float(raw["energy"]) * Hartree
    forces = -np.asarray(raw["gradient"], dtype=float).reshape(len(atoms), 3) * (Hartree / Bohr)
    stress = None
    if pbc.all():
        # The packages return the strain derivative dE/dε (Hartree); stress = (1/V) dE/dε.
        sigma = np.asarray(raw["virial"], dtype=float).reshape(3, 3)
        sigma = 0.5 * (sigma + sigma.T) * Hartree / atoms.get_volume()
        stress = np.array([sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]])
    return DispersionTerms(energy=energy, forces=forces, stress=stress, spec=spec, version=package.__version__)


def add_dispersion(atoms: Atoms, result: DFTResult, settings: Any, *, charge: Optional[float] = None) -> DFTResult:
    """``result`` with ``settings.dispersion`` added to its energy, forces and stress.

    ``charge`` (D4's EEQ model) defaults to ``result.info["charge"]``, else 0. The stress
    is corrected where the result has one; a result without stress keeps None. The theory
    key is the settings' own, which already includes the dispersion spec.
    """
    method = settings.dispersion
    if not method:
        return result
    if charge is None:
        charge = float(result.info.get("charge") or 0)
    terms = dispersion_terms(atoms, method, dispersion_functional(settings), charge)
    info = dict(result.info)
    info["dispersion"] = {
        "method": method,
        "functional": terms.spec["functional"],
        "energy_ev": terms.energy,
        "charge": charge if method == "d4" else None,
        "package": terms.spec["package"],
        "version": terms.version,
        "parameters": dict(terms.spec["parameters"]),
    }
    info["energy_without_dispersion_ev"] = float(result.energy)
    stress = None
    if result.stress is not None:
        if terms.stress is None:
            # A stress for a frame that is not fully periodic: the correction has none to add.
            info["dispersion"]["stress_note"] = "frame not fully periodic: stress left without dispersion"
            stress = np.array(result.stress, dtype=float)
        else:
            stress = np.asarray(result.stress, dtype=float) + terms.stress
    return replace(
        result,
        energy=float(result.energy) + terms.energy,
        forces=np.asarray(result.forces, dtype=float) + terms.forces,
        stress=stress,
        info=info,
    )


# --- parameters ---------------------------------------------------------------------------


def _import_package(method: str):
    if method not in PACKAGES:
        raise ConfigError(f"unknown dispersion correction {method!r}; choose one of {', '.join(PACKAGES)}")
    name = PACKAGES[method]
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"dispersion {method!r} needs the {name} package ({INSTALL_HINT}): {exc}") from None


def _spec(method: str, functional: str) -> dict[str, Any]:
    return copy.deepcopy(_cached_spec(method, functional))  # callers may edit their copy


@lru_cache(maxsize=64)
def _cached_spec(method: str, functional: str) -> dict[str, Any]:
    package = _import_package(method)
    table = _parameter_table(package.__name__)
    entry_name = _table_name(table, functional)
    if entry_name is None:
        examples = ", ".join(n for n in ("pbe", "pbe0", "b3lyp", "r2scan", "tpss") if n in table["parameter"])
        raise ConfigError(
            f"dispersion {method!r}: {package.__name__} {package.__version__} has no damping parameters for "
            f"functional {functional!r} (known names include {examples})"
        )
    section = "d3" if method == "d3bj" else "d4"
    variant = "bj" if method == "d3bj" else table["default"][section][0]
    try:
        defaults = table["default"]["parameter"][section][variant]
        parameters = {**defaults, **table["parameter"][entry_name][section][variant]}
    except KeyError:
        raise ConfigError(
            f"dispersion {method!r}: {package.__name__} has no {variant} damping parameters for {functional!r}"
        ) from None
    for key in _METADATA_KEYS:
        parameters.pop(key, None)
    if method == "d3bj":
        parameters["s9"] = 0.0  # two-body D3(BJ), as RationalDampingParam(method=...) loads it
    spec: dict[str, Any] = {
        "method": method,
        "functional": entry_name,
        "package": package.__name__,
        "package_major": int(str(package.__version__).split(".")[0]),
        "damping": "rational",
        "parameters": {key: float(parameters[key]) for key in sorted(parameters)},
        "three_body": bool(parameters.get("s9", 1.0) != 0.0),
    }
    if method == "d4":
        spec["model"] = "d4"
        spec["variant"] = variant
    return spec


def _table_name(table: dict[str, Any], functional: str) -> Optional[str]:
    """The parameter-table entry of ``functional``: case and hyphens do not matter."""
    entries = table.get("parameter", {})
    key = functional.strip().lower()
    if key in entries:
        return key
    unhyphenated = {name.replace("-", ""): name for name in entries}
    return unhyphenated.get(key.replace("-", ""))


@lru_cache(maxsize=4)
def _parameter_table(package: str) -> dict[str, Any]:
    try:
        # The package's own rule for where its table lives (conda installs it under share/).
        path = Path(importlib.import_module(f"{package}.parameters").get_data_file_name())
    except ModuleNotFoundError:  # its parameters module wants tomli/tomlkit/toml
        path = Path(importlib.import_module(package).__file__).with_name("parameters.toml")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"reading the {package} parameter table on Python 3.10 needs tomli") from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{package} parameter table {path} cannot be read: {exc}") from None
