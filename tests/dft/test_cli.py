"""``selfplay label`` as a function: files in, extended XYZ with labels out."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import typer
from ase import Atoms
from ase.units import Hartree
from typer.testing import CliRunner

from flows.commands.label import label
from pipeline.errors import DataFileError, InvalidStructure
from tests.dft.helpers import pyscf_reference, small_molecule


@pytest.fixture
def app():
    application = typer.Typer()
    application.command()(label)
    return application


@pytest.mark.slow
def test_label_writes_energies_forces_and_reports_failures(app, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the worker processes
    hydrogen = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    ase.io.write(tmp_path / "a.xyz", [hydrogen, small_molecule("LiH")])
    ase.io.write(tmp_path / "b.extxyz", small_molecule("HF"))
    out = tmp_path / "labels.extxyz"
    args = [str(tmp_path / "a.xyz"), str(tmp_path / "b.extxyz"), "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args + ["--time-limit", "300", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "labelled 3 of 3 frames" in result.output
    written = ase.io.read(out, index=":")
    assert len(written) == 3
    by_source = {atoms.info["source"]: atoms for atoms in written}
    h2 = by_source[f"{tmp_path / 'a.xyz'}:0"]
    e_ref, gradient_ref, _ = pyscf_reference(hydrogen)
    assert abs(h2.get_potential_energy() / Hartree - e_ref) < 1e-6
    assert h2.get_forces().shape == (2, 3) and np.isfinite(h2.get_forces()).all()
    assert h2.info["dft_theory_key"] and h2.info["dft_rung"] == "initial"

    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, DataFileError)  # no silent overwrite

    # A time limit no SCF can meet: the frame fails, the command says so and exits 1.
    failing = CliRunner().invoke(app, args[1:] + ["--overwrite", "--time-limit", "0.001"])
    assert failing.exit_code == 1
    assert "labelled 0 of 1 frames (1 timeout" in failing.output
    failures = json.loads((tmp_path / "labels.extxyz.failures.json").read_text())
    assert [f["kind"] for f in failures] == ["timeout"] and failures[0]["source"].endswith("b.extxyz:0")
    assert out.read_text() == ""


def test_bad_input_is_refused_before_any_scf(app, tmp_path):
    ase.io.write(tmp_path / "good.xyz", small_molecule("H2O"))
    ase.io.write(tmp_path / "bad.xyz", Atoms("CeH", positions=[[0, 0, 0], [0, 0, 2.1]]))
    out = tmp_path / "out.extxyz"
    result = CliRunner().invoke(app, [str(tmp_path / "good.xyz"), str(tmp_path / "bad.xyz"), "--out", str(out)])
    assert isinstance(result.exception, InvalidStructure)
    assert "bad.xyz:0" in str(result.exception) and "Ce" in str(result.exception)
    assert not out.exists()
    missing = CliRunner().invoke(app, [str(tmp_path / "nope.xyz"), "--out", str(out)])
    assert isinstance(missing.exception, DataFileError)
