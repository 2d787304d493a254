"""The NVIDIA role's pure parts: its pin sets for the real manifests, the driver state parser
(what nvidia-smi, /proc and the kernel log say before and after a driver change), the module
reload, the default services."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from kiln.core.manifest import load_manifest
from kiln.core.parsing import ParseError
from kiln.roles.base.aptpins import PinError
from kiln.roles.nvidia import default_services
from kiln.roles.nvidia.facts import NvidiaDriverState
from kiln.roles.nvidia.operations import describe_running, reload_commands
from kiln.roles.nvidia.parsers import parse_driver_state
from kiln.roles.nvidia.pinsets import (
    driver_branch,
    driver_family,
    driver_version,
    nvidia_pin_sets,
    unclaimed_keys,
)

ROOT = Path(__file__).resolve().parents[4]
LAB = ROOT / "kiln/firmware/lab.yaml"
HGX = ROOT / "kiln/firmware/hgx-h100-sxm.yaml"

NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.")
OPEN_MODULE_LOG = ("[    9.650000] NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  "
                   "570.148.08  Release Build  (dvs-builder@U16-I1-N08-12-1)  Wed Apr 30 "
                   "09:23:52 UTC 2025")


def state_text(smi: list[str], exit_status: str, sysfs: str = "", proc: str = "",
               log: str = "") -> str:
    """What NvidiaDriverState's command prints, section by section."""
    lines = ["== sysfs", sysfs, "== proc", proc, "== kernel-log", log, "== nvidia-smi", *smi,
             f"== exit {exit_status}"]
    return "\n".join(lines) + "\n"


# --- pin sets -----------------------------------------------------------------------------------


def test_lab_pin_sets():
    sets = nvidia_pin_sets(load_manifest(LAB), "firmware/lab.yaml")
    assert [pin_set.name for pin_set in sets] == [
        "driver", "dcgm", "cuda", "nccl", "container-toolkit"]
    driver = sets[0]
    assert [pin.name for pin in driver.pins] == [
        "nvidia-driver-570-server-open", "nvidia-fabricmanager-570",
        "nvidia-compute-utils-570-server"]
    assert driver.pins[1].source == "packages.nvidia-fabricmanager"
    assert all(pin_set.scope == "nvidia" and pin_set.remove_replaced for pin_set in sets)
    assert unclaimed_keys(load_manifest(LAB)) == ["ofed"]


def test_production_pin_sets_pin_nscq_with_the_driver():
    manifest = load_manifest(HGX)
    sets = {pin_set.name: pin_set for pin_set in nvidia_pin_sets(manifest, "hgx")}
    assert [pin.name for pin in sets["driver"].pins] == [
        "nvidia-driver-570-server-open", "nvidia-fabricmanager-570",
        "nvidia-compute-utils-570-server", "libnvidia-nscq-570"]
    assert driver_version(manifest) == "570.148.08"
    assert unclaimed_keys(manifest) == ["ofed", "openmpi", "perftest"]


def test_fabric_manager_of_another_driver_version_is_refused(tmp_path):
    document = yaml.safe_load(LAB.read_text())
    document["packages"]["nvidia-fabricmanager"]["version"] = "570.124.06-1kilnlab1"
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(PinError, match=re.escape(
            f"{path}: packages.nvidia-fabricmanager: version 570.124.06-1kilnlab1 does not "
            "match the driver's 570.148.08")):
        nvidia_pin_sets(load_manifest(path), str(path))


@pytest.mark.parametrize("name", [
    "nvidia-driver-550-server-open", "libnvidia-compute-550-server", "nvidia-fabricmanager-550",
    "nvidia-utils-535-server", "libnvidia-nscq-550", "nvidia-kernel-common-535",
])
def test_driver_family_matches_other_branches(name):
    assert re.fullmatch(driver_family("570"), name)


@pytest.mark.parametrize("name", [
    "nvidia-driver-570-server-open", "nvidia-fabricmanager-570", "libnvidia-container1",
    "nvidia-container-toolkit", "libnvidia-container-tools", "nvidia-container-toolkit-base",
    "libnccl2", "datacenter-gpu-manager-4-core",
])
def test_driver_family_leaves_the_pinned_branch_and_other_packages(name):
    assert not re.fullmatch(driver_family("570"), name)
    assert driver_branch("570.148.08") == "570"


def test_default_services_follow_the_manifest():
    manifest = load_manifest(LAB)
    assert default_services(manifest) == [
        "nvidia-persistenced", "nvidia-fabricmanager", "nvidia-dcgm"]
    document = copy.deepcopy(manifest.model_dump())
    document["topology"]["gpu"]["nvswitch_count"] = 0
    del document["packages"]["nvidia-fabricmanager"]
    pcie = type(manifest).model_validate(document)
    assert default_services(pcie) == ["nvidia-persistenced", "nvidia-dcgm"]


# --- which driver runs --------------------------------------------------------------------------


def test_running_driver_answers_nvidia_smi():
    state = parse_driver_state(state_text(["570.148.08"] * 8, "0", log=OPEN_MODULE_LOG))
    assert state["running_version"] == "570.148.08"
    assert state["module"] == {"loaded": True, "version": "570.148.08", "source": "nvidia-smi"}
    assert state["nvidia_smi"]["status"] == "ok" and len(state["nvidia_smi"]["versions"]) == 8


def test_after_a_driver_change_the_old_module_still_runs():
    smi = ["Failed to initialize NVML: Driver/library version mismatch",
           "NVML library version: 550.144.03"]
    state = parse_driver_state(state_text(smi, "18", log=OPEN_MODULE_LOG))
    assert state["nvidia_smi"]["status"] == "mismatch"
    assert state["nvidia_smi"]["library_version"] == "550.144.03"
    assert state["module"] == {"loaded": True, "version": "570.148.08", "source": "kernel-log"}
    assert describe_running(state) == (
        "module 570.148.08; nvidia-smi: Failed to initialize NVML: Driver/library version "
        "mismatch")


def test_no_module_loaded_even_when_the_log_remembers_one():
    state = parse_driver_state(state_text([NO_DRIVER], "9", log=OPEN_MODULE_LOG))
    assert state["running_version"] is None
    assert state["module"]["loaded"] is False
    assert state["nvidia_smi"]["status"] == "no-driver"
    assert describe_running(state).startswith("no module loaded; nvidia-smi: NVIDIA-SMI has")


def test_sysfs_and_proc_name_the_module_on_real_hardware():
    proc = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.161.08  Tue Feb 27 23:06:13 "
            "UTC 2024")
    mismatch = ["Failed to initialize NVML: Driver/library version mismatch"]
    state = parse_driver_state(state_text(mismatch, "18", proc=proc))
    assert state["module"] == {"loaded": True, "version": "535.161.08", "source": "proc"}
    state = parse_driver_state(state_text(mismatch, "18", sysfs="570.148.08", proc=proc))
    assert state["module"]["source"] == "sysfs" and state["running_version"] == "570.148.08"


def test_no_nvidia_smi_installed():
    state = parse_driver_state(state_text([], "missing"))
    assert state["nvidia_smi"]["status"] == "missing"
    assert state["running_version"] is None


def test_driver_state_fact_parses_its_own_sections():
    assert NvidiaDriverState().process(state_text(["570.148.08"], "0").splitlines())[
        "running_version"] == "570.148.08"
    command = NvidiaDriverState().command()
    for section in ("== sysfs", "== proc", "== kernel-log", "== nvidia-smi", "== exit"):
        assert section in command
    with pytest.raises(ParseError, match="sections missing"):
        parse_driver_state("== sysfs\n")
    with pytest.raises(ParseError, match="outside a '== section' block"):
        parse_driver_state("hello\n")


# --- reload -------------------------------------------------------------------------------------


def test_reload_unloads_users_first_and_loads_them_back():
    loaded = ["nvidia_uvm", "nvidia_peermem", "nvidia_modeset", "nvidia_drm", "nvidia"]
    services = ["nvidia-persistenced", "nvidia-fabricmanager", "nvidia-dcgm"]
    assert reload_commands(loaded, services) == [
        "systemctl stop nvidia-persistenced nvidia-fabricmanager nvidia-dcgm",
        "modprobe -r nvidia_peermem nvidia_uvm nvidia_drm nvidia_modeset nvidia",
        "modprobe nvidia", "modprobe nvidia_modeset", "modprobe nvidia_drm",
        "modprobe nvidia_uvm", "modprobe nvidia_peermem",
        "systemctl start nvidia-persistenced nvidia-fabricmanager nvidia-dcgm",
    ]


def test_reload_with_nothing_loaded_just_loads():
    assert reload_commands([], []) == ["modprobe nvidia"]


# --- the node's manifest: a site's firmware directory --------------------------------------------


def test_the_deploy_pins_the_packages_of_the_site_manifest(tmp_path, monkeypatch):
    from site_manifests import Recorder, deploy_state, site_firmware_dir

    import kiln.roles.nvidia as nvidia_role

    def change(document: dict) -> None:
        document["packages"]["cuda-toolkit"]["version"] = "12.8.1-1site1"

    site = site_firmware_dir(tmp_path, change)
    recorder = Recorder()
    monkeypatch.setattr(nvidia_role, "operations", recorder)
    monkeypatch.setattr(nvidia_role, "base_operations", recorder)
    deploy_state(nvidia_role.nvidia, {"kiln_node": "gpu-001", "kiln_sku": "lab",
                                      "kiln_firmware_dir": str(site)}, "gpu-001")
    (pinned,) = recorder.called("pinned_packages")
    assert pinned["manifest"] == str(site / "lab.yaml")
    versions = {pin.name: pin.version for pin_set in pinned["sets"] for pin in pin_set.pins}
    assert versions["cuda-toolkit-12-8"] == "12.8.1-1site1"
    assert recorder.called("driver_running")[0]["version"] == "570.148.08"
