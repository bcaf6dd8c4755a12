"""The electronic state of a label (spin moments, multiplicity, smeared) in the store and
in both export formats, bit for bit, and the smeared filter that keeps free energies out
of ground-state training sets."""

import ase.io
import numpy as np
import pytest
from ase import Atoms

from pipeline.errors import InvalidStructure
from pipeline.export import export_snapshot, iter_labelled, read_hdf5
from pipeline.store import add_frame, add_label


def _store_three():
    """An open-shell label with moments, a closed-shell one without, a smeared one."""
    rng = np.random.default_rng(3)
    o2 = Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.21]])
    h2o = Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.25]])
    metal = Atoms("Cu2", positions=[[0, 0, 0], [2.2, 0, 0]], cell=np.eye(3) * 6, pbc=True)
    moments = np.array([1.0 + 1e-13, np.nextafter(1.0, 0.0)])
    entries = [
        (o2, {"magmoms": moments, "multiplicity": 3}),
        (h2o, {}),
        (metal, {"magmoms": np.array([0.25, -0.25]), "multiplicity": 1, "smeared": True}),
    ]
    for atoms, state in entries:
        frame, _ = add_frame(atoms, source="test")
        stress = rng.normal(size=6) if atoms.pbc.all() else None
        add_label(
            frame,
            theory="t",
            energy=float(rng.normal()),
            forces=rng.normal(size=(len(atoms), 3)),
            stress=stress,
            **state,
        )
    return {atoms.get_chemical_formula(): state for atoms, state in entries}


def _by_formula(frames):
    return {atoms.get_chemical_formula(): atoms for atoms in frames}


def _check(frames, expected):
    for formula, state in expected.items():
        atoms = frames[formula]
        moments = atoms.calc.results.get("magmoms")
        if "magmoms" in state:
            assert np.array_equal(moments, state["magmoms"]), formula  # bit for bit
            assert atoms.info["multiplicity"] == state["multiplicity"]
        else:
            assert moments is None and "multiplicity" not in atoms.info
        assert bool(atoms.info["smeared"]) == state.get("smeared", False)


def test_state_round_trips_through_store_and_exports(store, tmp_path):
    expected = _store_three()
    _check(_by_formula(iter_labelled()), expected)
    export_snapshot(tmp_path / "s.h5")
    _check(_by_formula(read_hdf5(tmp_path / "s.h5")), expected)
    export_snapshot(tmp_path / "s.xyz", format="extxyz")
    plain = _by_formula(ase.io.read(tmp_path / "s.xyz", index=":"))  # plain ASE reads them too
    assert np.array_equal(plain["O2"].calc.results["magmoms"], expected["O2"]["magmoms"])
    assert plain["O2"].info["multiplicity"] == 3 and plain["Cu2"].info["smeared"] == True  # noqa: E712


def test_smeared_labels_can_be_kept_out(store):
    _store_three()
    assert sorted(a.get_chemical_formula() for a in iter_labelled(smeared=False)) == ["H2O", "O2"]
    assert [a.get_chemical_formula() for a in iter_labelled(smeared=True)] == ["Cu2"]
    assert len(list(iter_labelled())) == 3


def test_moments_must_fit_the_frame(store):
    frame, _ = add_frame(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), source="test")
    with pytest.raises(InvalidStructure, match="magnetic moments"):
        add_label(frame, theory="t", energy=0.0, forces=np.zeros((2, 3)), magmoms=[1.0])
    with pytest.raises(InvalidStructure, match="magnetic moments"):
        add_label(frame, theory="t", energy=0.0, forces=np.zeros((2, 3)), magmoms=[np.nan, 0.0])
