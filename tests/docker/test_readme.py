"""docker/README.md against the files it describes: the services it names exist, the
Prefect commands it gives are the canonical ones (tests/docker/deploy_commands.py, which
the Prefect integration tests run), and every environment variable is documented once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.docker import deploy_commands as commands
from tests.docker.stackfiles import (
    README,
    REPO,
    SBATCH,
    code_span,
    env_file_variables,
    environment_keys,
    load_compose,
    markdown_table,
    readme_commands,
    shell_commands,
)

PREFECT_VERBS = (("prefect", "deploy"), ("prefect", "worker", "start"), ("prefect", "deployment", "run"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def contains(tokens: list[str], sequence: tuple[str, ...]) -> bool:
    return any(tuple(tokens[i : i + len(sequence)]) == sequence for i in range(len(tokens) - len(sequence) + 1))


def prefect_part(tokens: list[str]) -> list[str] | None:
    """The `prefect ...` command inside a command line (e.g. after `docker compose exec -T worker-cpu`)."""
    for index, token in enumerate(tokens):
        if token == "prefect" and any(tuple(tokens[index : index + len(verb)]) == verb for verb in PREFECT_VERBS):
            return tokens[index:]
    return None


def test_services_table_names_exactly_the_compose_services(compose, readme):
    rows = markdown_table(readme, "## Services")
    named = [code_span(row[0]) for row in rows]
    assert len(named) == len(set(named))
    assert set(named) == set(compose["services"])
    for row in rows:
        image = code_span(row[1])
        service = compose["services"][code_span(row[0])]
        assert image == service["image"].replace(":-selfplay-worker:0.1.0", ""), row


def test_compose_commands_in_the_readme_name_existing_services(compose):
    # `docker compose exec|logs|stop|start|build|push [options] SERVICE...`
    targeted = []
    for tokens in readme_commands():
        if tokens[:2] != ["docker", "compose"] or len(tokens) < 3:
            continue
        verb, rest = tokens[2], tokens[3:]
        if verb not in ("exec", "logs", "stop", "start", "restart", "build", "push", "up"):
            continue
        names = [token for token in rest if not token.startswith("-")]
        if verb == "exec":
            names = names[:1]
        targeted += names
    assert {"worker-cpu", "worker-gpu", "mongodb", "dashboard", "postgres"} <= set(targeted)
    assert set(targeted) <= set(compose["services"]), set(targeted) - set(compose["services"])


@pytest.mark.parametrize("purpose", list(commands.ALL_COMMANDS))
def test_readme_gives_the_canonical_command(purpose):
    command = commands.ALL_COMMANDS[purpose]
    assert any(contains(tokens, command) for tokens in readme_commands()), (
        f"docker/README.md does not show how to {purpose}: {' '.join(command)}"
    )


def test_every_prefect_command_of_the_readme_starts_with_a_canonical_one():
    canonical = list(commands.ALL_COMMANDS.values())
    found = 0
    for tokens in readme_commands():
        part = prefect_part(tokens)
        if part is None:
            continue
        found += 1
        assert any(tuple(part[: len(command)]) == command for command in canonical), " ".join(part)
    assert found >= len(canonical)


def test_registering_and_running_happen_where_the_code_is(compose):
    # The README registers the deployments and runs the nightly generation from inside
    # the CPU worker, whose working directory holds prefect.yaml.
    lines = [tokens for tokens in readme_commands() if tokens[:3] == ["docker", "compose", "exec"]]
    for command in (commands.REGISTER_DEPLOYMENTS, commands.RUN_NIGHTLY):
        users = [tokens for tokens in lines if contains(tokens, command)]
        assert users and all("worker-cpu" in tokens for tokens in users)


def test_batch_script_starts_the_canonical_gpu_worker():
    lines = [tokens for tokens in shell_commands(SBATCH.read_text()) if tokens and tokens[0] == "exec"]
    assert len(lines) == 1
    assert tuple(lines[0][1 : 1 + len(commands.START_GPU_WORKER)]) == commands.START_GPU_WORKER


def test_environment_table_documents_every_variable_once(compose, readme):
    rows = markdown_table(readme, "## Environment variables")
    names = [code_span(row[0]) for row in rows]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates
    documented = set(names)
    # Everything in .env.example ...
    assert set(env_file_variables()) <= documented
    # ... everything the batch script requires ...
    assert set(re.findall(r"\$\{(\w+):\?", SBATCH.read_text())) <= documented
    # ... and every variable a container gets is in the table or in the paragraph of
    # derived names under it.
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    derived = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section.split("Derived inside", 1)[1]))
    for name, service in compose["services"].items():
        missing = environment_keys(service) - documented - derived
        assert not missing, f"{name}: {missing} undocumented"
    # The image's own settings too.
    dockerfile_env = set(re.findall(r"\b(SELFPLAY_[A-Z_]+)=", (REPO / "docker" / "Dockerfile").read_text()))
    assert dockerfile_env <= documented


def test_table_defaults_match_the_files(compose, readme):
    rows = {code_span(row[0]): row for row in markdown_table(readme, "## Environment variables")}
    template = env_file_variables()
    for name, value in template.items():
        default = code_span(rows[name][2])
        if value not in (None, "change-me") and not value.endswith(":change-me") and default != "required":
            assert default == value or default.startswith(f"{value} ") or value in default, (name, default, value)
    uri = compose["x-selfplay-env"]["SELFPLAY_MONGODB_URI"]
    expected = re.sub(r"\$\{(\w+)[^}]*\}", r"\1", uri)
    assert code_span(rows["SELFPLAY_MONGODB_URI"][2]) == expected
    assert code_span(rows["PREFECT_API_URL"][2]) == compose["x-selfplay-env"]["PREFECT_API_URL"]


def test_prefect_yaml_fits_the_workers():
    """The deployments of prefect.yaml (written with the flows) run on these workers."""
    path = REPO / "prefect.yaml"
    if not path.exists():
        pytest.skip("prefect.yaml is not written yet")
    config = yaml.safe_load(path.read_text())
    deployments = config.get("deployments") or []
    pools = {(deployment.get("work_pool") or {}).get("name") for deployment in deployments}
    assert pools <= {commands.CPU_POOL, commands.GPU_POOL}, pools
    nightly = [deployment for deployment in deployments if deployment.get("name") == commands.NIGHTLY_DEPLOYMENT.split("/")[1]]
    assert len(nightly) == 1 and nightly[0]["work_pool"]["name"] == commands.CPU_POOL

    copied = {"pipeline", "potential", "samplers", "dft", "flows"}
    for deployment in deployments:
        entrypoint = deployment["entrypoint"]
        location = entrypoint.rsplit(":", 1)[0] if ":" in entrypoint else entrypoint
        top = re.split(r"[/.]", location)[0]
        assert top in copied, f"{entrypoint}: not in the worker image"
    # A pull step that changes into a directory of the machine prefect.yaml was written
    # on would break every worker elsewhere.
    steps = list(config.get("pull") or []) + [step for d in deployments for step in d.get("pull") or []]
    for step in steps:
        directory = (step.get("prefect.deployments.steps.set_working_directory") or {}).get("directory")
        if directory and Path(directory).is_absolute():
            assert not Path(directory).is_relative_to(REPO), f"pull step into {directory}"
