"""The Prefect commands that register selfplay's deployments, start its workers and run
the nightly generation: one definition for docker/README.md, docker/compose.yaml,
docker/slurm/gpu-worker.sbatch and the Prefect integration tests.

tests/docker/test_readme.py checks that the README, the compose file and the batch
script give exactly these commands (a command there may add options after them, e.g.
``--with-healthcheck`` or ``--limit 1``). The flows integration tests run the same ones
against a local Prefect server, so the documented commands are the tested ones::

    from tests.docker.deploy_commands import REGISTER_DEPLOYMENTS, RUN_NIGHTLY, START_CPU_WORKER
    subprocess.run([*REGISTER_DEPLOYMENTS], cwd=repo_root, check=True)
    worker = subprocess.Popen([*START_CPU_WORKER], cwd=repo_root)
    subprocess.run([*RUN_NIGHTLY], check=True)

Each command is a tuple of argv tokens (as ``shlex.split`` gives them), to be run from
the repository root, where prefect.yaml is.
"""

CPU_POOL = "selfplay-cpu"
GPU_POOL = "selfplay-gpu"
NIGHTLY_DEPLOYMENT = "generation/nightly"

REGISTER_DEPLOYMENTS = ("prefect", "deploy", "--all")
START_CPU_WORKER = ("prefect", "worker", "start", "--pool", CPU_POOL)
START_GPU_WORKER = ("prefect", "worker", "start", "--pool", GPU_POOL)
RUN_NIGHTLY = ("prefect", "deployment", "run", NIGHTLY_DEPLOYMENT)

ALL_COMMANDS = {
    "register the deployments": REGISTER_DEPLOYMENTS,
    "start a CPU worker": START_CPU_WORKER,
    "start a GPU worker": START_GPU_WORKER,
    "run the nightly generation now": RUN_NIGHTLY,
}
