"""The OFED pin set: which manifest packages the fabric role pins, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kiln.core.errors import ValidationFailed
from kiln.core.manifest import load_manifest
from kiln.roles.infiniband.pinsets import SCOPE, ofed_keys, ofed_pin_sets
from kiln.roles.nvidia.pinsets import nvidia_keys

ROOT = Path(__file__).resolve().parents[4]
LAB = ROOT / "kiln" / "firmware" / "lab.yaml"
HGX = ROOT / "kiln" / "firmware" / "hgx-h100-sxm.yaml"


def test_lab_pins_doca_ofed_in_its_own_preferences_file():
    [pin_set] = ofed_pin_sets(load_manifest(LAB), "firmware/lab.yaml")
    assert pin_set.path == "/etc/apt/preferences.d/kiln-ofed-ofed.pref"
    assert [(pin.name, pin.version, pin.source) for pin in pin_set.pins] == [
        ("doca-ofed", "2.9.1-1kilnlab1", "packages.ofed"),
    ]


def test_production_perftest_moves_with_the_ofed_release():
    [pin_set] = ofed_pin_sets(load_manifest(HGX), "hgx")
    assert {pin.name: pin.version for pin in pin_set.pins} == {
        "doca-ofed": "2.9.1-0.4.1",
        "perftest": "24.10.0-0.65.g9093bae.2410080",
    }


def test_no_package_is_pinned_by_both_roles():
    assert set(ofed_keys()).isdisjoint(nvidia_keys())
    assert SCOPE != "nvidia"


def test_a_gpu_sku_without_ofed_is_refused_when_the_manifest_loads(tmp_path):
    # The manifest refuses it before any role runs; the pin set never sees such a manifest.
    document = yaml.safe_load(LAB.read_text())
    del document["packages"]["ofed"]
    path = tmp_path / "no-ofed.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValidationFailed, match=rf"{path}: .*missing packages: ofed"):
        load_manifest(path)


def test_the_deploy_pins_the_ofed_of_the_site_manifest(tmp_path, monkeypatch):
    from site_manifests import Recorder, deploy_state, site_firmware_dir

    import kiln.roles.infiniband as infiniband_role

    def change(document: dict) -> None:
        document["packages"]["ofed"]["version"] = "2.9.1-1site1"

    site = site_firmware_dir(tmp_path, change)
    recorder = Recorder()
    monkeypatch.setattr(infiniband_role, "base_operations", recorder)
    deploy_state(infiniband_role.ofed, {"kiln_node": "gpu-001", "kiln_sku": "lab",
                                        "kiln_firmware_dir": str(site)}, "gpu-001")
    (pinned,) = recorder.called("pinned_packages")
    assert pinned["manifest"] == str(site / "lab.yaml")
    assert [(pin.name, pin.version) for pin_set in pinned["sets"] for pin in pin_set.pins] == [
        ("doca-ofed", "2.9.1-1site1")]
