"""PySCF / GPU4PySCF objects built from :class:`~dft.settings.DFTSettings`.

The same function builds the mean-field object for both devices: the CPU object is
configured, then converted with ``.to_gpu()`` (GPU4PySCF's supported route, which maps
``pyscf.dft.rks.RKS`` to ``gpu4pyscf.dft.rks.RKS``, ``pyscf.pbc.dft.krks.KRKS`` to
``gpu4pyscf.pbc.dft.krks.KRKS``, density fitting included) and configured again, so that
every attribute that decides the number is set explicitly on the object that runs.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import math
import os
import sys
from typing import Any, Optional

import numpy as np
from ase import Atoms

from dft.settings import DFTSettings
from dft.validate import FramePlan, has_ecp
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


# --- devices --------------------------------------------------------------------------------


def nvidia_library_dirs() -> list[str]:
    """``site-packages/nvidia/*/lib`` folders of pip-installed CUDA libraries.

    GPU4PySCF looks for cuSOLVER with ``ctypes.util.find_library``, which does not search
    these folders (gpu4pyscf issue #646); putting them on ``LD_LIBRARY_PATH`` of the
    worker processes makes the import work on machines without a system CUDA toolkit.
    """
    dirs: list[str] = []
    for root in sys.path:
        if not root or not os.path.isdir(os.path.join(root, "nvidia")):
            continue
        dirs.extend(sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib"))))
        dirs.extend(sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "lib"))))
    seen: list[str] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def library_path_with_nvidia(current: Optional[str]) -> Optional[str]:
    extra = [d for d in nvidia_library_dirs() if d not in (current or "").split(os.pathsep)]
    if not extra:
        return current
    return os.pathsep.join(extra + ([current] if current else []))


def gpu_packages_installed() -> bool:
    return importlib.util.find_spec("cupy") is not None and importlib.util.find_spec("gpu4pyscf") is not None


def cuda_device_count() -> int:
    """Number of visible CUDA devices (0 without cupy or a driver). Imports cupy only."""
    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def import_gpu4pyscf():
    """Import gpu4pyscf (and cupy); raise ImportError with the cause otherwise."""
    path = library_path_with_nvidia(os.environ.get("LD_LIBRARY_PATH"))
    if path:
        # find_library consults LD_LIBRARY_PATH through `ld` at call time.
        os.environ["LD_LIBRARY_PATH"] = path
    import cupy  # noqa: F401
    import gpu4pyscf

    return gpu4pyscf


def gpu_usable() -> tuple[bool, str]:
    """Whether this process can run GPU4PySCF, and why not."""
    if not gpu_packages_installed():
        return False, "cupy/gpu4pyscf not installed"
    if cuda_device_count() < 1:
        return False, "no CUDA device visible"
    try:
        import_gpu4pyscf()
    except Exception as exc:  # ImportError, OSError from missing CUDA libraries
        return False, f"gpu4pyscf import failed: {type(exc).__name__}: {exc}"
    return True, ""


def resolve_device(requested: str) -> tuple[str, str]:
    """``(device, note)`` for the ``device`` setting in this process.

    'gpu' without a usable GPU raises :class:`ConfigError`; 'auto' falls back to the CPU
    and says why in ``note``.
    """
    if requested == "cpu":
        return "cpu", ""
    usable, why = gpu_usable()
    if usable:
        return "gpu", ""
    if requested == "gpu":
        raise ConfigError(f"device 'gpu' requested but {why}")
    return "cpu", why


def code_versions(device: str) -> dict[str, Optional[str]]:
    import ase
    import pyscf

    versions: dict[str, Optional[str]] = {
        "pyscf": pyscf.__version__,
        "numpy": np.__version__,
        "ase": ase.__version__,
        "gpu4pyscf": None,
        "cupy": None,
    }
    if device == "gpu":
        import cupy
        import gpu4pyscf

        versions["gpu4pyscf"] = getattr(gpu4pyscf, "__version__", None)
        versions["cupy"] = cupy.__version__
    return versions


def gpu_name() -> Optional[str]:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props.get("name", b"")
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


# --- molecules and cells --------------------------------------------------------------------


def kpoint_mesh(atoms: Atoms, settings: DFTSettings) -> tuple[int, int, int]:
    if settings.kpts is not None:
        return tuple(int(k) for k in settings.kpts)  # type: ignore[return-value]
    if settings.kpoint_density <= 0:
        return (1, 1, 1)
    reciprocal = atoms.cell.reciprocal()  # rows b_i without the 2π
    return tuple(
        max(1, math.ceil(2 * math.pi * settings.kpoint_density * float(np.linalg.norm(b)) - 1e-9)) for b in reciprocal
    )  # type: ignore[return-value]


def build_molecule(atoms: Atoms, settings: DFTSettings, plan: FramePlan, spin: Optional[int] = None):
    from pyscf import gto

    symbols = atoms.get_chemical_symbols()
    mol = gto.Mole()
    mol.atom = [(s, tuple(float(x) for x in p)) for s, p in zip(symbols, atoms.positions)]
    mol.unit = "Angstrom"
    mol.basis = settings.basis
    ecp = settings.ecp_name
    if ecp is not None:
        # A dict naming only the elements that have a core potential: a bare ECP name
        # makes PySCF print a complaint for every light element.
        covered = {s: ecp for s in plan.elements if has_ecp(ecp, s)}
        mol.ecp = covered or {}
    mol.charge = plan.state.charge
    mol.spin = plan.state.spin if spin is None else spin
    mol.symmetry = False
    mol.cart = False
    mol.verbose = 0
    if settings.max_memory_mb:
        mol.max_memory = settings.max_memory_mb
    mol.build(dump_input=False, parse_arg=False)
    return mol


def build_cell(atoms: Atoms, settings: DFTSettings, plan: FramePlan, spin: Optional[int] = None):
    from pyscf.pbc import gto as pbcgto

    symbols = atoms.get_chemical_symbols()
    cell = pbcgto.Cell()
    cell.atom = [(s, tuple(float(x) for x in p)) for s, p in zip(symbols, atoms.positions)]
    cell.a = np.array(atoms.cell.array, dtype=float)
    cell.unit = "Angstrom"
    cell.basis = settings.pbc_basis
    cell.pseudo = settings.pbc_pseudo
    cell.charge = plan.state.charge
    cell.spin = plan.state.spin if spin is None else spin
    cell.precision = settings.pbc_precision
    if settings.pbc_ke_cutoff is not None:
        cell.ke_cutoff = settings.pbc_ke_cutoff
    cell.verbose = 0
    if settings.max_memory_mb:
        cell.max_memory = settings.max_memory_mb
    cell.build(dump_input=False, parse_arg=False)
    return cell


def build_mean_field(
    atoms: Atoms,
    settings: DFTSettings,
    plan: FramePlan,
    device: str,
    *,
    spin: Optional[int] = None,
    unrestricted: Optional[bool] = None,
    share_with=None,
):
    """``(cpu_mf, mf, system)``: the configured, not yet run Kohn-Sham object on ``device``,
    its CPU twin (used for initial guesses) and the ``Mole``/``Cell``.

    Molecules: ``RKS``/``UKS`` (+ density fitting). Cells: ``KRKS``/``KUKS`` with FFTDF and
    GTH pseudopotentials even at Γ only (``kpts=[[0, 0, 0]]``), the combination whose
    forces and stress PySCF provides on the CPU. ``spin`` (2S) and ``unrestricted``
    override the plan's state (the state search builds one object per candidate);
    ``share_with``, a CPU object of the same frame that has run, lends its integration
    grid and density-fitting tensors, which do not depend on the spin.
    """
    spin = plan.state.spin if spin is None else spin
    unrestricted = (spin != 0 or plan.state.unrestricted) if unrestricted is None else unrestricted
    if plan.periodic:
        from pyscf.pbc import dft as pbcdft

        cell = build_cell(atoms, settings, plan, spin)
        kmesh = kpoint_mesh(atoms, settings)
        kpts = cell.make_kpts(list(kmesh), with_gamma_point=True)
        cls = pbcdft.KUKS if unrestricted else pbcdft.KRKS
        mf = cls(cell, kpts=kpts, xc=settings.functional)
        system: Any = cell
    else:
        from pyscf import dft as moldft

        mol = build_molecule(atoms, settings, plan, spin)
        cls = moldft.UKS if unrestricted else moldft.RKS
        mf = cls(mol, xc=settings.functional)
        if settings.density_fit:
            mf = mf.density_fit(auxbasis=settings.auxbasis)
        system = mol
    configure(mf, settings, plan)
    if share_with is not None and not plan.periodic:
        mf.grids = share_with.grids
        if settings.density_fit:
            mf.with_df = share_with.with_df
    cpu_mf = mf
    if device == "gpu":
        import_gpu4pyscf()
        mf = mf.to_gpu()
        configure(mf, settings, plan)
    return cpu_mf, mf, system


def configure(mf, settings: DFTSettings, plan: FramePlan) -> None:
    """Set every attribute that matters on ``mf`` (CPU or GPU object alike)."""
    mf.xc = settings.functional
    mf.conv_tol = settings.conv_tol
    mf.conv_tol_grad = settings.conv_tol_grad
    mf.max_cycle = settings.max_cycle
    mf.verbose = 0
    mf.init_guess = "minao"
    mf.damp = 0
    mf.level_shift = 0
    if settings.max_memory_mb:
        mf.max_memory = settings.max_memory_mb
    if not plan.periodic:
        mf.grids.level = settings.grids_level


# --- reading results back --------------------------------------------------------------------


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "get") and not isinstance(value, np.ndarray):  # cupy array
        value = value.get()
    return np.asarray(value)


def density_matrix(mf) -> np.ndarray:
    return to_numpy(mf.make_rdm1())


def spin_densities(mf, restricted: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, beta)`` density matrices as numpy, for restricted and unrestricted alike."""
    dm = density_matrix(mf)
    if restricted:
        return dm / 2, dm / 2
    return dm[0], dm[1]


def overlap_matrix(mf, system, periodic: bool) -> np.ndarray:
    """AO overlap: (nao, nao), or (nk, nao, nao) at the k-points of a cell."""
    if periodic:
        kpts = np.asarray(to_numpy(mf.kpts)).reshape(-1, 3)
        return np.asarray(system.pbc_intor("int1e_ovlp", hermi=1, kpts=kpts))
    return system.intor_symmetric("int1e_ovlp")


def ao_atom_indices(system) -> np.ndarray:
    return np.array([atom for atom, *_rest in system.ao_labels(fmt=False)], dtype=int)


def atom_populations(dm: np.ndarray, overlap: np.ndarray, system) -> np.ndarray:
    """Mulliken electron population of each atom for one density (molecule or k-points)."""
    if dm.ndim == 3:  # (k, n, n)
        per_ao = np.einsum("kij,kji->i", dm, overlap).real / dm.shape[0]
    else:
        per_ao = np.einsum("ij,ji->i", dm, overlap).real
    return np.bincount(ao_atom_indices(system), weights=per_ao, minlength=system.natm)


def mulliken_analysis(mf, system, periodic: bool, restricted: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(charges, spin moments)`` per atom: Mulliken valence charges (cores removed by an
    ECP or pseudopotential are not counted) and alpha − beta populations."""
    alpha, beta = spin_densities(mf, restricted)
    overlap = overlap_matrix(mf, system, periodic)
    pop_alpha = atom_populations(alpha, overlap, system)
    pop_beta = atom_populations(beta, overlap, system)
    charges = np.asarray(system.atom_charges(), dtype=float) - pop_alpha - pop_beta
    return charges, pop_alpha - pop_beta


def dipole_moment(mf, mol) -> np.ndarray:
    """Dipole moment of a molecule in e·Å about the coordinate origin."""
    from ase.units import Bohr
    from pyscf.scf import hf

    dm = density_matrix(mf)
    if dm.ndim == 3:
        dm = dm.sum(axis=0)
    debye = hf.dip_moment(mol, dm, unit="au", verbose=0)  # e·Bohr with unit='au'
    return np.asarray(debye, dtype=float) * Bohr


def orbital_gap(mf) -> Optional[float]:
    """HOMO-LUMO gap (Hartree) over spins and k-points for integer occupations; else None."""
    try:
        energies = to_numpy(mf.mo_energy).ravel() if not isinstance(mf.mo_energy, list) else None
        occupations = to_numpy(mf.mo_occ).ravel() if not isinstance(mf.mo_occ, list) else None
        if energies is None or occupations is None:
            energies = np.concatenate([to_numpy(e).ravel() for e in mf.mo_energy])
            occupations = np.concatenate([to_numpy(o).ravel() for o in mf.mo_occ])
    except Exception:
        return None
    if energies.shape != occupations.shape:
        return None
    fractional = (occupations > 1e-8) & (np.abs(occupations - np.round(occupations)) > 1e-6)
    if fractional.any():
        return None
    occupied = occupations > 0.5
    if not occupied.any() or occupied.all():
        return None
    return float(energies[~occupied].min() - energies[occupied].max())
