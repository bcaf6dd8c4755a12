"""The shape of the code: layers that import one way, and a stage table open to new stages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    """flows → {potential, samplers, dft} → pipeline, Prefect only in the wiring (pyproject.toml)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    run = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "broken" not in run.stdout.split("Contracts:")[-1].replace("0 broken", "")


@pytest.mark.parametrize(
    "module", ["pipeline.store", "pipeline.selection", "pipeline.export", "pipeline.dashboard.queries"]
)
def test_the_store_and_selection_load_no_science_and_no_application(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('potential', 'samplers', 'dft', 'flows', 'torch')))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_a_stage_is_one_table_entry_and_one_function(embedded_store, tmp_path):
    """A no-op stage registered after ``select`` runs in order, is recorded and resumes."""
    from flows import stages
    from tests.flows.helpers import random_only_config

    calls: list[tuple[str, int]] = []

    def audit_stage(ctx: stages.StageContext) -> dict:
        # It sees what the stages before it stored, and nothing after it has run yet.
        ctx.generation.reload()
        calls.append((ctx.generation.stages["select"]["status"], ctx.generation.stages["label"].get("status")))
        return {"selected": ctx.generation.counts["selected"]}

    def no_training(*_args, **_kwargs):
        raise AssertionError("a cold start does not train")

    def no_labels(config, frames, progress):
        return iter(())

    config = random_only_config(tmp_path, count=3, max_atoms=3)
    stages.register_stage(stages.Stage("audit", audit_stage), after="select")
    try:
        assert stages.stage_names() == ("train", "explore", "select", "audit", "label", "report")
        with pytest.raises(ValueError, match="exists already"):
            stages.register_stage(stages.Stage("audit", audit_stage), after="train")
        record = stages.run_generation(config, trainer=no_training, labeller=no_labels)
        assert record.status == "completed"
        assert list(record.stages) == list(stages.stage_names())
        assert record.stages["audit"]["status"] == "completed"
        assert record.stages["audit"]["result"] == {"selected": record.counts["selected"]}
        assert calls == [("completed", "pending")]
        stages.run_generation(config, number=record.number, trainer=no_training, labeller=no_labels)
        assert len(calls) == 1  # completed stages are not redone
    finally:
        stages.unregister_stage("audit")
    assert stages.stage_names() == ("train", "explore", "select", "label", "report")


def test_stop_after_names_a_stage(embedded_store, tmp_path):
    from flows import stages
    from flows.config import load_config

    with pytest.raises(KeyError, match="no stage named 'selectt'"):
        stages.run_generation(load_config(workdir=tmp_path), stop_after="selectt")
