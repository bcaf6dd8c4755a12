"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import os
import sys

#: Set by a parent in its child's environment: the child exits at once if, by the time it
#: asks the kernel to kill it with its parent, it has already been re-parented.
PARENT_PID_VARIABLE = "SELFPLAY_DFT_PARENT_PID"


def die_with_parent() -> None:
    """On Linux, have the kernel kill this process when the process that started it dies.

    A flow killed mid-batch (crash, cancellation, node failure of the driver) must not
    leave single points running for hours with nobody to store their results, nor a
    temporary Prefect server behind. Call it first thing in the child (or as a
    ``preexec_fn``).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not glibc: time limits still bound the orphan
        return
    if os.environ.get(PARENT_PID_VARIABLE) not in (None, str(os.getppid())):
        os._exit(1)  # the parent died before prctl took effect: we were re-parented
