"""List options take ``Cu,Al,Ni``, ``Cu Al Ni`` and repeated ``--elements`` alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from flows.cli import app
from flows.cli_parsing import SelfplayCommand, split_names, spread_list_options

SELFPLAY = str(Path(sys.executable).with_name("selfplay"))


def all_commands():
    """``(path, click command)`` of every command of the app, subgroups included."""
    found = []

    def walk(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{path} {name}")
            else:
                found.append((f"{path} {name}", command))

    walk(typer.main.get_command(app), "selfplay")
    return found


def parse(path: str, args: list[str]) -> dict:
    """The parameters the command at ``path`` receives for ``args`` (nothing runs)."""
    command = dict(all_commands())[path]
    return command.make_context(path.split()[-1], list(args)).params


def test_spreading_words_after_a_list_option():
    spread = spread_list_options(
        ["--elements", "Cu", "Al", "--out", "x", "--elements=Ni", "O", "--count", "3", "--", "--elements", "S"],
        {"--elements"},
    )
    assert spread == [
        "--elements", "Cu", "--elements", "Al", "--out", "x",
        "--elements=Ni", "--elements", "O", "--count", "3", "--", "--elements", "S",
    ]  # fmt: skip
    # The first word is the option's own value even when it starts with "-"; words after
    # other options stay theirs.
    assert spread_list_options(["--theory", "-x", "y", "--out", "a", "b"], {"--theory"}) == [
        "--theory", "-x", "--theory", "y", "--out", "a", "b",
    ]  # fmt: skip


def test_split_names():
    assert split_names(["Cu, Ni", "O", "H C", ""]) == ["Cu", "Ni", "O", "H", "C"]
    assert split_names(None) == []


def test_every_command_spreads_its_list_options_and_none_has_arguments_besides():
    # Words after a list option are taken as its values, which is safe only while no
    # command also takes positional arguments.
    commands = all_commands()
    assert {path for path, _ in commands} >= {
        "selfplay sample",
        "selfplay export",
        "selfplay train",
        "selfplay db import",
    }
    for path, command in commands:
        assert isinstance(command, SelfplayCommand), path
        list_options = [p for p in command.params if p.param_type_name == "option" and p.multiple]
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        assert not (list_options and arguments), f"{path} has list options and arguments"


@pytest.mark.parametrize(
    "spelling",
    [
        ["--elements", "H", "C", "N", "O"],
        ["--elements", "H,C,N,O"],
        ["--elements", "H", "--elements", "C,N", "--elements", "O"],
    ],
)
def test_export_elements_and_theories_in_every_spelling(spelling):
    params = parse("selfplay export", ["--out", "x.h5", *spelling, "--theory", "a", "b", "--format", "extxyz"])
    assert split_names(params["elements"]) == ["H", "C", "N", "O"]
    assert split_names(params["theory"]) == ["a", "b"]
    assert params["format"] == "extxyz"


def test_train_data_takes_several_paths():
    params = parse("selfplay train", ["--data", "a,1.xyz", "b.xyz", "--out", "m"])
    assert [str(p) for p in params["data"]] == ["a,1.xyz", "b.xyz"]  # paths are not split at commas


def test_sample_elements_spelled_three_ways_give_the_same_frames(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    outputs = []
    for number, spelling in enumerate(
        (["Cu", "Al", "Ni"], ["Cu,Al,Ni"], ["Cu", "--elements", "Al", "--elements", "Ni"])
    ):
        out = tmp_path / f"{number}.xyz"
        result = subprocess.run(
            [SELFPLAY, "sample", "--sampler", "random", "--elements", *spelling, "--out", str(out), "--count", "2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == outputs[2]
    assert '\\"elements\\": [\\"Cu\\", \\"Al\\", \\"Ni\\"]' in outputs[0]
