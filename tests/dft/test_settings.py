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


def test_default_theory_key_is_pinned():
    """Existing labels are stored under this key: a change of the default level of theory
    (or of how the spec is written) must be deliberate, with THEORY_SPEC_VERSION bumped."""
    assert DFTSettings().theory_key() == "98e70191ae604792"
    # the search that abandons hopeless candidates is search version 2; without the margin
    # it is version 1, whose labels keep the key they were stored under
    assert DFTSettings(spin_abandon_ev=None).theory_key() == "9dcaeec9d1928d7c"
    assert DFTSettings(spin_abandon_ev=0.5).theory_key() != DFTSettings().theory_key()


def test_periodic_cpu_knobs_enter_the_key_and_are_validated():
    """The fields benchmarks/bench_periodic.py varies (dft/README.md, "Periodic cells on a
    CPU") each change the key; out-of-range values are refused."""
    base = DFTSettings()
    cpu = DFTSettings(pbc_basis="gth-szv", kpts=(2, 2, 2), pbc_ke_cutoff=40, pbc_precision=1e-6)
    keys = {
        base.theory_key(),
        cpu.theory_key(),
        DFTSettings(pbc_ke_cutoff=40).theory_key(),
        DFTSettings(pbc_precision=1e-6).theory_key(),
        DFTSettings(kpoint_density=0).theory_key(),
        DFTSettings(pbc_pseudo="gth-pade", functional="lda,vwn").theory_key(),
    }
    assert len(keys) == 6
    spec = cpu.theory_spec()["periodic"]
    assert spec["ke_cutoff"] == 40 and spec["precision"] == 1e-6 and spec["kpts"] == [2, 2, 2]
    assert spec["kpoint_density"] is None  # an explicit mesh replaces the density
    for bad in ({"pbc_ke_cutoff": 0}, {"pbc_precision": 1e-2}, {"kpoint_density": -1}, {"kpts": (2, 0, 2)}):
        with pytest.raises(ValidationError):
            DFTSettings(**bad)
