"""The README's two commands, as written, against what makes them work.

The commands themselves run elsewhere: `.ci/run` runs the test command on a clean clone,
and tests/flows/test_demo.py runs the installed ``selfplay demo`` script on a fresh
setup. Here: the text of the commands names an extra, a script and a file that exist.
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def section_commands(title: str) -> list[str]:
    section = README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_the_main_command_installs_an_extra_that_exists_and_runs_the_demo():
    first = section_commands("Two commands on a fresh machine")[0]
    steps = [shlex.split(step) for step in first.split("&&")]
    assert steps[0][:3] == ["python3", "-m", "venv"]
    install = steps[1]
    assert install[:3] == [".venv/bin/pip", "install", "-e"]
    extras = re.fullmatch(r"\.\[(.*)\]", install[3]).group(1).split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert steps[-1] == [".venv/bin/selfplay", "demo"]
    module, function = PYPROJECT["project"]["scripts"]["selfplay"].split(":")
    app = importlib.import_module(module)
    assert callable(getattr(app, function))
    # `demo` is a registered command, and its defaults are what the README says it does.
    from flows.commands.generation import DEMO_CONFIGS, DEMO_GENERATIONS

    assert "demo" in [name for name, *_ in app.COMMANDS]
    assert DEMO_GENERATIONS["pyscf"] == 2 and "two small, real generations" in README
    assert DEMO_CONFIGS["pyscf"].is_file()


def test_the_test_command_is_what_ci_runs():
    commands = section_commands("Two commands on a fresh machine")
    assert "bash scripts/test" in commands
    assert (ROOT / "scripts" / "test").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec bash scripts/test\b", ci, re.M)
