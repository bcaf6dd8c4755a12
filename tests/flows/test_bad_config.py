"""A bad generation configuration stops `selfplay run` before any work, in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ..conftest import free_port
from .conftest import REPO
from .helpers import TINY

BAD = {
    "unknown sampler": ({"explore": {"annealing": {"count": 3}}}, "field 'explore.annealing': unknown field"),
    "negative cap": ({"selection": {"max_selected": -1}}, "field 'selection.max_selected'"),
    "lo above hi": ({"selection": {"lo": 0.5, "hi": 0.2}}, "lo (0.5) must be below hi (0.2)"),
    "unknown element": ({"elements": ["H", "Qx"]}, "unknown element symbol 'Qx'"),
    "element beyond Bi": ({"elements": ["H", "U"]}, "beyond Bi"),
    "bad sampler parameter": (
        {"explore": {"random": {"params": {"kind": "slab"}}}},
        "explore.random.params.kind",
    ),
    # The labeller kind the section was read as is part of the path.
    "bad DFT setting": ({"dft": {"max_cycle": 0}}, "field 'dft.pyscf.max_cycle'"),
    "unknown xTB method": ({"dft": {"backend": "xtb", "method": "GFN7"}}, "field 'dft.xtb.method'"),
    "unknown labeller": ({"dft": {"backend": "vasp"}}, "field 'dft': backend must be one of pyscf, xtb, ase"),
}


def run(config_path, uri="mongodb://127.0.0.1:1/x"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    env.update(SELFPLAY_MONGODB_URI=uri, SELFPLAY_DB_TIMEOUT_MS="500")
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "--config", str(config_path), "run", "--no-prefect"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def merged(patch: dict) -> dict:
    config = yaml.safe_load(TINY.read_text())
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configuration_fails_first(case, tmp_path):
    patch, fragment = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(merged(patch)))
    # A database that does not exist: the configuration error must come first.
    result = run(path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config"), result.stderr
    assert fragment in lines[0]


def test_unreachable_database_fails_before_any_work(tmp_path):
    result = run(TINY, uri=f"mongodb://127.0.0.1:{free_port()}/x")
    assert result.returncode == 3
    assert result.stderr.strip().startswith("error: cannot reach MongoDB")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.mongo
def test_bad_configuration_writes_nothing(server_store, tmp_path):
    from pipeline.documents import Generation

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(merged({"selection": {"lo": 1.0, "hi": 0.5}})))
    result = run(path, uri=server_store)
    assert result.returncode == 2
    assert Generation.objects.count() == 0
