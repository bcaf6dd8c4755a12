"""The train stage's choice of starting weights (generation.warm_start), with fast collaborators."""

from __future__ import annotations

import pytest

from flows.stages import run_generation
from pipeline.documents import ModelVersion

from .test_probes import emt_labeller, fake_trainer, small_config


@pytest.mark.parametrize("warm_start", [True, False])
def test_each_generation_trains_from_the_last_model_unless_warm_start_is_off(store, tmp_path, warm_start):
    from flows.exploration import explore

    starts = []

    def recording_trainer(frames, training, out_dir, warm_start=None, **kwargs):
        starts.append(warm_start)
        return fake_trainer(frames, training, out_dir, **kwargs)

    config = small_config(tmp_path, generation={"warm_start": warm_start})
    collaborators = dict(
        trainer=recording_trainer,
        labeller=emt_labeller,
        explorer=lambda config, number, _model: explore(config, number, None),
        model_loader=lambda config, generation: None,
    )
    for _ in range(3):
        run_generation(config, **collaborators)
    # generation 0 is a cold start (nothing labelled), 1 has no earlier model, 2 has generation 1's
    assert len(starts) == 2 and starts[0] is None
    first, second = ModelVersion.objects.get(generation=1), ModelVersion.objects.get(generation=2)
    if warm_start:
        assert starts[1] is not None and (starts[1] / "model.json").exists()
        assert second.trained_on["warm_start"] == first.name
    else:
        assert starts[1] is None and second.trained_on["warm_start"] is None
