"""DFT single points for the dataset: PySCF on CPU, GPU4PySCF on a CUDA GPU.

Public API::

    DFTSettings                      level of theory + execution settings, theory_key()
    single_point(atoms, settings)    -> DFTResult | DFTFailure
    label_frames(frames, settings, skip=..., workers=...)
                                     -> iterator of (index, DFTResult | DFTFailure)
    DFTResult, DFTFailure            what comes back (eV, eV/Å, eV/Å³)

Importing this package does not import PySCF; the work happens in child processes.
"""

from dft.results import DFTFailure, DFTResult
from dft.runner import label_frames, single_point
from dft.settings import DFTSettings

__all__ = ["DFTSettings", "DFTResult", "DFTFailure", "single_point", "label_frames"]
