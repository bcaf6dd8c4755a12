from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = Path(__file__).with_name("tiny.yaml")


def tiny_config(workdir: Path, **overrides):
    from pipeline.config import load_config

    return load_config(TINY, workdir=workdir, **overrides)


def label_table(theory: str | None = None) -> dict[str, tuple]:
    """frame hash -> (energy, forces) of every label (at ``theory``)."""
    from pipeline.documents import Label

    query = Label.objects if theory is None else Label.objects(theory=theory)
    return {label.frame_hash: (label.energy, label.forces_array) for label in query}


def assert_same_labels(first: dict, second: dict) -> None:
    assert sorted(first) == sorted(second)
    for key in first:
        assert abs(first[key][0] - second[key][0]) < 1e-6
        np.testing.assert_allclose(first[key][1], second[key][1], atol=1e-5)
