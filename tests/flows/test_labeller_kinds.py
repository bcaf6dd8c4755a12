"""Whole generations labelled by the xtb and ase kinds, on the embedded store and a server."""

from __future__ import annotations

import numpy as np
import pytest

from flows.stages import run_generation
from pipeline.documents import Frame, Generation, Label, ModelVersion

from .helpers import tiny_config_file

pytestmark = pytest.mark.slow


def reference(backend: str, atoms):
    """The code itself on one frame: (energy, forces)."""
    if backend == "xtb":
        from tests.dft.helpers import tblite_reference

        energy, forces, _ = tblite_reference(atoms)
        return energy, forces
    from ase.calculators.emt import EMT

    frame = atoms.copy()
    frame.calc = EMT()
    return frame.get_potential_energy(), frame.get_forces()


@pytest.mark.parametrize("backend", ["xtb", "ase"])
def test_two_generations_with_another_labeller(store, tmp_path, backend):
    if backend == "xtb":
        pytest.importorskip("tblite")
    from flows.config import load_config

    config = load_config(tiny_config_file(tmp_path, backend), workdir=tmp_path / "out")
    assert config.dft.backend == backend
    theory = config.dft.theory_key()

    cold = run_generation(config)
    trained = run_generation(config)
    for record in (cold, trained):
        assert record.status == "completed"
        assert all(record.stages[s]["status"] == "completed" for s in ("train", "explore", "select", "label", "report"))
    first = Label.objects(generation=0).count()
    assert first > 0 and Label.objects(theory__ne=theory).count() == 0
    model = ModelVersion.objects.get(generation=1)
    assert model.trained_on["frames"] == first  # trained on what this kind labelled
    assert trained.metrics["model"]["frames"] > 0  # the report scored the model on the new labels
    assert Generation.objects.get(number=1).counts["labelled"] == Label.objects(generation=1).count()

    for label in Label.objects(theory=theory).limit(4):
        atoms = Frame.objects.get(hash=label.frame_hash).to_atoms()
        energy, forces = reference(backend, atoms)
        assert label.energy == pytest.approx(energy, abs=1e-6)
        np.testing.assert_allclose(label.forces_array, forces, atol=1e-6)
        assert label.info["theory_key"] == theory
