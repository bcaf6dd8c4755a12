"""The deployment as users run it: `prefect deploy`, a process worker, `prefect deployment run`."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from ase.build import molecule

from tests.docker.deploy_commands import CPU_POOL, GPU_POOL, REGISTER_DEPLOYMENTS, RUN_NIGHTLY, START_CPU_WORKER

from .conftest import PREFECT, REPO, prefect_env
from .helpers import TINY, tiny_config

pytestmark = [pytest.mark.prefect_server, pytest.mark.mongo, pytest.mark.slow]


def prefect(*args, env, cwd=REPO, timeout=300):
    result = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def seed_labels(config, n=4):
    """A few real PySCF labels at the generation's level of theory, so the run trains a model."""
    from dft import single_point
    from pipeline.store import add_frame, add_label

    for name in ("H2O", "OH", "H2", "O2", "H2O2")[:n]:
        atoms = molecule(name)
        atoms.rattle(0.02, seed=len(name))
        outcome = single_point(atoms, config.dft, isolate=False)
        assert outcome.ok, outcome
        frame, _ = add_frame(atoms, source="seed")
        add_label(frame, theory=config.dft.theory_key(), energy=outcome.energy, forces=outcome.forces)


def test_nightly_deployment_runs_to_completion(prefect_server, server_store, tmp_path):
    from pipeline.documents import Frame, Generation, Label, ModelVersion

    api, home = prefect_server
    config = tiny_config(tmp_path / "work")
    seed_labels(config)
    config_file = tmp_path / "generation.yaml"
    config_file.write_text(TINY.read_text() + f"\nworkdir: {tmp_path / 'work'}\n")
    env = prefect_env(api, home, SELFPLAY_MONGODB_URI=server_store, SELFPLAY_CONFIG=str(config_file))

    for pool in (CPU_POOL, GPU_POOL):
        prefect("work-pool", "create", pool, "--type", "process", "--overwrite", env=env)
    prefect(*REGISTER_DEPLOYMENTS[1:], env=env)
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [PREFECT, *START_CPU_WORKER[1:]], env=env, cwd=REPO, stdout=worker_log, stderr=subprocess.STDOUT
    )
    try:
        output = prefect(*RUN_NIGHTLY[1:], env=env)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", output).group(1)
        state = wait_for_final_state(api, run_id, timeout=900)
    finally:
        # A worker on a loaded machine can take longer than its grace period to wind down
        # after SIGTERM; what is tested is the flow run's final state, so stop it for sure.
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)
        worker_log.close()
    assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]

    record = Generation.objects.get(number=0)
    assert record.status == "completed" and record.prefect_flow_run_id == run_id
    assert ModelVersion.objects(generation=0).count() == 1
    assert Frame.objects(generation=0).count() > 0
    assert Label.objects(generation=0).count() > 0


def wait_for_final_state(api: str, run_id: str, timeout: float) -> str:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(2)
    return "TIMEOUT"
