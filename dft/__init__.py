"""Single points for the dataset: one labeller protocol, three kinds.

- ``pyscf`` (default): Kohn-Sham DFT with PySCF on CPU, GPU4PySCF on a CUDA GPU.
- ``xtb``: GFN2-/GFN1-xTB through tblite (``pip install -e '.[xtb]'``).
- ``ase``: any ASE calculator (VASP, CP2K, Quantum ESPRESSO, ORCA, EMT, ...).

Public API::

    DFTSettings, XTBSettings, ASESettings
                                     settings of each kind, theory_key()
    LabellerSettings                 the pydantic union of the three (``backend`` decides)
    single_point(atoms, settings)    -> DFTResult | DFTFailure
    label_frames(frames, settings, skip=..., workers=..., workdir=...)
                                     -> iterator of (index, DFTResult | DFTFailure)
    DFTResult, DFTFailure            what comes back (eV, eV/Å, eV/Å³)

Importing this package imports none of the codes; the work happens in child processes.
See ``dft/labeller.py`` for the protocol and ``dft/README.md`` for each kind.
"""

from dft.ase_calculator import ASESettings
from dft.labeller import LabellerSettings
from dft.results import DFTFailure, DFTResult
from dft.runner import label_frames, single_point
from dft.settings import DFTSettings
from dft.xtb import XTBSettings

__all__ = [
    "DFTSettings",
    "XTBSettings",
    "ASESettings",
    "LabellerSettings",
    "DFTResult",
    "DFTFailure",
    "single_point",
    "label_frames",
]
