"""The file-based commands behind ``selfplay sample`` / ``selfplay select``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from flows.commands.explore import run_sampler, sample, select
from pipeline.errors import ConfigError, DataFileError, SelfplayError
from pipeline.hashing import frame_hash
from samplers.frames import read_frames, write_frames
from samplers.random_structures import RandomStructureConfig, sample_random


def app() -> typer.Typer:
    """The two commands on a throwaway app, with errors printed the way the selfplay app does."""
    application = typer.Typer()
    application.command("sample")(sample)
    application.command("select")(select)
    return application


def invoke(*args: str):
    result = CliRunner().invoke(app(), list(args))
    return result


def test_extxyz_round_trip_keeps_scores_and_provenance(tmp_path, ensemble):
    config = RandomStructureConfig(elements=["B", "N"], min_atoms=4, max_atoms=8)
    frames = list(sample_random(ensemble, config, seed=0, count=3))
    path = tmp_path / "frames.xyz"
    assert write_frames(path, frames) == 3
    back = read_frames(path)
    for original, copy in zip(frames, back):
        assert copy.info["provenance"] == original.info["provenance"]
        assert np.allclose(copy.arrays["force_deviation"], original.arrays["force_deviation"])
        assert copy.info["sigma_f"] == pytest.approx(original.info["sigma_f"])
        assert np.allclose(copy.info["descriptor"], original.info["descriptor"])
        assert frame_hash(copy) == frame_hash(original)
        assert copy.calc is None  # an explored frame never looks like a labelled one
    with pytest.raises(DataFileError, match="does not exist"):
        read_frames(tmp_path / "missing.xyz")
    (tmp_path / "bad.xyz").write_text("not\nan xyz file\n")
    with pytest.raises(DataFileError, match="not a readable extended XYZ"):
        read_frames(tmp_path / "bad.xyz")


def test_sample_then_select_on_files(tmp_path):
    explored = tmp_path / "explored.xyz"
    result = invoke(
        "sample",
        "--sampler",
        "random",
        "--elements",
        "Cu,Ni",
        "--elements",
        "O",
        "--count",
        "12",
        "--seed",
        "3",
        "--out",
        str(explored),
    )
    assert result.exit_code == 0, result.output
    assert "random: wrote 12 frames" in result.output
    frames = read_frames(explored)
    assert len(frames) == 12
    assert all(set(f.get_chemical_symbols()) <= {"Cu", "Ni", "O"} for f in frames)
    assert all(f.info["provenance"]["seed"] == 3 for f in frames)

    known = tmp_path / "known.txt"
    known.write_text(frame_hash(frames[0]) + "\n")
    picked = tmp_path / "picked.xyz"
    report = tmp_path / "report.json"
    result = invoke(
        "select", str(explored), "--max", "5", "--known", str(known), "--out", str(picked), "--report", str(report)
    )
    assert result.exit_code == 0, result.output
    chosen = read_frames(picked)
    # no model scored them: all unscored, eligible; the known one is dropped, 5 are picked
    assert len(chosen) == 5 and all(f.info["selected_as"] == "candidate" for f in chosen)
    assert frame_hash(frames[0]) not in {f.info["frame_hash"] for f in chosen}
    record = json.loads(report.read_text())
    assert record["counts"]["unscored"] == 12 and record["counts"]["selected"] == 5
    assert record["decisions"][0]["reason"] == "duplicate-known"
    assert sum(row["explored"] for row in record["ledger"].values()) >= 12


def test_melt_quench_from_a_saved_model(tmp_path, ensemble):
    from potential import save_ensemble

    model = save_ensemble(ensemble, tmp_path / "model")
    settings = tmp_path / "explore.yaml"
    settings.write_text(
        "melt_quench:\n  heat_steps: 10\n  hold_steps: 0\n  cool_steps: 10\n  frame_interval: 10\n  hi: 50.0\n"
        "random:\n  min_atoms: 4\n  max_atoms: 8\n"
    )
    out, report = tmp_path / "mq.xyz", tmp_path / "mq.json"
    result = invoke(
        "sample",
        "--sampler",
        "melt-quench",
        "--model",
        str(model),
        "--elements",
        "Li,F",
        "--count",
        "2",
        "--seed",
        "1",
        "--config",
        str(settings),
        "--out",
        str(out),
        "--report",
        str(report),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    frames = read_frames(out)
    reports = json.loads(report.read_text())
    assert [r["stop"]["reason"] for r in reports] == ["completed", "completed"]
    assert len(frames) == 2 * 3  # steps 0, 10, 20
    for frame in frames:
        record = frame.info["provenance"]
        assert record["sampler"] == "melt-quench" and record["model"] == str(model) and record["seed"] == 1
        assert frame.arrays["force_deviation"].shape == (len(frame),)
        assert set(frame.get_chemical_symbols()) <= {"Li", "F"}
    assert "trajectories: 2 completed" in result.output


def test_relax_from_a_saved_model(tmp_path, ensemble):
    from potential import save_ensemble

    model = save_ensemble(ensemble, tmp_path / "model")
    settings = tmp_path / "explore.yaml"
    settings.write_text("relax:\n  max_steps: 12\n  frame_interval: 6\n  fmax: 1.0e-6\n  hi: null\n")
    out, report = tmp_path / "relax.xyz", tmp_path / "relax.json"
    result = invoke(
        "sample", "--sampler", "relax", "--model", str(model), "--elements", "Li F", "--count", "2",
        "--seed", "1", "--config", str(settings), "--out", str(out), "--report", str(report), "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    reports = json.loads(report.read_text())
    assert [r["stop"]["reason"] for r in reports] == ["completed", "completed"]
    frames = read_frames(out)
    assert [f.info["provenance"]["step"] for f in frames] == [0, 6, 12, 0, 6, 12]
    assert {f.info["provenance"]["sampler"] for f in frames} == {"relax"}
    assert "trajectories: 2 completed" in result.output
    with pytest.raises(ConfigError, match="relax needs --model"):
        run_sampler("relax", None, ["Cu"], 1, 0)


def test_select_known_frames_from_an_extxyz(tmp_path, ensemble):
    frames = list(sample_random(ensemble, RandomStructureConfig(elements=["Al"], min_atoms=3, max_atoms=5), 0, 6))
    explored, known, out = tmp_path / "e.xyz", tmp_path / "k.xyz", tmp_path / "o.xyz"
    write_frames(explored, frames)
    write_frames(known, frames[:2])
    sigma = sorted(f.info["sigma_f"] for f in frames)
    lo, hi = sigma[0] / 2, sigma[-1] * 2  # all candidates
    result = select(
        explored, out=out, lo=lo, hi=hi, max=10, known=known, sentinels=0, seed=0, balance=True, report=None
    )
    assert result.counts["candidate"] == 6
    assert [d.reason for d in result.decisions[:2]] == ["duplicate-known", "duplicate-known"]
    assert len(read_frames(out)) == len(result.selected) <= 4


def test_bad_input_gives_clear_errors(tmp_path):
    out = tmp_path / "x.xyz"
    with pytest.raises(ConfigError, match="unknown sampler 'md'"):
        run_sampler("md", None, ["Cu"], 1, 0)
    with pytest.raises(ConfigError, match="element set is empty"):
        run_sampler("random", None, [], 1, 0)
    with pytest.raises(ConfigError, match="unknown element symbol 'Qq'"):
        run_sampler("random", None, ["Cu", "Qq"], 1, 0)
    with pytest.raises(ConfigError, match="melt-quench needs --model"):
        run_sampler("melt-quench", None, ["Cu"], 1, 0)
    with pytest.raises(DataFileError, match="does not exist"):
        sample(
            sampler="random",
            elements=["Cu"],
            out=out,
            model=tmp_path / "nope",
            count=1,
            seed=0,
            config=None,
            structures=None,
            device=None,
            report=None,
        )
    with pytest.raises(ConfigError, match="lo \\(0.5\\) must be below hi \\(0.5\\)"):
        select(
            tmp_path / "whatever.xyz",
            out=out,
            lo=0.5,
            hi=0.5,
            max=3,
            known=None,
            sentinels=0,
            seed=0,
            balance=True,
            report=None,
        )
    settings = tmp_path / "settings.yaml"
    settings.write_text("random:\n  packing_fraction: 1.0\n  min_distance_fraction: 0.95\n")
    with pytest.raises(ConfigError, match="impossible density"):
        sample(
            sampler="random",
            elements=["Cu"],
            out=out,
            model=None,
            count=1,
            seed=0,
            config=settings,
            structures=None,
            device=None,
            report=None,
        )
    settings.write_text("random:\n  elements: [Cu]\n")
    with pytest.raises(ConfigError, match="give elements with --elements"):
        sample(
            sampler="random",
            elements=["Cu"],
            out=out,
            model=None,
            count=1,
            seed=0,
            config=settings,
            structures=None,
            device=None,
            report=None,
        )
    for error in (ConfigError("a"), DataFileError("b")):
        assert isinstance(error, SelfplayError)


@pytest.mark.mongo
def test_select_drops_frames_already_in_the_store(tmp_path, ensemble, server_store, monkeypatch):
    from pipeline.store import add_frame

    frames = list(sample_random(ensemble, RandomStructureConfig(elements=["Al"], min_atoms=3, max_atoms=5), 1, 5))
    for frame in frames[:2]:
        add_frame(frame, source="earlier")
    explored, out = tmp_path / "e.xyz", tmp_path / "o.xyz"
    write_frames(explored, frames)
    sigma = sorted(f.info["sigma_f"] for f in frames)
    monkeypatch.setenv("SELFPLAY_MONGODB_URI", server_store)
    args = ["select", str(explored), "--out", str(out), "--lo", str(sigma[0] / 2), "--hi", str(sigma[-1] * 2)]
    result = invoke(*args, "--report", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    decisions = json.loads((tmp_path / "r.json").read_text())["decisions"]
    assert [d["reason"] for d in decisions[:2]] == ["duplicate-known", "duplicate-known"]
    assert all(d["reason"] != "duplicate-known" for d in decisions[2:])
    result = invoke(*args, "--no-store", "--report", str(tmp_path / "r2.json"))
    decisions = json.loads((tmp_path / "r2.json").read_text())["decisions"]
    assert all(d["reason"] != "duplicate-known" for d in decisions)
