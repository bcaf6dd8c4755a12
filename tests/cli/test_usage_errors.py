"""Usage mistakes on the real ``selfplay`` entry point: the usage line, one error line, exit 2.

Each case is one subprocess of the installed console script, so what is checked is what a
user sees, including that no Python traceback escapes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SELFPLAY = str(Path(sys.executable).with_name("selfplay"))

#: (arguments, the command path in the usage line, a fragment of the error line)
MISTAKES = {
    "unknown option": (["label", "x.xyz", "--frobnicate", "3"], "selfplay label", "No such option: --frobnicate"),
    "unknown option of a db command": (
        ["db", "import", "x.xyz", "--verbose-json"],
        "selfplay db import",
        "No such option",
    ),
    "unknown option of the status command": (["status", "--verbose-json"], "selfplay status", "No such option"),
    "missing argument": (["db", "import"], "selfplay db import", "Missing argument 'files'"),
    "missing required option": (
        ["sample", "--sampler", "random", "--elements", "Cu", "Al"],
        "selfplay sample",
        "Missing option '--out'",
    ),
    "option without its value": (["export", "--out"], "selfplay export", "Option '--out' requires an argument"),
    "extra argument": (["status", "extra"], "selfplay status", "unexpected extra argument(s) (extra)"),
    "value of the wrong type": (
        ["train", "--epochs", "abc", "--out", "m"],
        "selfplay train",
        "Invalid value for '--epochs'",
    ),
    "value out of range": (["demo", "--generations", "0"], "selfplay demo", "Invalid value for '--generations'"),
    "flag given a value": (["status", "--json=yes"], "selfplay status", "Option '--json' does not take a value"),
    "unknown command": (["lable", "x.xyz"], "selfplay", "No such command 'lable'"),
    "global option without its value": (["--config"], "selfplay", "Option '--config' requires an argument"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_usage_mistake_prints_usage_and_one_error_line(mistake, tmp_path):
    args, command, fragment = MISTAKES[mistake]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    result = subprocess.run([SELFPLAY, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"Usage: {command} "), result.stderr
    assert lines[1] == f"Try '{command} --help' for help."
    assert len(lines) == 3 and lines[2].startswith("Error: ") and fragment in lines[2], result.stderr
    assert result.stdout == ""
