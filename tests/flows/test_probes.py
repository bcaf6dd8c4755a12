"""Probe sets: ``selfplay probe add|list|remove``, and every generation's model scored on them."""

from __future__ import annotations

import json
import os
import sys

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT

from pipeline.documents import Frame, Generation, Label, ProbeFrame, ProbeSet
from pipeline.errors import InvalidStructure, StoreError
from pipeline.probes import add_probe_set, probe_atoms, probe_sets, remove_probe_set

from ..store.helpers import emt_dataset, labelled

# ------------------------------------------------------------------ helpers


@pytest.fixture
def selfplay(embedded_store, monkeypatch, capsys):
    """The real entry point (``flows.cli.main``) run in this process on the embedded store:
    ``selfplay(*args) -> (exit code, stdout, stderr)``."""
    import flows.cli
    import flows.commands.context

    # the commands connect through the shared context; the embedded store is already connected
    monkeypatch.setattr(flows.commands.context, "connect_store", lambda require_persistent=True: None)
    for name in [k for k in os.environ if k.startswith("SELFPLAY_")]:
        monkeypatch.delenv(name)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["selfplay", *map(str, args)])
        with pytest.raises(SystemExit) as stop:
            flows.cli.main()
        captured = capsys.readouterr()
        return stop.value.code, captured.out, captured.err

    return run


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def molecules() -> list[Atoms]:
    """Small open molecules with EMT labels (no stress: not periodic)."""
    return [labelled(molecule(name)) for name in ("H2O", "CH4", "NH3")]


def bare(frames: list[Atoms]) -> list[Atoms]:
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = None
        out.append(copy)
    return out


def config_file(tmp_path, **sections) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), **sections}))
    return str(path)


# ------------------------------------------------------------------ the CLI


def test_add_list_remove(selfplay, tmp_path):
    path = tmp_path / "cells.xyz"
    ase.io.write(path, emt_dataset(6))
    frames = ase.io.read(path, ":")  # what the file holds (extxyz rounds), stored bit for bit
    code, out, err = selfplay(
        "probe", "add", path, "--name", "emt-cells", "--theory", "emt", "--description", "EMT cells"
    )
    assert code == 0, err
    assert "probe set emt-cells: 6 frames" in out

    record = ProbeSet.objects.get(name="emt-cells")
    assert (record.theory, record.description, record.n_frames, record.complete) == ("emt", "EMT cells", 6, True)
    assert record.sources == [{"file": str(path.resolve()), "frames": 6}] and not record.labelled_here
    assert record.elements == ["Al", "C", "Cu", "H", "O"]
    # held out: nothing entered the dataset (frames, labels) that trains, selects and exports
    assert Frame.objects.count() == 0 and Label.objects.count() == 0
    stored = probe_atoms("emt-cells")
    assert len(stored) == 6
    for original, back in zip(frames, stored):
        assert (back.numbers == original.numbers).all() and (back.pbc == original.pbc).all()
        np.testing.assert_array_equal(back.positions, original.positions)  # bit for bit
        np.testing.assert_array_equal(back.cell.array, original.cell.array)
        assert back.get_potential_energy() == original.get_potential_energy()
        np.testing.assert_array_equal(back.get_forces(), original.get_forces())
        if original.pbc.all():
            np.testing.assert_array_equal(back.calc.results["stress"], original.calc.results["stress"])
        else:
            assert "stress" not in back.calc.results
        assert back.info["theory"] == "emt"

    code, out, err = selfplay("probe", "list")
    assert code == 0, err
    assert "emt-cells" in out and "EMT cells" in out
    code, out, err = selfplay("probe", "list", "--json")
    [row] = json.loads(out)
    assert (row["name"], row["n_frames"], row["theory"], row["complete"]) == ("emt-cells", 6, "emt", True)
    assert row["scored"] is False  # "emt" is not a theory the configured generations train on

    code, out, err = selfplay("probe", "remove", "emt-cells")
    assert code == 0, err
    assert "removed probe set emt-cells (6 frames)" in out
    assert ProbeSet.objects.count() == 0 and ProbeFrame.objects.count() == 0
    code, out, err = selfplay("probe", "remove", "emt-cells")
    assert code == 2 and "no probe set named 'emt-cells'" in error_line(err)
    code, out, err = selfplay("probe", "list")
    assert code == 0 and "no probe sets" in out


def test_without_theory_the_set_is_at_the_configured_level_of_theory(selfplay, tmp_path):
    from flows.config import load_config

    path = tmp_path / "molecules.xyz"
    ase.io.write(path, molecules())
    code, out, err = selfplay("--config", config_file(tmp_path), "probe", "add", path, "--name", "mols")
    assert code == 0, err
    config = load_config(config_file(tmp_path))
    record = ProbeSet.objects.get(name="mols")
    assert record.theory == config.dft.theory_key()
    assert record.theory_spec == json.loads(json.dumps(config.dft.theory_spec()))
    code, out, err = selfplay("--config", config_file(tmp_path), "probe", "list", "--json")
    assert json.loads(out)[0]["scored"] is True


def test_a_snapshot_keeps_the_level_of_theory_it_records(selfplay, tmp_path):
    from pipeline.export import export_snapshot
    from pipeline.importer import import_file

    source = tmp_path / "dataset.xyz"
    ase.io.write(source, emt_dataset(4))
    import_file(source, theory="emt-reference")
    snapshot = tmp_path / "snapshot.h5"
    export_snapshot(snapshot, format="hdf5")
    code, out, err = selfplay("probe", "add", snapshot, "--name", "from-snapshot")
    assert code == 0, err
    assert ProbeSet.objects.get(name="from-snapshot").theory == "emt-reference"
    assert len(probe_atoms("from-snapshot")) == 4
    assert Frame.objects.count() == 4 and Label.objects.count() == 4  # the dataset is what it was
    # frames recording different levels of theory are not one set
    mixed = [*ase.io.read(source, ":2"), *molecules()[:1]]
    mixed[0].info["theory"], mixed[1].info["theory"] = "a", "b"
    ase.io.write(tmp_path / "mixed.xyz", mixed)
    code, out, err = selfplay("probe", "add", tmp_path / "mixed.xyz", "--name", "mixed")
    assert code == 2 and "several levels of theory (a, b and none)" in error_line(err)


@pytest.mark.mongo
def test_the_installed_command_against_a_server(server_store, tmp_path):
    """``selfplay probe`` as a user runs it: its own process, a real server, one line per error."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFPLAY_", "PREFECT_"))}
    env["SELFPLAY_MONGODB_URI"] = server_store

    def run(*args):
        return subprocess.run([sys.executable, "-m", "flows.cli", "probe", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)  # fmt: skip

    path = tmp_path / "cells.xyz"
    ase.io.write(path, emt_dataset(3))
    result = run("add", path, "--name", "cells", "--theory", "emt")
    assert result.returncode == 0, result.stderr
    again = run("add", path, "--name", "cells", "--theory", "emt")
    assert again.returncode == 2 and "exists already" in error_line(again.stderr)
    assert "cells: 3 frames" in run("list").stdout
    assert run("remove", "cells").returncode == 0
    assert ProbeSet.objects.count() == 0 and ProbeFrame.objects.count() == 0


def test_a_name_that_exists_is_a_one_line_error(selfplay, tmp_path):
    first, second = tmp_path / "a.xyz", tmp_path / "b.xyz"
    ase.io.write(first, molecules())
    ase.io.write(second, emt_dataset(2))
    assert selfplay("probe", "add", first, "--name", "set-1", "--theory", "emt")[0] == 0
    code, out, err = selfplay("probe", "add", second, "--name", "set-1", "--theory", "emt")
    assert code == 2
    assert "probe set 'set-1' exists already" in error_line(err)
    assert ProbeSet.objects.count() == 1 and ProbeFrame.objects.count() == 3  # the first set, untouched
    assert [a.get_chemical_formula() for a in probe_atoms("set-1")] == ["H2O", "CH4", "H3N"]

    code, out, err = selfplay("probe", "add", first, "--name", "set.1", "--theory", "emt")
    assert code == 2 and "not allowed" in error_line(err)  # names become metric keys: no "."


def test_unlabelled_file_without_label_is_a_one_line_error_naming_it(selfplay, tmp_path):
    good, unlabelled = tmp_path / "good.xyz", tmp_path / "unlabelled.xyz"
    ase.io.write(good, molecules())
    ase.io.write(unlabelled, bare(molecules()))
    code, out, err = selfplay("probe", "add", good, unlabelled, "--name", "mixed", "--theory", "emt")
    assert code == 2
    line = error_line(err)
    assert f"{unlabelled} frame 0: no energy and forces" in line
    assert ProbeSet.objects.count() == 0 and ProbeFrame.objects.count() == 0  # the good file is not stored either


def test_label_and_theory_exclude_each_other(selfplay, tmp_path):
    path = tmp_path / "m.xyz"
    ase.io.write(path, bare(molecules()))
    code, out, err = selfplay("probe", "add", path, "--name", "m", "--label", "--theory", "emt")
    assert code == 2 and "--theory" in error_line(err)
    assert ProbeSet.objects.count() == 0


def test_add_with_label_through_xtb(selfplay, tmp_path):
    pytest.importorskip("tblite")
    from flows.config import load_config
    from tests.dft.helpers import tblite_reference

    slab = molecule("H2O")
    slab.cell, slab.pbc = [8.0, 8.0, 8.0], [True, True, False]  # tblite takes no partial periodicity
    path = tmp_path / "to-label.xyz"
    ase.io.write(path, [*bare(molecules()), slab])
    config = config_file(tmp_path, dft={"backend": "xtb", "threads": 1, "time_limit": 60}, resources={"dft_workers": 2})
    code, out, err = selfplay("--config", config, "probe", "add", path, "--name", "xtb-mols", "--label")
    assert code == 0, err
    assert f"left out: {path} frame 3: invalid:" in " ".join(out.split()) and "partially periodic" in out
    assert "probe set xtb-mols: 3 frames" in out and "1 left out" in out

    record = ProbeSet.objects.get(name="xtb-mols")
    assert record.theory == load_config(config).dft.theory_key() and record.labelled_here
    stored = probe_atoms("xtb-mols")
    assert [a.get_chemical_formula() for a in stored] == ["H2O", "CH4", "H3N"]  # in the files' order
    for atoms in stored:
        energy, forces, _ = tblite_reference(atoms)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-6)
    assert Frame.objects.count() == 0 and Label.objects.count() == 0

    only_bad = tmp_path / "bad.xyz"
    ase.io.write(only_bad, [slab])
    code, out, err = selfplay("--config", config, "probe", "add", only_bad, "--name", "nothing", "--label")
    assert code == 2 and "no structure could be labelled" in error_line(err)
    assert ProbeSet.objects(name="nothing").count() == 0


# ------------------------------------------------------------------ all or nothing


def test_a_failure_half_way_leaves_nothing(store, monkeypatch):
    import pipeline.probes as probes

    frames = emt_dataset(5)
    real = probes._frame_documents

    def failing(set_id, start, frames, labels):
        if start + len(frames) > 3:  # after the first batch of two is in the database
            raise RuntimeError("the database went away")
        return real(set_id, start, frames, labels)

    monkeypatch.setattr(probes, "_frame_documents", failing)
    with pytest.raises(RuntimeError, match="went away"):
        add_probe_set("half", frames, theory="emt", batch_size=2)
    assert ProbeSet.objects.count() == 0 and ProbeFrame.objects.count() == 0

    monkeypatch.setattr(probes, "_frame_documents", real)
    broken = emt_dataset(3)
    broken[2].calc.results["forces"][0, 0] = np.nan
    with pytest.raises(InvalidStructure, match="probe set 'half' frame 2: forces contain NaN"):
        add_probe_set("half", broken, theory="emt")
    assert ProbeSet.objects.count() == 0 and ProbeFrame.objects.count() == 0

    info = add_probe_set("half", frames, theory="emt", batch_size=2)
    assert info.n_frames == 5 and len(probe_atoms("half")) == 5


def test_an_interrupted_add_is_never_used_and_is_removable(store):
    """A process killed while writing leaves an incomplete set: not listed as usable, not
    evaluated, its name taken until ``selfplay probe remove``."""
    import pipeline.probes as probes

    add_probe_set("whole", molecules(), theory="emt")
    killed = ProbeSet(name="killed", theory="emt", n_frames=3, complete=False).save()
    ProbeFrame._get_collection().insert_one(
        probes._frame_documents(killed.id, 0, molecules()[:1], [(-1.0, np.zeros((3, 3)), None)])[0]
    )
    assert [p.name for p in probe_sets()] == ["whole"]
    assert [(p.name, p.complete) for p in probe_sets(include_incomplete=True)] == [("killed", False), ("whole", True)]
    with pytest.raises(StoreError, match="incomplete"):
        probe_atoms("killed")
    with pytest.raises(StoreError, match="'killed' exists, incomplete .*selfplay probe remove killed"):
        add_probe_set("killed", molecules(), theory="emt")
    assert remove_probe_set("killed") == 1
    assert add_probe_set("killed", molecules(), theory="emt").n_frames == 3
    assert ProbeFrame.objects.count() == 6


# ------------------------------------------------------------- evaluation


class ShiftedModel:
    """An "ensemble" whose predictions are the labels shifted by known amounts, so the
    errors the report stage stores are known exactly."""

    ENERGY, FORCE, STRESS = 0.01, 0.05, 0.002  # eV/atom, eV/Å, eV/Å³

    def __init__(self):
        self.evaluated: list[str] = []

    def evaluate(self, frames):
        out = []
        for atoms in frames:
            self.evaluated.append(atoms.info.get("probe_set", "dataset"))
            results = atoms.calc.results
            prediction = {
                "energy": results["energy"] + self.ENERGY * len(atoms),
                "forces": results["forces"] + self.FORCE,
                "force_deviation": np.full(len(atoms), 0.01),
                "energy_deviation": 0.0,
            }
            if "stress" in results:
                prediction["stress"] = np.asarray(results["stress"]) - self.STRESS
            out.append(prediction)
        return out


def emt_labeller(config, frames, progress):
    """Labels from ASE's EMT (H and O clusters: cheap, deterministic), as DFT outcomes."""
    from dft.results import DFTResult

    for frame in frames:
        atoms = frame.to_atoms()
        atoms.calc = EMT()
        yield frame, DFTResult(atoms.get_potential_energy(), atoms.get_forces(), None, config.dft.theory_key(), {})


class FakeTraining:
    def summary(self) -> dict:
        return {"fake": True}


def fake_trainer(frames, training, out_dir, **_):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.json").write_text(json.dumps({"fake": True}))
    return FakeTraining()


def small_config(tmp_path, generation: dict | None = None, **overrides):
    from flows.config import load_config

    return load_config(
        workdir=tmp_path,
        elements=["H", "O"],
        explore={"random": {"count": 4, "params": {"min_atoms": 2, "max_atoms": 3, "kind": "cluster"}},
                 "melt_quench": {"enabled": False}, "substitution": {"enabled": False}},
        selection={"max_selected": 3, "sentinel_count": 0},
        generation={"min_train_frames": 1, "min_labelled_fraction": 0.0, "export_hdf5": False, "write_report": False,
                    **(generation or {})},
        **overrides,
    )  # fmt: skip


@pytest.fixture
def scored_run(store, tmp_path):
    """Three probe sets (two at the generations' theory, one not) and the collaborators of
    a fast generation: EMT labels, a fake training, the shifted model once one is trained."""
    from flows.exploration import explore

    config = small_config(tmp_path)
    theory = config.dft.theory_key()
    add_probe_set("cells", emt_dataset(3), theory=theory)  # periodic Cu/Al cells (stress) and ethanol
    add_probe_set("molecules", molecules(), theory=theory)
    add_probe_set("other-theory", molecules(), theory="emt")
    model = ShiftedModel()
    collaborators = dict(
        trainer=fake_trainer,
        labeller=emt_labeller,
        explorer=lambda config, number, _model: explore(config, number, None),
        model_loader=lambda config, generation: model if generation.model_version is not None else None,
    )
    return config, model, collaborators


def expected_entry(frames: list[Atoms], trained_on: int) -> dict:
    symbols = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    with_stress = sum(1 for atoms in frames if "stress" in atoms.calc.results)
    return {
        "frames": len(frames),
        "energy_mae_per_atom": ShiftedModel.ENERGY,
        "energy_rmse_per_atom": ShiftedModel.ENERGY,
        "force_mae": ShiftedModel.FORCE,
        "force_rmse": ShiftedModel.FORCE,
        "stress_mae": ShiftedModel.STRESS if with_stress else None,
        "stress_frames": with_stress,
        "elements": symbols,
        "trained_on_labels": trained_on,
    }


def check_entry(entry: dict, expected: dict) -> None:
    for key in ("energy_mae_per_atom", "energy_rmse_per_atom", "force_mae", "force_rmse"):
        assert entry[key] == pytest.approx(expected[key], rel=1e-6), key
    if expected["stress_mae"] is None:
        assert entry["stress_mae"] is None
    else:
        assert entry["stress_mae"] == pytest.approx(expected["stress_mae"], rel=1e-6)
    for key in ("frames", "stress_frames", "trained_on_labels"):
        assert entry[key] == expected[key], key
    assert sorted(entry["per_element"]) == expected["elements"]
    for row in entry["per_element"].values():
        assert row["force_mae"] == pytest.approx(ShiftedModel.FORCE, rel=1e-6)
        assert row["energy_mae_per_atom"] == pytest.approx(ShiftedModel.ENERGY, rel=1e-6)


def test_every_generation_scores_its_model_on_the_probe_sets_of_its_theory(scored_run):
    from flows.stages import run_generation
    from pipeline.documents import ModelVersion

    config, model, collaborators = scored_run
    cold = run_generation(config, **collaborators)
    assert cold.status == "completed" and cold.model_version is None
    assert "probes" not in cold.metrics  # no model, nothing scored
    first_labels = Label.objects(generation=0).count()
    assert first_labels > 0

    one = run_generation(config, **collaborators)
    two = run_generation(config, **collaborators)
    for record in (one, two):
        assert record.status == "completed"
        trained_on = ModelVersion.objects.get(generation=record.number).trained_on["frames"]
        assert trained_on == Label.objects(generation__lt=record.number).count()
        probes = record.metrics["probes"]
        assert sorted(probes) == ["cells", "molecules"]  # not the set at another theory
        check_entry(probes["cells"], expected_entry(emt_dataset(3), trained_on))
        check_entry(probes["molecules"], expected_entry(molecules(), trained_on))
        assert (
            probes["cells"]["model"] == f"gen-{record.number:04d}"
            and probes["cells"]["theory"] == config.dft.theory_key()
        )
        assert record.stages["report"]["result"]["probes"] == ["cells", "molecules"]
    assert one.metrics["probes"]["cells"]["trained_on_labels"] < two.metrics["probes"]["cells"]["trained_on_labels"]
    # the probe frames never became dataset frames, labels or selection candidates
    probe_hashes = {doc.hash for doc in ProbeFrame.objects}
    assert probe_hashes and not probe_hashes & {frame.hash for frame in Frame.objects}
    assert model.evaluated.count("cells") == 2 * 3 and "other-theory" not in model.evaluated


def test_training_theories_choose_the_probe_sets_scored(scored_run):
    """A probe set at another theory is scored once the generations train on that theory too."""
    from flows.stages import evaluate_probe_sets, run_generation

    config, model, collaborators = scored_run
    run_generation(config, **collaborators)
    one = run_generation(config, **collaborators)
    wider = config.model_copy(
        update={"generation": config.generation.model_copy(update={"training_theories": ["emt"]})}
    )
    probes = evaluate_probe_sets(wider, one, model)
    assert sorted(probes) == ["cells", "molecules", "other-theory"]
    assert probes["cells"] == one.metrics["probes"]["cells"]  # taken from the generation, not evaluated again
    assert evaluate_probe_sets(config, one, None) is None


def test_an_interrupted_report_stage_rerun_gives_the_same_metrics(scored_run, monkeypatch):
    import potential.evaluation
    from flows.stages import StageContext, report_stage, run_generation

    config, model, collaborators = scored_run
    run_generation(config, **collaborators)
    run_generation(config, stop_after="label", **collaborators)
    real = potential.evaluation.model_errors

    def interrupted(model_, frames, predictions=None):
        if frames and frames[0].info.get("probe_set") == "molecules":
            raise KeyboardInterrupt  # the process is stopped half-way through the probe sets
        return real(model_, frames, predictions)

    monkeypatch.setattr(potential.evaluation, "model_errors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_generation(config, **collaborators)
    record = Generation.objects.get(number=1)
    assert record.stages["report"]["status"] != "completed"
    assert sorted(record.metrics["probes"]) == ["cells"]  # kept the moment it was computed

    monkeypatch.setattr(potential.evaluation, "model_errors", real)
    model.evaluated.clear()
    record = run_generation(config, number=1, **collaborators)
    assert record.status == "completed" and record.stages["report"]["status"] == "completed"
    assert model.evaluated.count("cells") == 0 and model.evaluated.count("molecules") == 3  # only what was missing
    first = record.metrics["probes"]
    trained_on = Label.objects(generation=0).count()
    check_entry(first["cells"], expected_entry(emt_dataset(3), trained_on))
    check_entry(first["molecules"], expected_entry(molecules(), trained_on))

    # the whole report stage once more gives the same metrics; so does scoring from scratch
    report_stage(StageContext(config, record, **collaborators), write_files=False)
    record.reload()
    assert record.metrics["probes"] == first
    Generation._get_collection().update_one({"_id": record.id}, {"$unset": {"metrics.probes": ""}})
    record.reload()
    report_stage(StageContext(config, record, **collaborators), write_files=False)
    record.reload()
    assert record.metrics["probes"] == first


@pytest.mark.slow
def test_a_real_model_is_scored_on_a_probe_set_labelled_with_xtb(selfplay, tmp_path):
    """Two generations of the tiny xTB config with a probe set added by ``probe add --label``."""
    pytest.importorskip("tblite")
    from flows.config import load_config
    from flows.stages import run_generation
    from pipeline.model_registry import fetch_model
    from potential.checkpoint import load_ensemble
    from potential.evaluation import model_errors

    from .helpers import tiny_config_file

    path = tiny_config_file(tmp_path, "xtb", random_count=6)
    config = load_config(path, workdir=tmp_path / "out")
    structures = tmp_path / "probe.xyz"
    ase.io.write(structures, [molecule("H2O"), molecule("H2O2"), molecule("H2"), molecule("OH")])
    code, out, err = selfplay("--config", path, "probe", "add", structures, "--name", "small-HO", "--label")
    assert code == 0, err

    cold = run_generation(config)
    trained = run_generation(config)
    assert "probes" not in cold.metrics
    entry = trained.metrics["probes"]["small-HO"]
    assert (
        entry["trained_on_labels"] == trained.model_version.trained_on["frames"] == Label.objects(generation=0).count()
    )
    assert entry["frames"] == 4 and entry["stress_mae"] is None and sorted(entry["per_element"]) == ["H", "O"]
    ensemble = load_ensemble(fetch_model(trained.model_version, tmp_path / "cache"))
    stats, _ = model_errors(ensemble, probe_atoms("small-HO"))
    assert entry["force_mae"] == pytest.approx(stats.force_mae, rel=1e-5)
    assert entry["energy_mae_per_atom"] == pytest.approx(stats.energy_mae_per_atom, rel=1e-5)
    assert all(
        np.isfinite(entry[k]) for k in ("force_mae", "force_rmse", "energy_mae_per_atom", "energy_rmse_per_atom")
    )
