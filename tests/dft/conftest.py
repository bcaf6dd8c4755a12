"""Shared pieces of the dft tests.

The tests check numbers, not speed. They run PySCF with one thread (``threads=1`` in the
settings they pass, and here for the direct PySCF references) because OpenMP threads that
spin-wait on an oversubscribed CI machine can make a 1 s SCF take 10 s.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread_pyscf():
    from pyscf import lib

    previous = lib.num_threads()
    lib.num_threads(1)
    yield
    lib.num_threads(previous)
