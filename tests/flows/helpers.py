from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = Path(__file__).with_name("tiny.yaml")


def tiny_config(workdir: Path, **overrides):
    from flows.config import load_config

    return load_config(TINY, workdir=workdir, **overrides)


def random_only_config(workdir: Path, count: int, max_atoms: int):
    """Random H/O clusters only, nothing written but the store: for stage-level tests whose
    trainer and labeller are swapped out."""
    from flows.config import load_config

    return load_config(
        workdir=workdir,
        elements=["H", "O"],
        explore={
            "random": {"count": count, "params": {"min_atoms": 2, "max_atoms": max_atoms, "kind": "cluster"}},
            "melt_quench": {"enabled": False},
            "substitution": {"enabled": False},
        },
        generation={"min_labelled_fraction": 0.0, "export_hdf5": False, "write_report": False},
    )


#: The ``dft:`` section of the tiny generation for each labeller kind (None: tiny.yaml's
#: own, PySCF), and the elements that kind is run with.
KIND_SECTIONS = {
    "pyscf": (None, None),
    "xtb": ({"backend": "xtb", "method": "GFN2-xTB", "threads": 1, "time_limit": 60}, None),
    "ase": (
        {"backend": "ase", "calculator": "ase.calculators.emt:EMT", "theory": "EMT", "time_limit": 60},
        ["Cu", "Ni"],
    ),
}


def tiny_config_file(
    directory: Path,
    backend: str,
    random_count: int | None = None,
    max_selected: int | None = None,
    dft: dict | None = None,
) -> Path:
    """tiny.yaml with the ``dft:`` section (and elements) of ``backend``, written to ``directory``;
    ``random_count`` random structures and ``max_selected`` picks per generation instead of
    tiny.yaml's; ``dft`` entries on top of the kind's section."""
    import yaml

    data = yaml.safe_load(TINY.read_text())
    if random_count is not None:
        data["explore"]["random"]["count"] = random_count
    if max_selected is not None:
        data["selection"]["max_selected"] = max_selected
    section, elements = KIND_SECTIONS[backend]
    if section is not None:
        data["dft"] = dict(section)
    if dft:
        data["dft"] = {**data["dft"], **dft}
    if elements is not None:
        data["elements"] = elements
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"tiny-{backend}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


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
