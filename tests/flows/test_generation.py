"""Generations end to end, in-process, on the embedded store (real PySCF, real training)."""

import h5py
import numpy as np
import pytest

from flows.stages import generation_labelled_atoms, run_generation
from pipeline.documents import Failure, Frame, Generation, Label, ModelVersion
from pipeline.model_registry import fetch_model
from potential.evaluation import model_errors

from .helpers import random_only_config, tiny_config


@pytest.mark.slow
def test_three_generations_grow_the_dataset_and_the_model_learns(embedded_store, tmp_path):
    config = tiny_config(tmp_path)
    theory = config.dft.theory_key()

    cold = run_generation(config)
    assert cold.number == 0 and cold.status == "completed"
    assert "cold start" in cold.stages["train"]["result"]["skipped"]
    assert cold.model_version is None
    first_labels = Label.objects(generation=0, theory=theory).count()
    assert first_labels + Failure.objects(generation=0).count() == Frame.objects(generation=0).count() > 0

    one = run_generation(config)
    assert one.number == 1 and one.status == "completed"
    model_one = ModelVersion.objects.get(generation=1)
    assert one.model_version.id == model_one.id
    # generation 1 trained on exactly what generation 0 labelled
    assert model_one.trained_on["frames"] == first_labels
    assert one.stages["explore"]["result"]["scored"] == one.counts["explored"] > 0

    two = run_generation(config)
    assert two.number == 2 and two.status == "completed"
    model_two = ModelVersion.objects.get(generation=2)
    assert model_two.trained_on["warm_start"] == model_one.name
    assert model_two.trained_on["frames"] == Label.objects(theory=theory).count() - Label.objects(generation=2).count()

    # The ensemble trained on generation 1's labels predicts them better than the one that picked them.
    from potential.checkpoint import load_ensemble

    frames_one = generation_labelled_atoms(one, theory)
    assert frames_one
    before, _ = model_errors(load_ensemble(fetch_model(model_one, tmp_path / "cache")), frames_one)
    after, _ = model_errors(load_ensemble(fetch_model(model_two, tmp_path / "cache")), frames_one)
    assert after.force_mae < before.force_mae
    assert one.metrics["model"]["force_mae"] == pytest.approx(before.force_mae, rel=1e-5)

    # ledger, counts and the per-generation snapshot
    for record in (cold, one, two):
        record.reload()
        assert record.counts["labelled"] == Label.objects(generation=record.number).count()
        assert sum(row["labelled"] for row in record.ledger.values()) >= record.counts["labelled"]
        snapshot = record.stages["report"]["result"]["files"]["hdf5"]
        with h5py.File(snapshot) as f:
            assert f.attrs["n_frames"] == Label.objects(generation__lte=record.number).count()
    assert Generation.objects(status="completed").count() == 3
    # every label is unique per (frame, theory)
    assert Label.objects.count() == len({(label.frame_hash, label.theory) for label in Label.objects})


def test_rerunning_a_completed_stage_does_not_redo_it(embedded_store, tmp_path):
    from flows.stage_state import run_stage
    from flows.stages import start_generation as open_generation

    config = tiny_config(tmp_path)
    record = open_generation(config)
    calls = []
    run_stage(record, "train", lambda: calls.append(1) or {"done": 1})
    assert run_stage(record, "train", lambda: calls.append(2) or {"done": 2}) == {"done": 1}
    assert calls == [1]
    with pytest.raises(RuntimeError):
        run_stage(record, "explore", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    record.reload()
    assert record.status == "failed" and "boom" in record.error
    assert open_generation(config).number == record.number  # the failed one is resumed


def test_frame_archive_is_bit_exact():
    from ase.build import molecule

    from pipeline.frame_archive import pack_frames, unpack_frames

    frames = [molecule("H2O"), molecule("CH4")]
    frames[0].positions += np.pi * 1e-7
    frames[0].arrays["force_deviation"] = np.array([0.1, 0.2, 0.3])
    frames[0].info.update(sigma_f=0.3, provenance={"sampler": "x", "seed": 4}, descriptor=np.arange(5.0))
    back = unpack_frames(pack_frames(frames))
    assert np.array_equal(back[0].positions, frames[0].positions)
    assert np.array_equal(back[0].arrays["force_deviation"], frames[0].arrays["force_deviation"])
    assert back[0].info["provenance"] == {"sampler": "x", "seed": 4}
    assert np.array_equal(back[0].info["descriptor"], np.arange(5.0))
    assert "force_deviation" not in back[1].arrays and "descriptor" not in back[1].info


def test_a_select_stage_interrupted_after_storing_picks_the_same_frames_again(embedded_store, tmp_path):
    """The frames a crashed select stored are its own picks, not frames known from before."""
    from flows import stages

    config = random_only_config(tmp_path, count=6, max_atoms=4)
    record = stages.run_generation(config, stop_after="explore")
    stages.select_stage(stages.StageContext(config, record))  # stored, then the process died
    record.reload()
    first = (record.counts["selected"], sorted(f.hash for f in Frame.objects(generation=0)))
    assert first[0] > 0 and record.stages["select"]["status"] == "pending"

    record = stages.run_generation(config, number=0, labeller=lambda *_: iter(()))
    assert record.stages["select"]["status"] == "completed"
    assert (record.counts["selected"], sorted(f.hash for f in Frame.objects(generation=0))) == first
