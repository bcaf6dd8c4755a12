"""DFTSettings: validation, the level-of-theory key and spec (no SCF)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from dft.settings import DFTSettings
from pipeline.errors import ConfigError


def test_defaults_are_pbe_def2_svp_with_ecp_and_gth_for_cells():
    settings = DFTSettings()
    spec = settings.theory_spec()
    assert spec["functional"] == "pbe"
    assert spec["molecule"]["basis"] == "def2-svp"
    assert spec["molecule"]["ecp"] == "def2-svp"  # 'auto' resolves to the def2 ECP
    assert spec["periodic"]["basis"] == "gth-dzvp-molopt-sr"
    assert spec["periodic"]["pseudo"] == "gth-pbe"
    json.dumps(spec)  # JSON-ready


def test_theory_key_ignores_execution_settings_but_not_theory():
    base = DFTSettings()
    same = DFTSettings(device="cpu", time_limit=5, max_cycle=7, threads=1, max_memory_mb=1000, functional="pbe")
    assert base.theory_key() == same.theory_key()
    for changed in (
        DFTSettings(functional="r2SCAN"),
        DFTSettings(basis="def2-TZVP"),
        DFTSettings(density_fit=False),
        DFTSettings(grids_level=4),
        DFTSettings(conv_tol=1e-10),
        DFTSettings(charge=1),
        DFTSettings(spin_policy="high"),
        DFTSettings(smearing_sigma=0.2),
        DFTSettings(kpts=(2, 2, 2)),
        DFTSettings(pbc_basis="gth-szv"),
    ):
        assert changed.theory_key() != base.theory_key()
    # Without smearing anywhere in the ladder the smearing width no longer matters.
    no_smear = DFTSettings(ladder=("damping", "newton"))
    assert DFTSettings(ladder=("damping", "newton"), smearing_sigma=0.3).theory_key() == no_smear.theory_key()


def test_theory_key_is_stable_across_processes():
    code = "from dft.settings import DFTSettings; print(DFTSettings(basis='def2-TZVP').theory_key())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    key = DFTSettings(basis="def2-TZVP").theory_key()
    assert other == key
    assert len(key) == 16 and int(key, 16) >= 0


def test_unknown_field_and_bad_values_are_refused():
    with pytest.raises(ValidationError):
        DFTSettings(functionl="PBE")
    with pytest.raises(ValidationError):
        DFTSettings(device="tpu")
    with pytest.raises(ValidationError):
        DFTSettings(ladder=("newton", "newton"))
    with pytest.raises(ValidationError):
        DFTSettings(kpts=(0, 1, 1))


def test_ecp_resolution():
    assert DFTSettings(basis="def2-TZVP").ecp_name == "def2-TZVP"
    assert DFTSettings(basis="cc-pVDZ").ecp_name is None
    assert DFTSettings(ecp="none").ecp_name is None
    assert DFTSettings(basis="cc-pVDZ", ecp="def2-svp").ecp_name == "def2-svp"


def test_unknown_functional_is_a_config_error():
    DFTSettings(functional="b3lyp").check()
    with pytest.raises(ConfigError, match="no-such-functional"):
        DFTSettings(functional="no-such-functional").check()
