"""A lab Redfish BMC over HTTPS, driven by the real sushy client: sushy-tools' application
(routes, htpasswd basic auth) with the lab driver, served by werkzeug with a certificate
from a lab CA that the client verifies. Lab power is a recorder (no root, no lab); image
downloads come from a local HTTP server, as from the lab's vendor site."""

from __future__ import annotations

import functools
import http.server
import logging
import ssl
import threading
import time

import pytest
import requests
import sushy
from sushy.resources import constants as res_cons
from sushy.resources.system import constants as sys_cons
from sushy.resources.taskservice import constants as task_cons
from test_bmc_sim_redfish_driver import NODE, PowerRecorder, reboot_node
from werkzeug.serving import make_server

from kiln.lab.bmc import firmware
from kiln.lab.bmc.redfish import write_htpasswd
from kiln.lab.bmc.redfish_app import RESTART_SECONDS, UpdateSettings, fetch_over_http, install
from kiln.lab.bmc.redfish_driver import LabSystemsDriver, lab_system
from kiln.lab.firmware_blobs import blob_bytes, blob_file_name
from kiln.lab.hwsim.lab_hooks import prepare_node_hardware
from kiln.lab.hwsim.profile import BIOS_ATTRIBUTES, FIRMWARE, OLD_FIRMWARE
from kiln.lab.tls import issue_cert
from kiln.roles.bmc.redfish import RedfishBMC

USER, PASSWORD = "kilntest", "s3cret-Password-20ch"
OLD_BIOS = OLD_FIRMWARE["bios"]
OLD_BMC = OLD_FIRMWARE["bmc"]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """The vendor site: released images, a tampered one, a NIC image."""
    site = tmp_path_factory.mktemp("vendor")
    firmware_dir = site / "firmware"
    firmware_dir.mkdir()
    for component, version in [("bios", OLD_BIOS), ("bios", FIRMWARE["bios"]),
                               ("bmc", OLD_BMC), ("connectx7", "28.43.1014")]:
        (firmware_dir / blob_file_name(component, version)).write_bytes(
            blob_bytes(component, version))
    tampered = bytearray(blob_bytes("bios", OLD_BIOS))
    tampered[4096] ^= 0x01
    (firmware_dir / "tampered-bios.bin").write_bytes(bytes(tampered))
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/firmware"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def bmc(tmp_path_factory, blobs):
    lab = tmp_path_factory.mktemp("lab")
    prepare_node_hardware(lab, NODE, 1, "gpu", None)
    cert, key = issue_cert(lab, "bmc-test", ["127.0.0.1"])
    power = PowerRecorder()
    from sushy_tools.emulator import main as emulator

    emulator.app.configure(extra_config={
        "SUSHY_EMULATOR_AUTH_FILE": str(write_htpasswd(lab / "htpasswd", USER, PASSWORD)),
        "SUSHY_EMULATOR_STATE_DIR": str(lab / "state"),
        "SUSHY_EMULATOR_FEATURE_SET": "full",
        "SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, NODE, "127.0.0.1")],
    })
    app = emulator.app
    driver = LabSystemsDriver(app.config, logging.getLogger("bmc"), lab, NODE, power)
    install(driver, UpdateSettings(fetch_over_http(), seconds=0.5))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = f"https://127.0.0.1:{server.server_port}/redfish/v1"
    yield {"root": root, "ca": str(lab / "tls" / "ca.pem"), "power": power, "lab": lab,
           "driver": driver}
    server.shutdown()


@pytest.fixture
def client(bmc):
    return sushy.Sushy(bmc["root"], auth=sushy.auth.BasicAuth(USER, PASSWORD), verify=bmc["ca"])


@pytest.fixture
def power(bmc):
    bmc["power"].calls.clear()
    bmc["power"].state = "off"
    return bmc["power"]


def url(bmc, path):
    return bmc["root"].rsplit("/redfish", 1)[0] + path


def the_system(client):
    [system] = client.get_system_collection().get_members()
    return system


def test_certificate_is_checked_against_the_lab_ca(bmc):
    assert requests.get(bmc["root"], verify=bmc["ca"]).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(bmc["root"])  # the system's CAs do not know the lab CA


def test_root_is_public_and_the_rest_needs_the_lab_password(bmc):
    systems = bmc["root"] + "/Systems"
    assert requests.get(systems, verify=bmc["ca"]).status_code == 401
    assert requests.get(systems, auth=(USER, "wrong"), verify=bmc["ca"]).status_code == 401
    assert requests.get(systems, auth=("nobody", PASSWORD), verify=bmc["ca"]).status_code == 401
    assert requests.get(systems, auth=(USER, PASSWORD), verify=bmc["ca"]).status_code == 200
    wrong = sushy.Sushy(bmc["root"], auth=sushy.auth.BasicAuth(USER, "wrong"), verify=bmc["ca"])
    with pytest.raises(sushy.exceptions.AccessError):
        wrong.get_system_collection()


def test_one_system_the_node_with_its_power(client, power):
    system = the_system(client)
    assert system.name == NODE
    assert system.power_state == res_cons.PowerState.OFF
    power.state = "on"
    system.refresh()
    assert system.power_state == res_cons.PowerState.ON


def test_resets_reach_the_node(client, power):
    system = the_system(client)
    system.reset_system(res_cons.ResetType.ON)
    system.reset_system(res_cons.ResetType.FORCE_RESTART)
    system.reset_system(res_cons.ResetType.FORCE_OFF)
    assert power.calls == [("on", NODE, "disk", False), ("cycle", NODE, "disk", False),
                           ("off", NODE)]


def test_one_time_pxe_override_is_used_by_the_next_boot(client, power):
    system = the_system(client)
    system.set_system_boot_options(sys_cons.BootSource.PXE,
                                   enabled=sys_cons.BootSourceOverrideEnabled.ONCE)
    system.refresh()
    assert system.boot.target == sys_cons.BootSource.PXE
    assert system.boot.enabled == sys_cons.BootSourceOverrideEnabled.ONCE
    system.reset_system(res_cons.ResetType.ON)
    assert power.calls == [("on", NODE, "pxe", False)]
    system.refresh()
    assert system.boot.enabled == sys_cons.BootSourceOverrideEnabled.DISABLED
    system.reset_system(res_cons.ResetType.FORCE_RESTART)
    assert power.calls[-1] == ("cycle", NODE, "disk", False)


def test_continuous_pxe_override_and_disabling_it(client, power, bmc):
    system = the_system(client)
    system.set_system_boot_options(sys_cons.BootSource.PXE,
                                   enabled=sys_cons.BootSourceOverrideEnabled.CONTINUOUS)
    system.reset_system(res_cons.ResetType.ON)
    system.reset_system(res_cons.ResetType.FORCE_RESTART)
    system.refresh()
    assert system.boot.enabled == sys_cons.BootSourceOverrideEnabled.CONTINUOUS
    # The override alone (no target) is a valid PATCH too.
    response = requests.patch(url(bmc, system.path),
                              json={"Boot": {"BootSourceOverrideEnabled": "Disabled"}},
                              auth=(USER, PASSWORD), verify=bmc["ca"])
    assert response.status_code == 204
    system.refresh()
    assert system.boot.enabled == sys_cons.BootSourceOverrideEnabled.DISABLED
    system.reset_system(res_cons.ResetType.FORCE_RESTART)
    assert [call[2] for call in power.calls] == ["pxe", "pxe", "disk"]


def test_bad_override_value_is_a_400_naming_it(bmc, client):
    response = requests.patch(url(bmc, the_system(client).path),
                              json={"Boot": {"BootSourceOverrideEnabled": "Always"}},
                              auth=(USER, PASSWORD), verify=bmc["ca"])
    assert response.status_code == 400
    assert "BootSourceOverrideEnabled 'Always'" in response.json()["error"]["message"]


def test_firmware_inventory_lists_bios_and_bmc_from_the_profile(client):
    inventory = client.get_update_service().firmware_inventory
    items = {item.identity: item.version for item in inventory.get_members()}
    assert items == {"BIOS": FIRMWARE["bios"], "BMC": FIRMWARE["bmc"]}
    assert the_system(client).bios_version == FIRMWARE["bios"]
    [manager] = client.get_manager_collection().get_members()
    assert manager.firmware_version == FIRMWARE["bmc"]


def run_update(client, image_uri, targets=None):
    monitor = client.get_update_service().simple_update(image_uri, targets=targets)
    assert monitor.is_processing  # 202 Accepted: the task runs on after the request
    assert monitor.task.task_state in (task_cons.TaskState.NEW, task_cons.TaskState.RUNNING)
    monitor.wait(60)
    return monitor.get_task()


def test_simple_update_stages_the_bios_and_the_next_reset_runs_it(client, blobs, bmc):
    task = run_update(client, f"{blobs}/{blob_file_name('bios', OLD_BIOS)}")
    assert task.task_state == task_cons.TaskState.COMPLETED
    assert task.task_status == res_cons.Health.OK
    assert task.percent_complete == 100
    ids = [m.message_id for m in task.messages]
    assert ids[-2:] == ["Update.1.0.UpdateSuccessful", "Update.1.0.AwaitToActivate"]
    inventory = client.get_update_service().firmware_inventory
    assert inventory.get_member(f"{inventory.path}/BIOS").version == FIRMWARE["bios"]
    reboot_node(bmc["lab"])
    assert inventory.get_member(f"{inventory.path}/BIOS").version == OLD_BIOS
    task = run_update(client, f"{blobs}/{blob_file_name('bios', FIRMWARE['bios'])}",
                      targets=[f"/redfish/v1/Systems/{NODE}"])
    assert task.task_state == task_cons.TaskState.COMPLETED
    reboot_node(bmc["lab"])
    assert inventory.get_member(f"{inventory.path}/BIOS").version == FIRMWARE["bios"]


def test_a_tampered_image_ends_the_task_in_exception(client, blobs, bmc):
    task = run_update(client, f"{blobs}/tampered-bios.bin")
    assert task.task_state == task_cons.TaskState.EXCEPTION
    assert task.task_status == res_cons.Health.CRITICAL
    assert task.messages[-1].message_id == "Update.1.0.VerificationFailed"
    assert "image verification failed" in task.messages[-1].message
    assert firmware.staged_versions(bmc["lab"], NODE) == {}


def test_a_missing_image_ends_the_task_in_transfer_failed(client, blobs):
    task = run_update(client, f"{blobs}/lab-bios-0.0.0.bin")
    assert task.task_state == task_cons.TaskState.EXCEPTION
    assert task.messages[-1].message_id == "Update.1.0.TransferFailed"
    assert "404" in task.messages[-1].message


def test_an_image_for_another_target_fails(client, blobs):
    inventory = client.get_update_service().firmware_inventory
    task = run_update(client, f"{blobs}/{blob_file_name('bios', OLD_BIOS)}",
                      targets=[f"{inventory.path}/BMC"])
    assert task.task_state == task_cons.TaskState.EXCEPTION
    assert "a BIOS image, but the request's Targets are BMC" in task.messages[-1].message
    task = run_update(client, f"{blobs}/{blob_file_name('connectx7', '28.43.1014')}")
    assert "a connectx7 image" in task.messages[-1].message


@pytest.mark.parametrize("body, why", [
    ({}, "ImageURI is required"),
    ({"ImageURI": "ftp://10.231.0.1/x.bin"}, "the scheme must be one of http, https"),
    ({"ImageURI": "http://10.231.0.1/x.bin", "TransferProtocol": "HTTPS"},
     "TransferProtocol 'HTTPS' does not match"),
    ({"ImageURI": "http://10.231.0.1/x.bin", "Targets": ["/redfish/v1/Chassis/1"]},
     "target '/redfish/v1/Chassis/1' is not updatable here"),
])
def test_bad_simple_update_requests_are_400s_naming_the_field(bmc, body, why):
    response = requests.post(
        bmc["root"] + "/UpdateService/Actions/UpdateService.SimpleUpdate", json=body,
        auth=(USER, PASSWORD), verify=bmc["ca"])
    assert response.status_code == 400
    assert why in response.json()["error"]["message"]


def test_tasks_are_listed_and_unknown_ones_are_404(client, bmc, blobs):
    monitor = client.get_update_service().simple_update(f"{blobs}/tampered-bios.bin")
    monitor.wait(60)
    tasks = requests.get(bmc["root"] + "/TaskService/Tasks", auth=(USER, PASSWORD),
                         verify=bmc["ca"]).json()
    assert tasks["Members@odata.count"] == len(tasks["Members"])
    assert {"@odata.id": monitor.task_monitor_uri} in tasks["Members"]
    for task_id in ("42", "999"):  # 42: sushy-tools' fixed always-Completed task is gone
        response = requests.get(f"{bmc['root']}/TaskService/Tasks/{task_id}",
                                auth=(USER, PASSWORD), verify=bmc["ca"])
        assert response.status_code == 404


# -- Manager.Reset: the BMC restarts ----------------------------------------------------------


def the_manager(client):
    [manager] = client.get_manager_collection().get_members()
    return manager


def wait_until_answering(bmc, seconds: float = 10.0) -> list[int]:
    """The service root's status codes, read until it answers 200 (bounded)."""
    codes, deadline = [], time.monotonic() + seconds
    while not codes or codes[-1] != 200:
        assert time.monotonic() < deadline, f"the BMC did not answer again: {codes}"
        codes.append(requests.get(bmc["root"], verify=bmc["ca"]).status_code)
        time.sleep(0.1)
    return codes


def test_manager_offers_graceful_and_force_restart(client):
    assert the_manager(client).get_allowed_reset_manager_values() == {
        res_cons.ResetType.GRACEFUL_RESTART, res_cons.ResetType.FORCE_RESTART}


@pytest.mark.parametrize("body", [{"ResetType": "On"}, {}, None])
def test_bad_manager_reset_type_is_a_400_naming_it(bmc, client, body):
    target = url(bmc, the_manager(client).path + "/Actions/Manager.Reset")
    response = requests.post(target, json=body, auth=(USER, PASSWORD), verify=bmc["ca"])
    assert response.status_code == 400
    assert "ResetType" in response.json()["error"]["message"]
    assert "GracefulRestart, ForceRestart" in response.json()["error"]["message"]
    assert requests.get(bmc["root"], verify=bmc["ca"]).status_code == 200  # no restart


def test_a_bmc_restart_runs_the_staged_bmc_image_and_leaves_the_bios_staged(client, blobs,
                                                                            bmc):
    lab = bmc["lab"]
    task = run_update(client, f"{blobs}/{blob_file_name('bmc', OLD_BMC)}")
    assert task.task_state == task_cons.TaskState.COMPLETED
    assert "next BMC restart (Manager.Reset)" in task.messages[-1].message
    task = run_update(client, f"{blobs}/{blob_file_name('bios', OLD_BIOS)}")
    assert "next system reset" in task.messages[-1].message
    assert firmware.staged_versions(lab, NODE) == {"bios": OLD_BIOS, "bmc": OLD_BMC}
    assert the_manager(client).firmware_version == FIRMWARE["bmc"]  # staged, not running

    the_manager(client).reset_manager(res_cons.ResetType.FORCE_RESTART)
    restarting = requests.get(bmc["root"], verify=bmc["ca"])
    assert restarting.status_code == 503 and 1 <= int(restarting.headers["Retry-After"]) <= 2
    codes = wait_until_answering(bmc)
    assert set(codes[:-1]) <= {503} and len(codes) > 1

    assert the_manager(client).firmware_version == OLD_BMC
    inventory = client.get_update_service().firmware_inventory
    assert inventory.get_member(f"{inventory.path}/BMC").version == OLD_BMC
    assert inventory.get_member(f"{inventory.path}/BIOS").version == FIRMWARE["bios"]
    assert firmware.staged_versions(lab, NODE) == {"bios": OLD_BIOS}
    reboot_node(lab)  # the system's reset runs the BIOS image
    assert inventory.get_member(f"{inventory.path}/BIOS").version == OLD_BIOS
    firmware.stage_version(lab, NODE, "bios", FIRMWARE["bios"])
    reboot_node(lab)
    assert firmware.running_versions(lab, NODE) == {"bios": FIRMWARE["bios"], "bmc": OLD_BMC}


def test_roles_bmc_restarts_the_lab_bmc_and_waits_for_it(bmc):
    lab = bmc["lab"]
    firmware.stage_version(lab, NODE, "bmc", FIRMWARE["bmc"])
    client = RedfishBMC(bmc["root"], username=USER, password=PASSWORD, verify=bmc["ca"],
                        poll_interval=0.2, label="BMC 127.0.0.1 (redfish, node test)")
    started = time.monotonic()
    # settle past wait: returning at all shows the client saw the BMC go down and come back
    assert client.reset_bmc(wait=30, settle=60) == "GracefulRestart"
    assert RESTART_SECONDS * 0.5 <= time.monotonic() - started < 30
    versions = {item.id: item.version for item in client.firmware_inventory()}
    assert versions == {"BIOS": FIRMWARE["bios"], "BMC": FIRMWARE["bmc"]}
    assert firmware.staged_versions(lab, NODE) == {}
    client.close()


def test_a_restart_with_nothing_staged_changes_no_version(client, bmc):
    before = firmware.running_versions(bmc["lab"], NODE)
    the_manager(client).reset_manager(res_cons.ResetType.GRACEFUL_RESTART)
    wait_until_answering(bmc)
    assert firmware.running_versions(bmc["lab"], NODE) == before


def test_bios_settings_patched_with_sushy_apply_at_the_next_boot(client, bmc):
    system = the_system(client)
    bios = system.bios
    assert bios.attributes == BIOS_ATTRIBUTES
    assert bios.json["@Redfish.Settings"]["SupportedApplyTimes"] == ["OnReset"]
    bios.set_attributes({"PcieAcsControl": "Enabled", "ProcCoreDisable": 2})
    bios.refresh()  # the Settings resource too: what the next boot will have
    assert bios.pending_attributes == {**BIOS_ATTRIBUTES, "PcieAcsControl": "Enabled",
                                       "ProcCoreDisable": 2}
    assert bios.attributes == BIOS_ATTRIBUTES
    reboot_node(bmc["lab"])
    bios.refresh()
    try:
        assert bios.attributes == {**BIOS_ATTRIBUTES, "PcieAcsControl": "Enabled",
                                   "ProcCoreDisable": 2}
        assert bios.pending_attributes == bios.attributes
    finally:
        bios.reset_bios()  # the module's other tests see a BIOS at its defaults
        reboot_node(bmc["lab"])
    bios.refresh()
    assert bios.attributes == BIOS_ATTRIBUTES


@pytest.mark.parametrize("body, why", [
    ({"Attributes": {"SriovGlobalEnable": "Maybe"}},
     "SriovGlobalEnable takes one of Enabled, Disabled, not 'Maybe'"),
    ({"Attributes": {"SriovGlobalEnable": "Enabled"},
      "@Redfish.SettingsApplyTime": {"ApplyTime": "Immediate"}},
     "ApplyTime 'Immediate' is not supported (supported: OnReset)"),
])
def test_bad_bios_settings_are_a_400_naming_why(bmc, client, body, why):
    settings = f"{the_system(client).path}/BIOS/Settings"
    response = requests.patch(url(bmc, settings), json=body, auth=(USER, PASSWORD),
                              verify=bmc["ca"])
    assert response.status_code == 400
    assert why in response.json()["error"]["message"]
    assert bmc["driver"].get_bios_settings(bmc["driver"].systems[0]) == BIOS_ATTRIBUTES
