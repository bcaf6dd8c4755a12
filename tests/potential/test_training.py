"""Training on real (EMT) labels, checkpoints, the ASE calculator, MD and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from typer.testing import CliRunner

from potential import (
    TrainConfig,
    load_calculator,
    load_ensemble,
    save_ensemble,
    train_ensemble,
)
from potential.data import fit_element_refs
from potential.model import N_ELEMENTS
from tests.potential.conftest import small_config


def test_training_beats_baselines_on_held_out_frames(trained, emt_train_frames, emt_test_frames):
    result, _ = trained
    ensemble = result.ensemble
    predictions = ensemble.evaluate(emt_test_frames)
    true_forces = np.concatenate([a.get_forces() for a in emt_test_frames])
    predicted = np.concatenate([p["forces"] for p in predictions])
    mean_train_force = np.concatenate([a.get_forces() for a in emt_train_frames]).mean(0)
    force_mae = np.abs(predicted - true_forces).mean()
    baseline = np.abs(true_forces - mean_train_force).mean()
    # composition-only energy baseline: per-element references fitted on the training set
    refs = fit_element_refs(
        [a.numbers for a in emt_train_frames],
        np.array([a.get_potential_energy() for a in emt_train_frames]),
        N_ELEMENTS,
    )
    e_true = np.array([a.get_potential_energy() / len(a) for a in emt_test_frames])
    e_pred = np.array([p["energy"] / len(a) for p, a in zip(predictions, emt_test_frames)])
    e_base = np.array([refs[a.numbers].sum() / len(a) for a in emt_test_frames])
    print(
        f"\nheld-out force MAE {force_mae:.3f} eV/Å (mean-force baseline {baseline:.3f}); "
        f"energy MAE {np.abs(e_pred - e_true).mean() * 1000:.1f} meV/atom "
        f"(composition baseline {np.abs(e_base - e_true).mean() * 1000:.1f})"
    )
    assert force_mae < 0.35 * baseline
    assert np.abs(e_pred - e_true).mean() < 0.7 * np.abs(e_base - e_true).mean()
    # the ensemble disagrees more where it is more wrong (weak but real calibration)
    errors = np.linalg.norm(predicted - true_forces, axis=1)
    sigma = np.concatenate([p["force_deviation"] for p in predictions])
    assert np.corrcoef(errors, sigma)[0, 1] > 0.1


def test_training_metrics_and_files(trained):
    result, out = trained
    assert result.n_train + result.n_val == 90 and result.n_val == 9
    first, best = result.metrics[0], result.best
    assert best.val_force_mae < first.val_force_mae
    assert best.val_force_mae < 0.5 * result.val_force_baseline_mae
    assert set(best.val_force_mae_per_element) <= {"Cu", "Al", "Ni"} and len(best.val_force_mae_per_element) >= 2
    assert best.val_energy_mae_per_atom is not None and best.val_stress_mae is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["best_epoch"] == result.best_epoch
    assert len(metrics["epochs"]) == len(result.metrics)
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "selfplay-potential" and meta["version"] == 1
    assert set(meta["element_refs"]) == {"13", "28", "29"}


def test_checkpoint_round_trip_gives_identical_predictions(trained, emt_test_frames, tmp_path):
    result, out = trained
    loaded = load_ensemble(out)
    frames = emt_test_frames[:5]
    for a, b in zip(result.ensemble.evaluate(frames), loaded.evaluate(frames)):
        assert a["energy"] == b["energy"]
        np.testing.assert_array_equal(a["forces"], b["forces"])
        np.testing.assert_array_equal(a["force_deviation"], b["force_deviation"])
    # saving a loaded ensemble again reproduces the files' content
    again = save_ensemble(loaded, tmp_path / "again")
    assert (
        json.loads((again / "model.json").read_text())["element_refs"]
        == json.loads((out / "model.json").read_text())["element_refs"]
    )
    as64 = load_ensemble(out, dtype="float64")
    e64 = as64.evaluate(frames[:1])[0]["energy"]
    assert e64 == pytest.approx(result.ensemble.evaluate(frames[:1])[0]["energy"], rel=1e-6)


def test_warm_start_starts_from_the_trained_weights(trained, emt_test_frames):
    _, out = trained
    config = TrainConfig(epochs=1, batch_size=4, progress=False, val_fraction=0.2, seed=3)
    warm = train_ensemble(emt_test_frames, config, warm_start=out, device="cpu")
    cold = train_ensemble(emt_test_frames, config, model_config=small_config(), device="cpu")
    assert warm.metrics[0].val_force_mae < 0.5 * cold.metrics[0].val_force_mae


def test_calculator_relaxes_a_cluster_and_reports_deviation(trained):
    _, out = trained
    calc = load_calculator(out)
    from ase.cluster import Octahedron

    atoms = Octahedron("Cu", length=3, cutoff=1, latticeconstant=3.61)
    atoms.rattle(0.1, seed=5)
    atoms.calc = calc
    e0, f0 = atoms.get_potential_energy(), np.abs(atoms.get_forces()).max()
    assert calc.results["force_deviation"].shape == (len(atoms),)
    assert calc.results["energy_deviation"] >= 0 and calc.results["descriptor"].ndim == 1
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=60)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.get_forces()).max() < min(f0, 0.1)
    with pytest.raises(Exception, match="periodic"):
        atoms.get_stress()


def test_calculator_stress_in_a_periodic_cell(trained):
    _, out = trained
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = load_calculator(out)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    # compressing the crystal makes the pressure (-trace/3) rise, as for EMT itself
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.97, scale_atoms=True)
    squeezed.calc = atoms.calc
    pressure = -stress[:3].mean()
    assert -squeezed.get_stress()[:3].mean() > pressure


def test_nve_md_conserves_energy(trained):
    """VelocityVerlet, 1 fs, 300 K, 32-atom Cu-Ni cell, 0.2 ps with the float32 model."""
    _, out = trained
    rng = np.random.default_rng(0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.random(len(atoms)) < 0.3] = "Ni"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.calc = load_calculator(out)
    # ase >= 3.27 renamed MaxwellBoltzmannDistribution
    thermalize = (
        getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
    )
    thermalize(atoms, temperature_K=300, rng=rng)
    Stationary(atoms)
    energies = []
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs, logfile=None)
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(200)
    energies = np.array(energies) / len(atoms)
    times_ps = np.arange(len(energies)) * 1e-3
    drift = np.polyfit(times_ps, energies, 1)[0]  # eV/atom/ps
    spread = energies.max() - energies.min()
    kinetic = atoms.get_kinetic_energy() / len(atoms)
    print(f"\nNVE drift {drift * 1000:+.3f} meV/atom/ps, total-energy spread {spread * 1000:.3f} meV/atom")
    assert kinetic > 0.005  # the atoms really moved
    assert abs(drift) < 1e-3  # 1 meV/atom/ps
    assert spread < 1e-3


def test_cli_train_and_predict(emt_train_frames, tmp_path):
    from flows.commands.model import predict, train

    data = tmp_path / "data.extxyz"
    write(data, emt_train_frames[:24], format="extxyz")
    app = typer.Typer()
    app.command("train")(train)
    app.command("predict")(predict)
    runner = CliRunner()
    model = tmp_path / "model"
    result = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(model), "--epochs", "2", "--ensemble", "2", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "validation: force MAE" in result.output
    out = tmp_path / "pred.extxyz"
    result = runner.invoke(app, ["predict", str(model), str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frames = read(out, index=":")
    assert len(frames) == 24
    assert frames[0].arrays["force_deviation"].shape == (len(frames[0]),)
    assert "energy_deviation" in frames[0].info and "ref_energy" in frames[0].info
    np.testing.assert_allclose(frames[0].arrays["ref_forces"], emt_train_frames[0].get_forces())
    direct = load_ensemble(model).evaluate(emt_train_frames[:1])[0]
    assert frames[0].get_potential_energy() == pytest.approx(direct["energy"], rel=1e-6)


def test_reference_data_is_really_emt(emt_train_frames):
    labels = emt_train_frames[3].get_forces()
    atoms = emt_train_frames[3].copy()
    atoms.calc = EMT()
    np.testing.assert_allclose(atoms.get_forces(), labels, atol=1e-10)


def test_training_without_validation_split_and_with_a_time_budget(emt_train_frames):
    frames = emt_train_frames[:6]
    no_val = train_ensemble(
        frames,
        TrainConfig(epochs=2, val_fraction=0, ensemble_size=1, progress=False),
        model_config=small_config(dtype="float64"),
        device="cpu",
    )
    assert no_val.n_val == 0 and no_val.val_force_baseline_mae is None
    assert len(no_val.metrics) == 2 and no_val.best.val_force_mae is None
    timed = train_ensemble(
        frames,
        TrainConfig(epochs=50, max_seconds=0.01, ensemble_size=2, progress=False),
        model_config=small_config(),
        device="cpu",
    )
    assert len(timed.metrics) == 1  # the budget ends training after the first step


def test_min_steps_raises_the_epochs_of_a_small_training_set(emt_train_frames):
    # 6 frames, no validation split, batch 4: 2 optimizer steps an epoch
    def epochs_run(frames, **settings):
        config = TrainConfig(epochs=3, val_fraction=0, batch_size=4, ensemble_size=1, progress=False, **settings)
        return len(train_ensemble(frames, config, model_config=small_config(), device="cpu").metrics)

    assert epochs_run(emt_train_frames[:6]) == 3
    assert epochs_run(emt_train_frames[:6], min_steps=14) == 7
    assert epochs_run(emt_train_frames[:24], min_steps=14) == 3  # 6 steps an epoch: the epochs already reach it


def test_early_stopping_and_the_best_epoch_wait_for_min_steps(emt_train_frames):
    # 8 frames, 2 of them validation, batch 4: 2 optimizer steps an epoch; patience 1 stops
    # at the first epoch whose validation loss does not improve, but not before 40 steps
    def run(**settings):
        config = TrainConfig(val_fraction=0.25, batch_size=4, patience=1, ensemble_size=1, progress=False, **settings)
        return train_ensemble(emt_train_frames[:8], config, model_config=small_config(), device="cpu")

    def epochs_run(**settings):
        return len(run(**settings).metrics)

    assert epochs_run(epochs=60) < 20  # without min_steps patience stops it before 40 steps
    assert epochs_run(epochs=1, min_steps=40) == 20
    assert 20 <= epochs_run(epochs=60, min_steps=40) < 60  # after the 40 steps patience stops it again
    # the weights kept have trained the 40 steps at least: the best epoch is not an earlier one
    assert run(epochs=1, min_steps=40).summary()["best_epoch"] == 20
    assert run(epochs=60, min_steps=40).summary()["best_epoch"] >= 20


@pytest.mark.gpu
def test_gpu_matches_cpu(trained, emt_test_frames):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    _, out = trained
    cpu = load_ensemble(out, device="cpu").evaluate(emt_test_frames[:4])
    gpu = load_ensemble(out, device="cuda").evaluate(emt_test_frames[:4])
    for a, b in zip(cpu, gpu):
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-5, abs=1e-4)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4)
        np.testing.assert_allclose(a["force_deviation"], b["force_deviation"], atol=1e-4)


@pytest.mark.mongo
def test_cli_trains_on_the_store(emt_train_frames, tmp_path, server_store, monkeypatch):
    from flows.commands.model import train
    from pipeline.store import add_frame, add_label

    for atoms in emt_train_frames[:12]:
        frame, _ = add_frame(atoms, source="test")
        add_label(frame, theory="emt", energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    app = typer.Typer()
    app.command("train")(train)
    app.command("noop")(lambda: None)  # two commands: typer keeps the "train" subcommand name
    monkeypatch.setenv("SELFPLAY_MONGODB_URI", server_store)
    model = tmp_path / "model"
    args = ["train", "--out", str(model), "--epochs", "1", "--ensemble", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--theory", "emt"])
    assert result.exit_code == 0, result.output
    import re

    counts = re.search(r"on (\d+) frames \((\d+) validation\)", result.output)
    assert counts and int(counts.group(1)) + int(counts.group(2)) == 12, result.output
    assert (model / "weights.safetensors").exists()
    result = CliRunner().invoke(app, [*args, "--theory", "dft-nothing"])
    assert result.exit_code != 0
    assert "the store holds no labelled frames at dft-nothing" in str(result.exception)
