"""The benchmark scripts as modules (``benchmarks/`` is not a package): one loader for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported once under ``name``; the folder goes on ``sys.path``
    because one script imports another (bench_offline_fit reads bench_active_learning)."""
    if name in sys.modules:
        return sys.modules[name]
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
