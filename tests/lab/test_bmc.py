"""The lab's BMCs driven the way kiln drives them: the real sushy client over HTTPS (checked
against the lab CA) against each GPU node's Redfish BMC, and the real ipmitool over RMCP+
against the service node's ipmi_sim. The node's sshd follows its power; a SimpleUpdate
changes the BIOS after a reset; a one-time PXE boot carries out what the network-boot
server has for the node."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import sushy
from sushy.resources import constants as res_cons
from sushy.resources.system import constants as sys_cons
from sushy.resources.taskservice import constants as task_cons

import kiln.lab.bmc as lab_bmc
from kiln.lab import netboot
from kiln.lab.credentials import read_lab_secrets
from kiln.lab.firmware_blobs import blob_file_name
from kiln.lab.hwsim.profile import FIRMWARE, OLD_FIRMWARE
from kiln.lab.nodes import ssh_banner
from kiln.lab.state import LabState

pytestmark = pytest.mark.lab

REDFISH_NODE = "gpu-008"
IPMI_NODE = "svc-001"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def bmcs(lab: LabState):
    """The running lab with its BMCs (started here if `kiln lab up` did not)."""
    lab_path = Path(lab.lab_dir)
    started_here = not lab_bmc.running(lab_path)
    if started_here:
        print(lab_bmc.start(lab_path, lab))
    yield lab
    if started_here:
        lab_bmc.stop(lab_path)


@pytest.fixture(scope="module")
def credentials(bmcs):
    return read_lab_secrets(Path(bmcs.lab_dir))["bmc"]


def sshd_up(lab: LabState, name: str) -> bool:
    node = lab.node(name)
    return ssh_banner(node.address, node.ssh_port)


# -- Redfish --------------------------------------------------------------------------


def redfish_root(lab: LabState, name: str) -> str:
    return f"https://{lab.node(name).bmc['address']}/redfish/v1"


@pytest.fixture(scope="module")
def client(bmcs, credentials):
    return sushy.Sushy(redfish_root(bmcs, REDFISH_NODE),
                       auth=sushy.auth.BasicAuth(credentials["username"], credentials["password"]),
                       verify=bmcs.tls_ca)


@pytest.fixture
def system(client, bmcs):
    [system] = client.get_system_collection().get_members()
    assert system.name == REDFISH_NODE
    if system.power_state != res_cons.PowerState.ON:  # left off by a failed test
        system.reset_system(res_cons.ResetType.ON)
    wait_for(lambda: sshd_up(bmcs, REDFISH_NODE), 90, f"{REDFISH_NODE} sshd")
    system.refresh()
    return system


def test_every_node_has_its_bmc(bmcs):
    for node in bmcs.nodes:
        assert node.bmc["protocol"] == ("ipmi" if node.role == "service" else "redfish")
    assert set(lab_bmc.running(Path(bmcs.lab_dir))) == {n.name for n in bmcs.nodes}


def test_wrong_password_is_401_and_no_ca_is_a_tls_error(bmcs, credentials):
    systems = redfish_root(bmcs, REDFISH_NODE) + "/Systems"
    wrong = requests.get(systems, auth=(credentials["username"], "wrong"), verify=bmcs.tls_ca,
                         timeout=10)
    assert wrong.status_code == 401
    right = requests.get(systems, auth=(credentials["username"], credentials["password"]),
                         verify=bmcs.tls_ca, timeout=10)
    assert right.status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(systems, timeout=10)


def test_redfish_power_off_and_on_and_sshd_follows(system, bmcs):
    assert system.power_state == res_cons.PowerState.ON
    system.reset_system(res_cons.ResetType.FORCE_OFF)
    wait_for(lambda: not sshd_up(bmcs, REDFISH_NODE), 30, f"{REDFISH_NODE} sshd to stop")
    system.refresh()
    assert system.power_state == res_cons.PowerState.OFF
    system.reset_system(res_cons.ResetType.ON)
    wait_for(lambda: sshd_up(bmcs, REDFISH_NODE), 90, f"{REDFISH_NODE} sshd to answer")
    system.refresh()
    assert system.power_state == res_cons.PowerState.ON


def test_one_time_pxe_boot_runs_the_network_boot_then_disk(system, bmcs):
    lab_path = Path(bmcs.lab_dir)
    netboot.request(lab_path, REDFISH_NODE, {"action": "commission"})
    try:
        system.set_system_boot_options(sys_cons.BootSource.PXE,
                                       enabled=sys_cons.BootSourceOverrideEnabled.ONCE)
        system.reset_system(res_cons.ResetType.FORCE_RESTART)
        # Commissioning inventories the machine, then powers it off (as MAAS's does).
        wait_for(lambda: (netboot.result(lab_path, REDFISH_NODE) or {}).get("status") == "ok",
                 60, "the commissioning boot's result")
        assert netboot.result(lab_path, REDFISH_NODE)["action"] == "commission"
        system.refresh()
        assert system.power_state == res_cons.PowerState.OFF
        assert system.boot.enabled == sys_cons.BootSourceOverrideEnabled.DISABLED
        system.reset_system(res_cons.ResetType.ON)  # the override is used up: from disk
        wait_for(lambda: sshd_up(bmcs, REDFISH_NODE), 90, f"{REDFISH_NODE} sshd")
    finally:
        netboot.cancel(lab_path, REDFISH_NODE)
        netboot.clear_result(lab_path, REDFISH_NODE)


def bios_version(client) -> str:
    inventory = client.get_update_service().firmware_inventory
    return inventory.get_member(f"{inventory.path}/BIOS").version


def update_bios(client, image_uri: str):
    inventory = client.get_update_service().firmware_inventory
    monitor = client.get_update_service().simple_update(
        image_uri, targets=[f"{inventory.path}/BIOS"])
    monitor.wait(120)
    return monitor.get_task()


def restart(system, lab: LabState) -> None:
    booted = boot_count(lab)
    system.reset_system(res_cons.ResetType.FORCE_RESTART)
    wait_for(lambda: boot_count(lab) > booted and sshd_up(lab, REDFISH_NODE), 90,
             f"{REDFISH_NODE} to boot again")


def boot_count(lab: LabState) -> int:
    boot = Path(lab.lab_dir) / "hw" / REDFISH_NODE / "boot.json"
    return json.loads(boot.read_text()).get("boot", 0) if boot.exists() else 0


def test_simple_update_changes_the_bios_after_a_reset(client, system, bmcs, labtools):
    vendor = bmcs.endpoints["vendor_repo"]
    golden, older = FIRMWARE["bios"], OLD_FIRMWARE["bios"]
    assert bios_version(client) == golden
    try:
        task = update_bios(client, f"{vendor}firmware/{blob_file_name('bios', older)}")
        assert task.task_state == task_cons.TaskState.COMPLETED, task.messages[-1].message
        assert task.messages[-1].message_id == "Update.1.0.AwaitToActivate"
        assert bios_version(client) == golden  # staged, not running
        restart(system, bmcs)
        assert bios_version(client) == older
        system.refresh()
        assert system.bios_version == older
        seen = labtools.ssh(bmcs, REDFISH_NODE, "cat /run/kiln-hw/profile.json")
        assert json.loads(seen)["firmware"]["bios"] == older  # what the node's tools read
    finally:
        if bios_version(client) != golden:
            task = update_bios(client, f"{vendor}firmware/{blob_file_name('bios', golden)}")
            assert task.task_state == task_cons.TaskState.COMPLETED
            restart(system, bmcs)
    assert bios_version(client) == golden


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_tampered_image_fails_its_task(client, bmcs, tmp_path):
    vendor = bmcs.endpoints["vendor_repo"]
    name = blob_file_name("bios", OLD_FIRMWARE["bios"])
    image = bytearray(requests.get(f"{vendor}firmware/{name}", timeout=10).content)
    image[len(image) // 2] ^= 0x40
    (tmp_path / name).write_bytes(bytes(image))
    # A site that serves the altered image under the release's own name.
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        task = update_bios(client, f"http://127.0.0.1:{server.server_address[1]}/{name}")
    finally:
        server.shutdown()
    assert task.task_state == task_cons.TaskState.EXCEPTION
    assert task.task_status == res_cons.Health.CRITICAL
    assert task.messages[-1].message_id == "Update.1.0.VerificationFailed"
    assert "image verification failed" in task.messages[-1].message
    staged = Path(bmcs.lab_dir) / "hw" / REDFISH_NODE / "flash" / "bmc-update-bios.bin"
    assert not staged.exists()
    assert bios_version(client) == FIRMWARE["bios"]


# -- IPMI -----------------------------------------------------------------------------


def ipmitool(lab: LabState, credentials: dict[str, str], *args: str, cipher: bool = True):
    """ipmitool over RMCP+; the password goes through the environment (-E), not argv."""
    node = lab.node(IPMI_NODE)
    suite = ["-C", "3"] if cipher else []
    return subprocess.run(
        ["ipmitool", "-I", "lanplus", *suite, "-H", node.bmc["address"],
         "-U", credentials["username"], "-E", *args],
        env={**os.environ, "IPMI_PASSWORD": credentials["password"]},
        capture_output=True, text=True, timeout=60,
    )


def power_status(lab: LabState, credentials: dict[str, str]) -> str:
    return ipmitool(lab, credentials, "chassis", "power", "status").stdout.strip()


@pytest.fixture
def ipmi_node(bmcs, credentials):
    if power_status(bmcs, credentials) != "Chassis Power is on":
        ipmitool(bmcs, credentials, "chassis", "power", "on")
    wait_for(lambda: sshd_up(bmcs, IPMI_NODE), 90, f"{IPMI_NODE} sshd")
    return bmcs


def test_ipmitool_power_off_on_and_sshd_follows(ipmi_node, credentials):
    # Once without naming a cipher suite, as the plain command line does (slower: ipmitool
    # falls back after ipmi_sim leaves its cipher-suite question unanswered).
    plain = ipmitool(ipmi_node, credentials, "chassis", "power", "status", cipher=False)
    assert plain.stdout.strip() == "Chassis Power is on"
    off = ipmitool(ipmi_node, credentials, "chassis", "power", "off")
    assert off.returncode == 0, off.stderr
    wait_for(lambda: not sshd_up(ipmi_node, IPMI_NODE), 30, f"{IPMI_NODE} sshd to stop")
    assert power_status(ipmi_node, credentials) == "Chassis Power is off"
    on = ipmitool(ipmi_node, credentials, "chassis", "power", "on")
    assert on.returncode == 0, on.stderr
    wait_for(lambda: sshd_up(ipmi_node, IPMI_NODE), 90, f"{IPMI_NODE} sshd to answer")
    assert power_status(ipmi_node, credentials) == "Chassis Power is on"


def test_ipmitool_power_cycle(ipmi_node, credentials):
    cycle = ipmitool(ipmi_node, credentials, "chassis", "power", "cycle")
    assert cycle.returncode == 0, cycle.stderr
    wait_for(lambda: not sshd_up(ipmi_node, IPMI_NODE), 30, f"{IPMI_NODE} sshd to stop")
    wait_for(lambda: sshd_up(ipmi_node, IPMI_NODE), 90, f"{IPMI_NODE} sshd to answer again")
    assert power_status(ipmi_node, credentials) == "Chassis Power is on"


def test_ipmitool_bootdev_pxe_boots_the_network_boot_once(ipmi_node, credentials):
    lab_path = Path(ipmi_node.lab_dir)
    netboot.request(lab_path, IPMI_NODE, {"action": "commission"})
    try:
        result = ipmitool(ipmi_node, credentials, "chassis", "bootdev", "pxe")
        assert result.returncode == 0 and "Set Boot Device to pxe" in result.stdout, result.stderr
        flags = ipmitool(ipmi_node, credentials, "chassis", "bootparam", "get", "5").stdout
        assert "Force PXE" in flags
        ipmitool(ipmi_node, credentials, "chassis", "power", "cycle")
        wait_for(lambda: (netboot.result(lab_path, IPMI_NODE) or {}).get("status") == "ok",
                 60, "the commissioning boot's result")
        assert netboot.result(lab_path, IPMI_NODE)["action"] == "commission"
        wait_for(lambda: power_status(ipmi_node, credentials) == "Chassis Power is off", 30,
                 "commissioning to power the node off")
        flags = ipmitool(ipmi_node, credentials, "chassis", "bootparam", "get", "5").stdout
        assert "Force PXE" not in flags  # used by that boot
        ipmitool(ipmi_node, credentials, "chassis", "power", "on")
        wait_for(lambda: sshd_up(ipmi_node, IPMI_NODE), 90, f"{IPMI_NODE} sshd (disk boot)")
    finally:
        netboot.cancel(lab_path, IPMI_NODE)
        netboot.clear_result(lab_path, IPMI_NODE)


def test_ipmitool_wrong_password_and_sel(ipmi_node, credentials):
    wrong = ipmitool(ipmi_node, {**credentials, "password": "wrong"}, "chassis", "power", "off")
    assert wrong.returncode != 0
    assert sshd_up(ipmi_node, IPMI_NODE)
    sel = ipmitool(ipmi_node, credentials, "sel", "list")
    assert sel.returncode == 0, sel.stderr
    info = ipmitool(ipmi_node, credentials, "mc", "info")
    assert "Firmware Revision" in info.stdout
