"""The lab's Redfish systems driver (a sushy-tools fake-driver subclass): power mapping, boot
override, firmware versions, image checking, BIOS setup. The lab's power calls are a recorder; the
hardware profile, flash spool and boot-time activation are the lab's real ones."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest
import yaml
from sushy_tools import error

from kiln.lab.bmc import bios, firmware
from kiln.lab.bmc.redfish_driver import LabSystemsDriver, lab_system
from kiln.lab.firmware_blobs import blob_bytes
from kiln.lab.hwsim.lab_hooks import on_node_boot, prepare_node_hardware
from kiln.lab.hwsim.profile import (
    BIOS_ATTRIBUTES,
    FIRMWARE,
    OLD_FIRMWARE,
    read_json,
    write_json,
)

NODE = "gpu-001"


class PowerRecorder:
    """Stands in for lab.cluster at the lab boundary: records calls, keeps a power state."""

    def __init__(self, state: str = "off") -> None:
        self.state = state
        self.calls: list[tuple] = []

    def power_state(self, name: str) -> str:
        return self.state

    def power_on(self, name: str, boot: str = "disk", wait: bool = False) -> None:
        self.calls.append(("on", name, boot, wait))
        self.state = "on"

    def power_off(self, name: str) -> None:
        self.calls.append(("off", name))
        self.state = "off"

    def power_cycle(self, name: str, boot: str = "disk", wait: bool = False) -> None:
        self.calls.append(("cycle", name, boot, wait))
        self.state = "on"


@pytest.fixture
def lab(tmp_path):
    prepare_node_hardware(tmp_path, NODE, 1, "gpu", None)
    return tmp_path


@pytest.fixture
def power():
    return PowerRecorder()


@pytest.fixture
def driver(lab, power):
    config = {
        "SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, NODE, "10.231.0.11")],
        "SUSHY_EMULATOR_STATE_DIR": str(lab / "bmc-state"),
    }
    return LabSystemsDriver(config, logging.getLogger("test"), lab, NODE, power)


@pytest.fixture
def system(driver):
    return driver.systems[0]


def reboot_node(lab):
    """What the lab does when the node boots: activate the flash spool (lab_hooks)."""
    rootfs = lab / "rootfs"
    rootfs.mkdir(exist_ok=True)
    on_node_boot(lab, NODE, rootfs)


# -- the system -----------------------------------------------------------------------


def test_one_system_named_after_the_node_with_a_stable_uuid(lab, driver, system):
    assert driver.name(system) == NODE
    assert driver.uuid(NODE) == system
    again = lab_system(lab, NODE, "10.231.0.11")["uuid"]
    assert again == system
    other = lab / "other"
    prepare_node_hardware(other, "gpu-002", 2, "gpu", None)
    assert lab_system(other, "gpu-002", "10.231.0.12")["uuid"] != system


def test_nic_is_the_profiles_management_nic(lab, driver, system):
    mac = read_json(lab / "hw" / NODE / "profile.json")["mgmt_nic"]["mac"]
    assert driver.get_nics(system) == [{"id": mac, "mac": mac}]


def test_unknown_system_is_not_found(driver):
    with pytest.raises(error.NotFound):
        driver.get_power_state("no-such-system")


def test_missing_profile_is_named(tmp_path):
    with pytest.raises(firmware.FirmwareError, match="gpu-009: no hardware profile"):
        lab_system(tmp_path, "gpu-009", "10.231.1.19")


# -- power ----------------------------------------------------------------------------


def test_power_state_is_the_nodes(driver, power, system):
    assert driver.get_power_state(system) == "Off"
    power.state = "on"
    assert driver.get_power_state(system) == "On"


@pytest.mark.parametrize("reset", ["On", "ForceOn"])
def test_on_powers_the_node_on_from_disk_without_waiting(driver, power, system, reset):
    driver.set_power_state(system, reset)
    assert power.calls == [("on", NODE, "disk", False)]


@pytest.mark.parametrize("reset", ["ForceOff", "GracefulShutdown"])
def test_off_powers_the_node_off(driver, power, system, reset):
    power.state = "on"
    driver.set_power_state(system, reset)
    assert power.calls == [("off", NODE)]


@pytest.mark.parametrize("reset", ["ForceRestart", "GracefulRestart", "PowerCycle"])
def test_restarts_power_cycle(driver, power, system, reset):
    power.state = "on"
    driver.set_power_state(system, reset)
    assert power.calls == [("cycle", NODE, "disk", False)]


def test_on_when_on_and_off_when_off_change_nothing(driver, power, system):
    driver.set_power_state(system, "ForceOff")
    power.state = "on"
    driver.set_power_state(system, "On")
    assert power.calls == []


def test_push_power_button_toggles(driver, power, system):
    driver.set_power_state(system, "PushPowerButton")
    driver.set_power_state(system, "PushPowerButton")
    assert power.calls == [("on", NODE, "disk", False), ("off", NODE)]


@pytest.mark.parametrize("reset", ["Nmi", "Suspend", "on"])
def test_unsupported_reset_types_are_refused_by_name(driver, power, system, reset):
    with pytest.raises(error.BadRequest, match=f"ResetType '{reset}'"):
        driver.set_power_state(system, reset)
    assert power.calls == []


# -- boot override --------------------------------------------------------------------


def test_no_override_boots_disk(driver, power, system):
    assert driver.get_boot_device(system) == "None"
    assert driver.get_boot_override(system) == "Disabled"
    driver.set_power_state(system, "On")
    assert power.calls[-1][2] == "disk"


def test_one_time_pxe_is_used_by_the_next_boot_only(driver, power, system):
    driver.set_boot_device(system, "Pxe")
    assert (driver.get_boot_device(system), driver.get_boot_override(system)) == ("Pxe", "Once")
    power.state = "on"
    driver.set_power_state(system, "ForceRestart")
    assert power.calls[-1] == ("cycle", NODE, "pxe", False)
    assert (driver.get_boot_device(system), driver.get_boot_override(system)) == (
        "None", "Disabled")
    driver.set_power_state(system, "ForceRestart")
    assert power.calls[-1] == ("cycle", NODE, "disk", False)


def test_one_time_pxe_survives_a_power_off(driver, power, system):
    power.state = "on"
    driver.set_boot_device(system, "Pxe")
    driver.set_power_state(system, "ForceOff")
    assert driver.get_boot_override(system) == "Once"
    driver.set_power_state(system, "On")
    assert power.calls[-1] == ("on", NODE, "pxe", False)
    assert driver.get_boot_override(system) == "Disabled"


def test_continuous_pxe_stays(driver, power, system):
    driver.set_boot_device(system, "Pxe")
    driver.set_boot_override(system, "Continuous")
    driver.set_power_state(system, "On")
    driver.set_power_state(system, "ForceRestart")
    assert [call[2] for call in power.calls] == ["pxe", "pxe"]
    assert driver.get_boot_device(system) == "Pxe"


def test_disabling_the_override_boots_disk(driver, power, system):
    driver.set_boot_device(system, "Pxe")
    driver.set_boot_override(system, "Disabled")
    assert driver.get_boot_device(system) == "None"
    driver.set_power_state(system, "On")
    assert power.calls[-1][2] == "disk"


def test_hdd_override_boots_disk(driver, power, system):
    driver.set_boot_device(system, "Hdd")
    driver.set_power_state(system, "On")
    assert power.calls[-1][2] == "disk"


def test_a_failed_power_on_keeps_the_one_time_override(driver, power, system):
    def broken(name, boot="disk", wait=False):
        raise RuntimeError("lab lock busy")

    power.power_on = broken
    driver.set_boot_device(system, "Pxe")
    with pytest.raises(RuntimeError):
        driver.set_power_state(system, "On")
    assert driver.get_boot_override(system) == "Once"


def test_bad_boot_values_are_refused_by_name(driver, system):
    with pytest.raises(error.BadRequest, match="BootSourceOverrideTarget 'Floppy'"):
        driver.set_boot_device(system, "Floppy")
    with pytest.raises(error.BadRequest, match="BootSourceOverrideEnabled 'Always'"):
        driver.set_boot_override(system, "Always")


# -- firmware -------------------------------------------------------------------------


def test_versions_are_the_profiles(lab, driver, system):
    assert driver.get_versions(system) == {
        "BiosVersion": FIRMWARE["bios"], "BmcVersion": FIRMWARE["bmc"]}
    profile_path = lab / "hw" / NODE / "profile.json"
    profile = read_json(profile_path)
    profile["firmware"]["bios"] = OLD_FIRMWARE["bios"]
    write_json(profile_path, profile)
    assert driver.get_versions(system)["BiosVersion"] == OLD_FIRMWARE["bios"]


def test_set_versions_stages_the_release_and_the_next_boot_runs_it(lab, driver, system):
    driver.set_versions(system, {"BiosVersion": OLD_FIRMWARE["bios"]})
    staged = firmware.staged_image_path(lab, NODE, "bios")
    assert staged.read_bytes() == blob_bytes("bios", OLD_FIRMWARE["bios"])
    # Running firmware changes only at reset.
    assert driver.get_versions(system)["BiosVersion"] == FIRMWARE["bios"]
    assert firmware.staged_versions(lab, NODE) == {"bios": OLD_FIRMWARE["bios"]}
    reboot_node(lab)
    assert driver.get_versions(system)["BiosVersion"] == OLD_FIRMWARE["bios"]
    assert driver.get_versions(system)["BmcVersion"] == FIRMWARE["bmc"]
    assert not staged.exists()


def test_set_versions_refuses_unknown_keys_and_versions(driver, system):
    with pytest.raises(error.BadRequest, match="'NicVersion' is not updatable"):
        driver.set_versions(system, {"NicVersion": "1"})
    with pytest.raises(error.BadRequest, match="bios 9.9.9 is not a release"):
        driver.set_versions(system, {"BiosVersion": "9.9.9"})


def test_unreadable_profile_is_named(lab, driver, system):
    (lab / "hw" / NODE / "profile.json").write_text("{}")
    with pytest.raises(error.FishyError, match="profile.json: no firmware"):
        driver.get_versions(system)


# -- image checking -------------------------------------------------------------------


@pytest.mark.parametrize("component", ["bios", "bmc"])
def test_released_images_are_identified(component):
    version = OLD_FIRMWARE[component] if component == "bios" else FIRMWARE[component]
    assert firmware.identify_image(blob_bytes(component, version), "x.bin") == (
        component, version)


def test_a_tampered_image_fails_verification():
    image = bytearray(blob_bytes("bios", FIRMWARE["bios"]))
    image[-1] ^= 0xFF
    digest = hashlib.sha256(image).hexdigest()
    with pytest.raises(firmware.ImageRejected, match=f"bad.bin: image verification failed: "
                                                     f"sha256 {digest}"):
        firmware.identify_image(bytes(image), "bad.bin")


def test_an_image_claiming_an_unknown_release_is_rejected():
    forged = blob_bytes("bios", FIRMWARE["bios"]).replace(
        f"version={FIRMWARE['bios']}".encode(), b"version=9.9.9", 1)
    with pytest.raises(firmware.ImageRejected, match="bios 9.9.9 is not a release"):
        firmware.identify_image(forged, "forged.bin")


def test_a_nic_image_is_not_for_the_bmc():
    with pytest.raises(firmware.ImageRejected, match="a connectx7 image"):
        firmware.identify_image(blob_bytes("connectx7", "28.43.1014"), "nic.bin")


def test_bytes_without_a_header_are_rejected():
    with pytest.raises(firmware.ImageRejected, match="junk.bin: not a firmware image"):
        firmware.identify_image(b"<html>404</html>", "junk.bin")


def test_staging_needs_the_nodes_spool(tmp_path):
    with pytest.raises(firmware.FirmwareError, match="gpu-009: no flash spool"):
        firmware.stage_image(tmp_path, "gpu-009", "bios", b"x")


# -- BIOS setup -----------------------------------------------------------------------

MANIFEST = Path(__file__).resolve().parents[3] / "kiln" / "firmware" / "lab.yaml"


def test_bios_starts_at_the_defaults_and_the_lab_manifest_agrees(lab, driver, system):
    attributes = driver.get_bios(system)
    assert attributes == BIOS_ATTRIBUTES
    assert read_json(lab / "hw" / NODE / "profile.json")["bios_attributes"] == attributes
    pinned = yaml.safe_load(MANIFEST.read_text())["settings"]["bios"]
    assert pinned == {"SriovGlobalEnable": "Disabled", "PcieAcsControl": "Disabled"}
    assert {name: attributes[name] for name in pinned} == pinned
    assert driver.get_bios_settings(system) == attributes  # nothing pending


def test_set_bios_waits_for_the_next_boot_and_outlives_the_bmc(lab, driver, system, power):
    driver.set_bios(system, {"SriovGlobalEnable": "Enabled"})
    driver.set_bios(system, {"ProcCoreDisable": 4})  # a second PATCH adds to the first
    assert driver.get_bios(system) == BIOS_ATTRIBUTES
    assert driver.get_bios_settings(system) == {
        **BIOS_ATTRIBUTES, "SriovGlobalEnable": "Enabled", "ProcCoreDisable": 4}
    reboot_node(lab)
    expected = {**BIOS_ATTRIBUTES, "SriovGlobalEnable": "Enabled", "ProcCoreDisable": 4}
    assert driver.get_bios(system) == expected
    assert not bios.pending_path(lab, NODE).exists()
    config = {"SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, NODE, "10.231.0.11")],
              "SUSHY_EMULATOR_STATE_DIR": str(lab / "bmc-state")}
    restarted = LabSystemsDriver(config, logging.getLogger("test"), lab, NODE, power)
    assert restarted.get_bios(restarted.systems[0]) == expected


@pytest.mark.parametrize("attributes, why", [
    ({"SriovGlobalEnable": "Enabled", "NoSuchKnob": "On"},
     "'NoSuchKnob' is not an attribute of this BIOS"),
    ({"SriovGlobalEnable": "On"}, "SriovGlobalEnable takes one of Enabled, Disabled, not 'On'"),
    ({"ProcCoreDisable": 56}, "ProcCoreDisable takes an integer from 0 to 55, not 56"),
    ({"ProcCoreDisable": "4"}, "ProcCoreDisable takes an integer from 0 to 55, not '4'"),
    ({"ProcCoreDisable": True}, "ProcCoreDisable takes an integer from 0 to 55, not True"),
    ({}, "Attributes must be a non-empty object"),
    (None, "Attributes must be a non-empty object"),
])
def test_set_bios_refuses_a_wrong_name_or_value_and_stages_nothing(lab, driver, system,
                                                                    attributes, why):
    with pytest.raises(error.BadRequest, match=re.escape(why)):
        driver.set_bios(system, attributes)
    assert driver.get_bios_settings(system) == BIOS_ATTRIBUTES
    assert not bios.pending_path(lab, NODE).exists()


def test_reset_bios_returns_to_the_defaults_at_the_next_boot(lab, driver, system):
    driver.set_bios(system, {"NumaGroupSizeOpt": "Flat", "BootMode": "Legacy"})
    reboot_node(lab)
    assert driver.get_bios(system)["NumaGroupSizeOpt"] == "Flat"
    driver.reset_bios(system)
    assert driver.get_bios(system)["NumaGroupSizeOpt"] == "Flat"
    reboot_node(lab)
    assert driver.get_bios(system) == BIOS_ATTRIBUTES


def test_a_profile_from_before_bios_attributes_is_at_the_defaults(lab, driver, system):
    profile_path = lab / "hw" / NODE / "profile.json"
    profile = read_json(profile_path)
    del profile["bios_attributes"]
    write_json(profile_path, profile)
    assert driver.get_bios(system) == BIOS_ATTRIBUTES
    driver.set_bios(system, {"ProcTurboMode": "Disabled"})
    reboot_node(lab)
    assert read_json(profile_path)["bios_attributes"] == {**BIOS_ATTRIBUTES,
                                                          "ProcTurboMode": "Disabled"}


def test_a_garbled_pending_file_is_noted_at_boot_and_changes_nothing(lab, driver, system):
    bios.pending_path(lab, NODE).write_text("[1, 2]")
    reboot_node(lab)
    assert driver.get_bios(system) == BIOS_ATTRIBUTES
    notes = read_json(lab / "hw" / NODE / "boot.json")["flash_notes"]
    assert notes == ["bios-settings-pending.json: rejected (not a JSON object of BIOS "
                     "attributes)"]
