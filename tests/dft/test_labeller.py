"""The labeller protocol: settings of any kind from a config, one runner, one CLI."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import typer
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from typer.testing import CliRunner

from dft import ASESettings, DFTResult, DFTSettings, XTBSettings, label_frames, single_point
from dft.labeller import labeller_settings
from flows.commands.label import label
from pipeline.errors import ConfigError

EMT_PATH = "ase.calculators.emt:EMT"
FILE_WRITING_EMT = "tests.dft.ase_test_calculators:EMTProgram"


def copper_cell() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True)
    atoms.rattle(0.05, seed=4)
    return atoms


def test_settings_of_each_kind_from_a_mapping():
    assert labeller_settings({}) == DFTSettings()  # no backend: PySCF, as every older config
    assert labeller_settings({"basis": "sto-3g"}).theory_key() == DFTSettings(basis="sto-3g").theory_key()
    assert labeller_settings({"backend": "xtb", "method": "gfn1"}) == XTBSettings(method="GFN1-xTB")
    ase_kind = labeller_settings({"backend": "ase", "calculator": EMT_PATH, "theory": "EMT"})
    assert isinstance(ase_kind, ASESettings)
    with pytest.raises(ConfigError, match=r"^dft: backend must be one of pyscf, xtb, ase$"):
        labeller_settings({"backend": "vasp"})
    with pytest.raises(ConfigError, match=r"^dft\.xtb\.basis: unknown field$"):
        labeller_settings({"backend": "xtb", "basis": "def2-SVP"})


def test_pyscf_keys_do_not_see_the_protocol_fields():
    spec = DFTSettings().theory_spec()
    assert "backend" not in json.dumps(spec) and "dispersion" not in spec
    assert DFTSettings(backend="pyscf").theory_key() == DFTSettings().theory_key()
    assert DFTSettings(time_limit=5, threads=2, device="cpu").theory_key() == DFTSettings().theory_key()
    # Each kind has its own key space.
    keys = {
        DFTSettings().theory_key(),
        XTBSettings().theory_key(),
        ASESettings(calculator=EMT_PATH, theory="EMT").theory_key(),
    }
    assert len(keys) == 3


def test_the_generation_config_takes_any_kind(tmp_path, monkeypatch):
    from flows.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("dft: {backend: xtb, method: GFN1-xTB, electronic_temperature: 500}\n")
    config = load_config(path)
    assert config.dft == XTBSettings(method="GFN1-xTB", electronic_temperature=500)
    monkeypatch.setenv("SELFPLAY_DFT__METHOD", "GFN2-xTB")
    assert load_config(path).dft.method == "GFN2-xTB"
    monkeypatch.delenv("SELFPLAY_DFT__METHOD")
    path.write_text("dft: {basis: sto-3g}\n")
    assert load_config(path).dft == DFTSettings(basis="sto-3g")
    path.write_text("dft: {backend: xtb, method: GFN7}\n")
    with pytest.raises(ConfigError, match="dft.xtb.method.*unknown xTB method 'GFN7'"):
        load_config(path)


def test_kinds_run_through_the_same_batch_with_workdirs_for_those_that_write_files(tmp_path):
    from pipeline.hashing import frame_hash

    other = copper_cell()
    other.positions[0] += 0.05
    frames = [copper_cell(), copper_cell(), other]  # a frame given twice still gets two folders
    settings = ASESettings(calculator=FILE_WRITING_EMT, theory="EMT", keep_directories="always", time_limit=60)
    outcomes = dict(label_frames(frames, settings, workers=2, progress=False, workdir=tmp_path))
    base = tmp_path / settings.theory_key()
    folders = [
        base / frame_hash(frames[0])[:16],
        base / (frame_hash(frames[0])[:16] + "-2"),
        base / frame_hash(other)[:16],
    ]
    for index, (atoms, folder) in enumerate(zip(frames, folders)):
        result = outcomes[index]
        assert isinstance(result, DFTResult), getattr(result, "reason", None)
        assert result.info["directory"] == str(folder.resolve()) and (folder / "results.json").is_file()
        reference = atoms.copy()
        reference.calc = EMT()
        assert result.energy == pytest.approx(reference.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(result.stress, reference.get_stress(), atol=1e-10)
    # EMT in process writes nothing: no folder at all.
    in_process = ASESettings(calculator=EMT_PATH, theory="EMT", time_limit=60)
    assert single_point(copper_cell(), in_process, workdir=tmp_path / "none").ok
    assert not (tmp_path / "none").exists()


def test_dispersion_is_added_by_the_protocol_in_the_worker():
    pytest.importorskip("dftd3")
    from dft.dispersion import dispersion_terms

    atoms = copper_cell()
    settings = ASESettings(
        calculator=EMT_PATH, theory="EMT", dispersion="d3bj", dispersion_functional="pbe", time_limit=60
    )
    plain = single_point(atoms, ASESettings(calculator=EMT_PATH, theory="EMT", time_limit=60))
    corrected = single_point(atoms, settings)  # a worker process: label_in_process there
    terms = dispersion_terms(atoms, "d3bj", "pbe")
    assert corrected.energy == pytest.approx(plain.energy + terms.energy, abs=1e-10)
    np.testing.assert_allclose(corrected.forces, plain.forces + terms.forces, atol=1e-10)
    np.testing.assert_allclose(corrected.stress, plain.stress + terms.stress, atol=1e-10)
    assert corrected.theory_key == settings.theory_key() != plain.theory_key


# --- selfplay label ----------------------------------------------------------------------------


@pytest.fixture
def app():
    application = typer.Typer()
    application.command()(label)
    return application


def test_label_with_xtb_writes_tblite_numbers(app, tmp_path, monkeypatch):
    pytest.importorskip("tblite")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the worker processes
    water = molecule("H2O")
    water.rattle(0.03, seed=1)
    ase.io.write(tmp_path / "in.xyz", [water, copper_cell()])
    out = tmp_path / "labels.extxyz"
    args = [str(tmp_path / "in.xyz"), "--out", str(out), "--backend", "xtb", "--method", "GFN1-xTB"]
    result = CliRunner().invoke(app, args + ["--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "labelled 2 of 2 frames" in result.output and XTBSettings(method="GFN1-xTB").theory_key() in result.output
    written = {atoms.info["source"]: atoms for atoms in ase.io.read(out, index=":")}
    settings = XTBSettings(method="GFN1-xTB", threads=1)
    for index, frame in enumerate((water, copper_cell())):
        direct = single_point(frame, settings, isolate=False)
        labelled = written[f"{tmp_path / 'in.xyz'}:{index}"]
        assert labelled.get_potential_energy() == pytest.approx(direct.energy, abs=1e-6)
        np.testing.assert_allclose(labelled.get_forces(), direct.forces, atol=1e-6)
        assert labelled.info["dft_method"] == "GFN1-xTB"
    np.testing.assert_allclose(written[f"{tmp_path / 'in.xyz'}:1"].get_stress(), direct.stress, atol=1e-8)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--backend", "xtb", "--method", "GFN3"], "--method: unknown xTB method 'GFN3'"),
        (["--backend", "xtb", "--basis", "sto-3g"], "--basis does not apply to --backend xtb"),
        (["--backend", "ase", "--calculator", "no_such_module:Calc", "--theory", "x"], "does not import"),
        (["--backend", "ase", "--calculator", EMT_PATH], "needs a theory name"),
        (
            ["--backend", "ase", "--calculator", EMT_PATH, "--theory", "EMT", "--calculator-kwargs", '{"asap": 1}'],
            "unknown kwargs asap",
        ),
        (
            ["--backend", "ase", "--calculator", EMT_PATH, "--theory", "EMT", "--calculator-kwargs", "[1]"],
            "JSON object",
        ),
        (["--backend", "gaussian"], "--backend must be one of pyscf, xtb, ase"),
        (["--backend", "xtb", "--dispersion", "d4"], "count it twice"),
    ],
)
def test_bad_settings_stop_before_any_work_with_one_line(app, tmp_path, options, message):
    ase.io.write(tmp_path / "in.xyz", molecule("H2O"))
    out = tmp_path / "out.extxyz"
    result = CliRunner().invoke(app, [str(tmp_path / "in.xyz"), "--out", str(out), *options])
    assert isinstance(result.exception, ConfigError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()


def test_calculators_that_time_out_are_listed_in_the_failures(app, tmp_path):
    ase.io.write(tmp_path / "in.xyz", [copper_cell(), Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])])
    out = tmp_path / "out.extxyz"
    options = ["--backend", "ase", "--calculator", "tests.dft.ase_test_calculators:SlowEMT", "--theory", "EMT"]
    result = CliRunner().invoke(
        app, [str(tmp_path / "in.xyz"), "--out", str(out), *options, "--calculator-kwargs", '{"seconds": 0}']
    )
    assert result.exit_code == 0, result.output
    slow = CliRunner().invoke(
        app,
        [str(tmp_path / "in.xyz"), "--out", str(out), "--overwrite", *options, "--time-limit", "1"],
    )
    assert slow.exit_code == 1 and "labelled 0 of 2 frames (2 timeout" in slow.output
    failures = json.loads((tmp_path / "out.extxyz.failures.json").read_text())
    assert [f["kind"] for f in failures] == ["timeout", "timeout"]
