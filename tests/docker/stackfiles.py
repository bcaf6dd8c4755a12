"""Readers for the deployment files in docker/: the compose file with Compose's variable
interpolation, the env template, the README's tables and code blocks, the Dockerfile,
the constraints file, and the engine-free tools (docker-compose, hadolint) when present.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
README = DOCKER / "README.md"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
CONSTRAINTS = DOCKER / "constraints.txt"
SBATCH = DOCKER / "slurm" / "gpu-worker.sbatch"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, or $NAME.
_INTERPOLATION = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    pass


def load_compose() -> dict:
    """compose.yaml as YAML (merge keys resolved), before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _walk_strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(key)
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_strings(item)


def interpolated_variables(node) -> set[str]:
    """Names of the variables Compose substitutes anywhere in ``node``."""
    names = set()
    for text in _walk_strings(node):
        for match in _INTERPOLATION.finditer(text.replace("$$", "")):
            names.add(match.group("braced") or match.group("bare"))
    return names


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution of ``text`` with the variables ``env`` (``$$`` is a literal $)."""

    def substitute(match: re.Match) -> str:
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?" and not value or op == "?" and value is None:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    parts = text.split("$$")
    return "$".join(_INTERPOLATION.sub(substitute, part) for part in parts)


def passthrough_variables(compose: dict) -> set[str]:
    """Environment keys declared without a value: Compose passes them through from .env."""
    names = set()
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            names.update(item for item in environment if "=" not in item)
        else:
            names.update(key for key, value in environment.items() if value is None)
    return names


def environment_keys(service: dict) -> set[str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return {item.split("=", 1)[0] for item in environment}
    return set(environment)


def env_file_variables(path: Path = ENV_EXAMPLE) -> dict[str, str | None]:
    """``KEY=value`` lines of an env file; keys of commented-out ``# KEY=value`` lines map to None."""
    variables: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            commented, key, value = match.groups()
            if key in variables and variables[key] is not None:
                continue
            variables[key] = None if commented else value
    return variables


def active_env(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    return {key: value for key, value in env_file_variables(path).items() if value is not None}


# ------------------------------------------------------------------ ports


@dataclass(frozen=True)
class PublishedPort:
    service: str
    host_ip: str | None
    spec: str


def published_ports(compose: dict, env: dict[str, str]) -> list[PublishedPort]:
    """Every port a service publishes on the host, after interpolation with ``env``."""
    ports = []
    for name, service in compose["services"].items():
        for entry in service.get("ports") or []:
            if isinstance(entry, dict):
                host_ip = entry.get("host_ip")
                ports.append(PublishedPort(name, interpolate(host_ip, env) if host_ip else None, str(entry)))
                continue
            spec = interpolate(str(entry), env).split("/", 1)[0]
            if spec.startswith("["):  # [IPv6]:host:container
                host_ip, _, _rest = spec[1:].partition("]")
                ports.append(PublishedPort(name, host_ip, spec))
                continue
            fields = spec.rsplit(":", 2)
            ports.append(PublishedPort(name, fields[0] if len(fields) == 3 else None, spec))
    return ports


# ------------------------------------------------------------------ README


def code_blocks(markdown: str) -> list[str]:
    """Fenced code blocks (also indented ones inside list items), without the fences."""
    blocks, current, indent = [], None, 0
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            if current is None:
                current, indent = [], len(line) - len(stripped)
            else:
                blocks.append("\n".join(current))
                current = None
            continue
        if current is not None:
            current.append(line[indent:] if line[:indent].isspace() else line.lstrip())
    return blocks


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a shell code block as argv lists (continuations joined, split at && ; |)."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue  # not shell (e.g. a Python block)
        current: list[str] = []
        for token in tokens + ["&&"]:
            if token in ("&&", ";", "||", "|"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def readme_commands() -> list[list[str]]:
    return [command for block in code_blocks(README.read_text()) for command in shell_commands(block)]


def markdown_table(markdown: str, heading: str) -> list[list[str]]:
    """Rows (cells as text) of the first table after the line ``heading``."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, separator, *body = rows
    assert set("".join(separator)) <= set("-: "), f"no table under {heading!r}"
    return body


def code_span(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    return match.group(1) if match else cell


# ------------------------------------------------------------------ Dockerfile


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM this instruction belongs to (-1: before the first FROM)


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions, logical, stage = [], "", -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
        logical = ""
    return instructions


def dockerfile_global_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM."""
    args = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and instruction.stage == -1:
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


def requirement_lines(path: Path = CONSTRAINTS) -> list[str]:
    """Requirement lines of a pip requirements/constraints file, comments removed."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


# ------------------------------------------------------------------ tools


def tool(name: str) -> str | None:
    """An executable installed next to this Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def compose_cli() -> list[str] | None:
    """A Compose implementation that works without a Docker engine, as an argv prefix."""
    standalone = tool("docker-compose")
    if standalone:
        return [standalone]
    docker = tool("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that would change how Compose reads the stack."""
    documented = set(env_file_variables()) | interpolated_variables(load_compose())
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in documented and not key.startswith("COMPOSE_")
    }
    env.update(extra or {})
    return env
