"""A short run of benchmarks/bench_active_learning.py: two generations, two arms, one seed.

It runs the real loop (run_generation on the embedded store, GFN2-xTB labels), so the
benchmark cannot rot; the checks are on the properties the full run's conclusions rest on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmarks.loader import load_benchmark

pytestmark = pytest.mark.slow

GENERATIONS, BUDGET = 2, 8


def finite_numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    pytest.importorskip("tblite")
    bench = load_benchmark("bench_active_learning")
    tmp = tmp_path_factory.mktemp("al")
    out = tmp / "al.json"
    argv = [
        "--quick", "--generations", str(GENERATIONS), "--budget", str(BUDGET), "--seeds", "0",
        "--arms", "selfplay", "random-pick", "test-recipe", "--jobs", "1", "--threads", "1",
        "--set", json.dumps({"training": {"epochs": 5, "min_steps": None}}),
        "--cache-dir", str(tmp / "cache"), "--workdir", str(tmp / "work"), "--out", str(out),
    ]  # fmt: skip
    result = bench.main(argv)
    return bench, result, out, tmp, argv


def test_writes_strict_json_with_the_schema(short_run):
    bench, result, out, _, _ = short_run
    data = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    for key in ("command", "profile", "settings", "environment", "test_sets", "oracle_check", "oracle_stability",
                "configs", "summary", "runs", "timings"):  # fmt: skip
        assert key in data, key
    env = data["environment"]
    assert env["cores"] >= 1 and env["cpu"]
    assert {"torch", "tblite", "ase", "selfplay"} <= set(env["versions"])
    assert data["settings"]["seeds"] == [0] and data["settings"]["budget"] == BUDGET
    assert data["configs"]["selfplay"]["selection"]["strategy"] == "representative"  # the xtb profile's
    assert data["configs"]["random-pick"]["selection"]["strategy"] == "random"
    assert data["configs"]["selfplay"]["dft"]["backend"] == "xtb"
    assert out.with_suffix(".png").stat().st_size > 1000
    markdown = out.with_suffix(".md").read_text()
    assert "| arm | labels |" in markdown and bench.KEEP_MARKER in markdown


def test_both_arms_ran_the_real_loop_with_equal_labels(short_run):
    _, result, _, _, _ = short_run
    arms = {run["arm"]: run for run in result["runs"]}
    assert set(arms) == {"selfplay", "random-pick", "test-recipe"} == set(result["summary"]["arms"])
    # every arm's store began with the same labelled seed set, and every model trained on it
    seeds = result["seed_set"]["labelled"]
    assert seeds == result["seed_set"]["structures"] > 0 and result["settings"]["seed_set"]
    for run in (arms["selfplay"], arms["random-pick"]):
        assert run["seed_set_labels"] == seeds
        numbers = [g["number"] for g in run["generations"]]
        assert numbers == list(range(GENERATIONS + 1))  # the generations, then the next one's train stage
        assert [g["labels_total"] for g in run["generations"][:GENERATIONS]] == [
            seeds + BUDGET * (i + 1) for i in range(GENERATIONS)
        ]
        # generation 0 trained on the seed set alone and explored with that model
        assert run["generations"][0]["trained_on"] == seeds
        assert run["generations"][0]["explore"]["melt_quench"]["frames"] > 0
        assert (
            run["generations"][-1]["final_train_only"]
            and run["generations"][-1]["trained_on"] == seeds + BUDGET * GENERATIONS
        )
        assert all(g["counts"]["explored"] >= BUDGET for g in run["generations"][:GENERATIONS])
    labels = {arm: [m["labels"] for m in run["models"]] for arm, run in arms.items()}
    assert labels["selfplay"] == labels["random-pick"] == labels["test-recipe"] == [BUDGET, BUDGET * GENERATIONS]
    assert all(
        [m["labels_with_seed_set"] for m in run["models"]] == [seeds + BUDGET, seeds + BUDGET * GENERATIONS]
        for run in arms.values()
    )
    assert result["summary"]["labels_equal_across_arms"]
    # generation 1 explored with its model: melt/quench frames next to the random ones
    assert arms["selfplay"]["generations"][1]["explore"]["melt_quench"]["frames"] > 0


def test_errors_are_finite_for_every_model_and_test_set(short_run):
    _, result, _, _, _ = short_run
    names = set(result["test_sets"]) | {"in_domain", "md"}
    assert {"random", "ood"} <= names and any(n.startswith("md_") for n in names)
    for run in result["runs"]:
        for model in run["models"]:
            assert set(model["errors"]) == names
            for stats in model["errors"].values():
                assert stats["frames"] > 0
                for metric in ("energy_mae_per_atom", "force_mae", "force_rmse"):
                    assert math.isfinite(stats[metric]) and stats[metric] > 0
    for arm in result["summary"]["arms"].values():
        curve = arm["force_mae"]["in_domain"]
        assert curve["labels"] == [BUDGET, BUDGET * GENERATIONS] and curve["labels_equal_across_seeds"]
        assert all(math.isfinite(x) for x in curve["mean"] + curve["std"])


def test_stability_and_label_fraction_are_reported(short_run):
    bench, result, _, _, _ = short_run
    protocol = result["profile"]["stability"]
    runs = len(protocol["temperatures"]) * protocol["runs_per_temperature"]
    assert result["oracle_stability"]["runs"] == runs
    for run in result["runs"]:
        stability = run["stability"]
        assert stability["runs"] == runs and 0 <= stability["stable"] <= runs
        assert all(d["reason"] for d in stability["details"])
        kept = [d["bonds_kept"] for d in stability["details"]]  # the xtb protocol judges bonds too
        assert stability["bonds_kept_fraction"] == pytest.approx(sum(kept) / runs)
        assert not any(k and not d["stable"] for k, d in zip(kept, stability["details"]))
    assert result["summary"]["arms"]["selfplay"]["stability"]["bonds_kept_fraction_mean"] is not None
    md_sets = sorted(n for n in result["test_sets"] if n.startswith("md_"))
    for model in result["runs"][0]["models"]:
        errors = model["errors"]
        assert errors["md"]["sets"] == md_sets
        assert errors["md"]["force_mae"] == pytest.approx(sum(errors[n]["force_mae"] for n in md_sets) / len(md_sets))
    assert result["summary"]["label_fraction_md"]["selfplay"]["test_set"] == "md"
    fraction = result["summary"]["label_fraction"]["selfplay"]
    assert fraction["reference"] == "random-pick" and fraction["reference_labels"] == BUDGET * GENERATIONS
    assert fraction["fraction"] is None or 0 < fraction["fraction"] <= 1
    energy = result["summary"]["label_fraction_energy"]["selfplay"]
    assert energy["quantity"] == "energy_mae_per_atom"
    final = result["summary"]["arms"]["random-pick"]["energy_mae_per_atom"]["in_domain"]["mean"][-1]
    assert energy["target"] == pytest.approx(final)
    assert set(result["summary"]["verdict"]["selfplay"]) == {"labels_target_met", "stability_target_met"}
    assert result["oracle_check"]["failed"] == 0 and result["oracle_check"]["max_energy_diff_ev"] < 1e-4
    assert all(math.isfinite(x) for x in finite_numbers(result["summary"]))


def test_test_recipe_trains_on_its_own_pool_in_equal_shares(short_run):
    bench, result, _, tmp, _ = short_run
    run = next(r for r in result["runs"] if r["arm"] == "test-recipe")
    assert run["generations"] == [] and run["stability"]["runs"] > 0  # no loop; its final model's MD is judged
    pool = result["test_recipe_pool_meta"]
    assert pool["key"] != result["test_set_meta"]["key"]
    assert result["summary"]["label_fraction"]["test-recipe"]["reference"] == "random-pick"
    assert "test-recipe" not in result["summary"]["verdict"]  # a reference, not judged against the target
    profile = bench.get_profile("xtb", quick=True)
    sets, _ = bench.test_recipe_pool(profile, ["H", "C", "N", "O"], tmp / "cache", BUDGET * GENERATIONS)
    tests, _ = bench.build_test_sets(profile, ["H", "C", "N", "O"], tmp / "cache")
    assert set(sets) == set(tests) - {"ood"}
    seen = {frame.positions.tobytes() for frames in tests.values() for frame in frames}
    assert not any(frame.positions.tobytes() in seen for frames in sets.values() for frame in frames)
    order = bench.stratified_order(sets, seed=0)
    assert len(order) == sum(len(f) for f in sets.values()) >= BUDGET * GENERATIONS
    first = order[: len(sets) * 2]
    counts = [sum(any(f is g for g in frames) for f in first) for frames in sets.values()]
    assert counts == [2] * len(sets)


def test_test_sets_are_cached_on_disk(short_run):
    bench, result, _, tmp, _ = short_run
    assert not result["test_set_meta"]["cached"]
    profile = bench.get_profile("xtb", quick=True)
    sets, meta = bench.build_test_sets(profile, ["H", "C", "N", "O"], tmp / "cache")
    assert meta["cached"] and meta["key"] == result["test_set_meta"]["key"]
    assert {name: len(frames) for name, frames in sets.items()} == {
        name: d["frames"] for name, d in result["test_sets"].items()
    }
    assert sorted(p.suffix for p in Path(meta["folder"]).iterdir()) == [".extxyz"] * len(sets) + [".json"]


def test_render_summarizes_the_runs_again(short_run):
    bench, result, out, tmp, _ = short_run
    older = json.loads(out.read_text())
    for run in older["runs"]:  # a result from before the MD-sets mean existed
        for model in run["models"]:
            del model["errors"]["md"]
    del older["summary"]["label_fraction_md"]
    path = tmp / "older.json"
    path.write_text(json.dumps(older))
    rendered = bench.render(path)
    assert rendered["summary"]["label_fraction_md"] == result["summary"]["label_fraction_md"]
    assert json.loads(path.read_text())["summary"] == json.loads(out.read_text())["summary"]
    text = path.with_suffix(".md").read_text()
    assert "on the MD test sets alone" in text and "final in-domain energy MAE" in text


def test_labels_to_reach_interpolates_on_the_curve():
    bench = load_benchmark("bench_active_learning")
    assert bench.labels_to_reach([10, 20, 30], [3.0, 2.0, 1.0], 1.5) == pytest.approx(25.0)
    assert bench.labels_to_reach([10, 20, 30], [3.0, 2.0, 1.0], 5.0) == 10.0
    assert bench.labels_to_reach([10, 20, 30], [3.0, 2.0, 1.0], 0.5) is None


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ('bias-0.5={"selection": {}}', "letters, digits"),  # a '.' cannot enter a database name
        ("selfplay={}", "a new name"),
        ("loose={selection: 1}", "does not parse"),
    ],
)
def test_variant_names_and_json_are_checked_before_any_work(variant, message, capsys):
    bench = load_benchmark("bench_active_learning")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--variant", variant])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_reuse_takes_finished_runs_and_refuses_other_settings(short_run):
    bench, result, out, tmp, argv = short_run
    again = tmp / "again.json"
    redo = [a if a != str(out) else str(again) for a in argv] + ["--reuse", str(out)]
    reused = bench.main(redo)
    assert sorted(reused["settings"]["reused"]["runs"]) == ["random-pick/0", "selfplay/0", "test-recipe/0"]
    assert [r["models"] for r in reused["runs"]] == [r["models"] for r in result["runs"]]
    other = [a if a != str(BUDGET) else str(BUDGET + 1) for a in redo]
    with pytest.raises(SystemExit, match="budget"):
        bench.main(other)
    with pytest.raises(SystemExit, match="seed_set"):  # runs from a seeded store are not an empty store's
        bench.main(redo + ["--no-seed-set"])
    with pytest.raises(SystemExit, match="stability"):  # runs judged without MD stability
        bench.main(redo + ["--no-stability"])
    edited = json.loads(out.read_text())
    edited["profile"]["stability"]["steps"] += 1  # an earlier, shorter protocol
    (tmp / "shorter.json").write_text(json.dumps(edited))
    with pytest.raises(SystemExit, match="stability"):
        bench.main([*redo[:-1], str(tmp / "shorter.json")])


def test_seed_set_is_the_labellers_numbers(short_run):
    """The seed set is labelled by the loop's own labeller: the oracle gives the same numbers,
    and every frame names the theory key the arms train on."""
    import ase.io

    bench, result, _, tmp, _ = short_run
    frames = ase.io.read(result["seed_set"]["path"], index=":")
    assert len(frames) == result["seed_set"]["labelled"]
    profile = bench.get_profile("xtb", quick=True)
    config = bench.load_arm_config(profile.config_yaml, {"workdir": str(tmp / "theory")}, tmp)
    assert {a.info["theory"] for a in frames} == {config.dft.theory_key()}
    for atoms in frames[:3]:
        oracle = bench.oracle_label(profile, atoms)
        assert abs(oracle.get_potential_energy() - atoms.get_potential_energy()) < 1e-6
        assert abs(oracle.get_forces() - atoms.get_forces()).max() < 1e-5
