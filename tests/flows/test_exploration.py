"""The explore stage's samplers as the configuration enables them: relaxation with the
model, and melt/quench from the model's basins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_ensemble():
    from potential import ModelConfig, build_ensemble

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ModelConfig(
        scalar_channels=8, vector_channels=4, tensor_channels=2, layers=1, radial_basis=4, radial_hidden=8,
        readout_hidden=8, cutoff=3.5,
    )  # fmt: skip
    yield build_ensemble(config, 2, 0, device="cpu")
    torch.set_num_threads(threads)


def relax_config(workdir, **melt_quench):
    from flows.config import load_config

    clusters = {"kind": "cluster", "min_atoms": 3, "max_atoms": 5, "max_species": 2}
    return load_config(
        workdir=workdir,
        elements=["H", "O"],
        explore={
            "random": {"count": 2, "params": clusters},
            "substitution": {"enabled": False},
            "relax": {"enabled": True, "count": 3, "from_database": 0.0, "start": clusters,
                      "params": {"max_steps": 30, "frame_interval": 10, "hi": None}},
            "melt_quench": {"trajectories": 2, "from_database": 0.0, "start": clusters,
                            "params": {"heat_steps": 4, "hold_steps": 4, "cool_steps": 4, "frame_interval": 4,
                                       "hi": None}, **melt_quench},
        },
        generation={"export_hdf5": False, "write_report": False},
    )  # fmt: skip


def test_relax_sampler_keeps_the_path_and_reports_its_stops(embedded_store, tmp_path, tiny_ensemble):
    from flows.exploration import explore

    config = relax_config(tmp_path)
    frames, report = explore(config, 1, tiny_ensemble)
    relaxed = [f for f in frames if f.info["provenance"]["sampler"] == "relax"]
    assert report["relax"]["relaxations"] == 3
    assert sum(report["relax"]["stop_reasons"].values()) == 3
    assert report["relax"]["frames"] == len(relaxed) >= 3
    # every relaxation's frames start at step 0 and are scored by the ensemble
    assert sorted({f.info["provenance"]["trajectory"] for f in relaxed}) == [0, 1, 2]
    assert all(np.isfinite(f.info["sigma_f"]) for f in relaxed)
    # the melt/quench report counts stops too (it used to count none)
    assert sum(report["melt_quench"]["stop_reasons"].values()) == 2
    # the same seed gives the same frames
    again, _ = explore(config, 1, tiny_ensemble)
    assert len(again) == len(frames)
    for a, b in zip(frames, again):
        np.testing.assert_allclose(a.positions, b.positions)


def test_cold_start_skips_the_model_driven_samplers(embedded_store, tmp_path):
    from flows.exploration import explore

    frames, report = explore(relax_config(tmp_path), 0, None)
    assert report["relax"] == {"skipped": "no model yet (cold start)"}
    assert {f.info["provenance"]["sampler"] for f in frames} == {"random"}


def test_melt_quench_from_relaxed_starts_begins_in_the_model_basin(embedded_store, tmp_path, tiny_ensemble):
    from flows.exploration import explore
    from samplers.model import score_frames

    plain, _ = explore(relax_config(tmp_path), 1, tiny_ensemble)
    relaxed, _ = explore(relax_config(tmp_path, relax_starts=200), 1, tiny_ensemble)

    def first_frames(frames):
        return [
            f for f in frames if f.info["provenance"]["sampler"] == "melt-quench" and f.info["provenance"]["step"] == 0
        ]

    def largest_force(frames):
        return [float(np.linalg.norm(r["forces"], axis=1).max()) for r in score_frames(tiny_ensemble, frames)]

    starts_plain, starts_relaxed = first_frames(plain), first_frames(relaxed)
    assert len(starts_plain) == len(starts_relaxed) == 2
    # the same drawn structures, relaxed by the model first: the model's forces there are far smaller
    for drawn, start in zip(starts_plain, starts_relaxed):
        assert drawn.get_chemical_formula() == start.get_chemical_formula()
    # (fmax 0.05 eV/Å, the relaxation's default: a start already below it is not moved)
    assert max(largest_force(starts_relaxed)) < 0.05
    assert max(largest_force(starts_plain)) > 0.05
    for drawn, start in zip(starts_plain, starts_relaxed):
        assert start.info["model_energy"] <= drawn.info["model_energy"] + 1e-9


def test_relax_settings_are_validated_at_the_edge(tmp_path):
    from flows.config import load_config

    with pytest.raises(ConfigError, match="fmax"):
        load_config(workdir=tmp_path, explore={"relax": {"enabled": True, "params": {"fmax": -1}}})
    with pytest.raises(ConfigError, match="relax_starts"):
        load_config(workdir=tmp_path, explore={"melt_quench": {"relax_starts": -3}})
    # relaxation alone is something to explore
    config = load_config(
        workdir=tmp_path,
        explore={"random": {"enabled": False}, "melt_quench": {"enabled": False},
                 "substitution": {"enabled": False}, "relax": {"enabled": True}},
    )  # fmt: skip
    assert config.explore.relax.count == 8


def _store_molecules(source: str, count: int, offset: float) -> set[str]:
    """``count`` labelled H2O frames of ``source`` (distinct geometries), their hashes."""
    from ase.build import molecule

    from pipeline.store import add_frame, add_label

    hashes = set()
    for i in range(count):
        atoms = molecule("H2O")
        atoms.positions[0, 2] += offset + 0.01 * i
        frame, _ = add_frame(atoms, source=source)
        add_label(frame, theory="t", energy=-1.0, forces=np.zeros((3, 3)))
        hashes.add(frame.hash)
    return hashes


def test_stored_starts_come_first_from_the_imported_frames_when_asked(embedded_store):
    from flows.exploration import database_structures

    imported = _store_molecules("import", 4, 0.0)
    explored = _store_molecules("melt-quench", 12, 0.5)
    for seed in range(5):
        parents = [a.info["parent"] for a in database_structures(6, np.random.default_rng(seed), ["H", "O"], 0.5)]
        assert len(parents) == len(set(parents)) == 6
        assert set(parents[:3]) <= imported  # round(0.5 * 6) imported first
        assert set(parents[3:]) <= (imported | explored) - set(parents[:3])
        # more asked of the imported frames than there are: all of them, the rest from the others
        everything = [a.info["parent"] for a in database_structures(8, np.random.default_rng(seed), ["H", "O"], 1.0)]
        assert set(everything[:4]) == imported and set(everything[4:]) <= explored and len(everything) == 8
    # off (the default): the draw is the plain one over every labelled frame, as before the option
    plain = database_structures(6, np.random.default_rng(3), ["H", "O"])
    again = database_structures(6, np.random.default_rng(3), ["H", "O"], 0.0)
    assert [a.info["parent"] for a in plain] == [a.info["parent"] for a in again]
    hashes = sorted(imported | explored)
    expected = [hashes[i] for i in np.random.default_rng(3).choice(len(hashes), size=6, replace=False)]
    assert [a.info["parent"] for a in plain] == expected


def test_from_imported_is_validated_at_the_edge(tmp_path):
    from flows.config import load_config

    assert load_config(workdir=tmp_path).explore.melt_quench.from_imported == 0.0
    with pytest.raises(ConfigError, match="from_imported"):
        load_config(workdir=tmp_path, explore={"melt_quench": {"from_imported": 1.5}})
