"""The lab BMCs' system event log (lab/sel.py): the IPMI records `bmc-event` adds, as the
IPMI spec lays them out; the Redfish LogService the lab's Redfish app serves from the node's
SEL store (Flask's test client through sushy-tools' application and basic auth); and kiln's
own readers (kiln.roles.bmc: RedfishBMC over HTTPS, IpmiBMC with ipmitool against the real
ipmi_sim on loopback) reading the entries back with their severity and message."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
from datetime import UTC, datetime

import pytest
from test_bmc_sim_redfish_driver import PowerRecorder
from werkzeug.serving import make_server

from kiln.lab import sel
from kiln.lab.bmc import ipmi
from kiln.lab.bmc.redfish import write_htpasswd
from kiln.lab.bmc.redfish_app import UpdateSettings, fetch_over_http, install
from kiln.lab.bmc.redfish_driver import LabSystemsDriver, lab_system, system_uuid
from kiln.lab.hwsim.lab_hooks import prepare_node_hardware
from kiln.lab.tls import issue_cert
from kiln.roles.bmc.ipmi import IpmiBMC
from kiln.roles.bmc.redfish import RedfishBMC

NODE = "gpu-001"
IPMI_NODE = "svc-001"
USER, PASSWORD = "kilnsel", "Sel-Password-20chars"

# -- IPMI records --------------------------------------------------------------------------


def test_an_ac_loss_is_the_bmcs_own_power_unit_record():
    data = sel.record(sel.EVENTS["ac-lost"], record_id=0x0102, timestamp=0x5F000000)
    assert data == bytes([
        0x02, 0x01,              # record ID, least significant byte first
        0x02,                    # a system event record
        0x00, 0x00, 0x00, 0x5F,  # timestamp, LS first
        0x20, 0x00,              # generator: the BMC (slave address 20h), channel 0
        0x04,                    # EvM revision: IPMI 2.0
        0x09,                    # sensor type: Power Unit
        0x50,                    # sensor number
        0x6F,                    # assertion, sensor-specific event type
        0x04, 0xFF, 0xFF,        # offset 04h: AC lost; data 2 and 3 unspecified
    ])  # fmt: skip


@pytest.mark.parametrize(("kind", "generator", "sensor_type", "data"), [
    ("machine-check", 0x0001, 0x07, (0x0B, 0xFF, 0xFF)),
    ("memory-uncorrectable", 0x0001, 0x0C, (0x31, 0xFF, 0x00)),
    ("pcie-fatal", 0x0001, 0x13, (0x0A, 0xFF, 0xFF)),
    ("bios-corruption", 0x0001, 0x0F, (0xC0, 0x0B, 0xFF)),
])
def test_firmware_events_are_the_bios_records_of_their_sensor_types(kind, generator,
                                                                    sensor_type, data):
    record = sel.record(sel.EVENTS[kind])
    assert len(record) == 16 and record[2] == 0x02
    assert int.from_bytes(record[7:9], "little") == generator
    assert record[10] == sensor_type and record[12] == 0x6F
    assert tuple(record[13:16]) == data


def test_an_unknown_kind_says_which_there_are():
    with pytest.raises(sel.SelError, match="not one of ac-lost, machine-check"):
        sel.event("meteor")


# -- the Redfish store ---------------------------------------------------------------------


def test_store_numbers_entries_and_keeps_numbering_past_a_clear(tmp_path):
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    first = sel.add_redfish(tmp_path, NODE, "ac-lost", now=when)
    second = sel.add_redfish(tmp_path, NODE, "pcie-fatal", now=when)
    assert (first["Id"], second["Id"]) == ("1", "2")
    assert first["Created"] == "2025-03-04T05:06:07+00:00"
    assert first["EntryType"] == "SEL" and first["SensorType"] == "PowerUnit"
    assert first["EntryCode"] == "Assert" and first["GeneratorId"] == "0x0020"
    assert first["MessageId"] == "KilnLabSEL.1.0.ACLost"
    assert sel.clear_redfish(tmp_path, NODE) == 2
    assert sel.read_store(tmp_path, NODE)["entries"] == []
    assert sel.add_redfish(tmp_path, NODE, "ac-lost")["Id"] == "3"


def test_store_refuses_an_unknown_kind_before_writing(tmp_path):
    with pytest.raises(sel.SelError):
        sel.add_redfish(tmp_path, NODE, "meteor")
    assert not sel.store_path(tmp_path, NODE).exists()


# -- the Redfish app's LogService ----------------------------------------------------------


@pytest.fixture(scope="module")
def redfish(tmp_path_factory):
    """sushy-tools' application with the lab driver of one node, served over HTTPS (for
    kiln's client) and reachable through Flask's test client."""
    lab = tmp_path_factory.mktemp("lab")
    prepare_node_hardware(lab, NODE, 1, "gpu", None)
    from sushy_tools.emulator import main as emulator

    # sushy-tools' application is one per process and wraps itself in its basic-auth
    # middleware once, with the first auth file it is given: another test module of this
    # run may have configured it already. Unwrap, so this module's htpasswd is the one read.
    while isinstance(emulator.app.wsgi_app, emulator.RedfishAuthMiddleware):
        emulator.app.wsgi_app = emulator.app.wsgi_app.app
    emulator.app.configure(extra_config={
        "SUSHY_EMULATOR_AUTH_FILE": str(write_htpasswd(lab / "htpasswd", USER, PASSWORD)),
        "SUSHY_EMULATOR_STATE_DIR": str(lab / "state"),
        "SUSHY_EMULATOR_FEATURE_SET": "full",
        "SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, NODE, "127.0.0.1")],
    })
    app = emulator.app
    driver = LabSystemsDriver(app.config, logging.getLogger("bmc"), lab, NODE, PowerRecorder())
    install(driver, UpdateSettings(fetch_over_http(), seconds=0.1))
    cert, key = issue_cert(lab, "bmc-sel-test", ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"lab": lab, "app": app, "url": f"https://127.0.0.1:{server.server_port}",
           "ca": str(lab / "tls" / "ca.pem"), "system": driver.systems[0]}
    server.shutdown()


@pytest.fixture
def http(redfish):
    sel.clear_redfish(redfish["lab"], NODE)
    client = redfish["app"].test_client()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}

    def call(method: str, path: str, **kwargs):
        return client.open(path, method=method, headers=headers, **kwargs)

    return call


def logs_path(redfish) -> str:
    return f"/redfish/v1/Systems/{redfish['system']}/LogServices"


def test_the_system_links_its_log_services(redfish, http):
    system = http("GET", f"/redfish/v1/Systems/{redfish['system']}").get_json()
    assert system["LogServices"] == {"@odata.id": logs_path(redfish)}
    services = http("GET", logs_path(redfish)).get_json()
    assert services["Members"] == [{"@odata.id": f"{logs_path(redfish)}/SEL"}]


def test_the_sel_log_service_is_dmtfs_shape(redfish, http):
    service = http("GET", f"{logs_path(redfish)}/SEL").get_json()
    assert service["@odata.type"].startswith("#LogService.")
    assert (service["Id"], service["LogEntryType"], service["ServiceEnabled"]) == (
        "SEL", "SEL", True)
    assert service["Entries"] == {"@odata.id": f"{logs_path(redfish)}/SEL/Entries"}
    assert service["Actions"]["#LogService.ClearLog"]["target"].endswith(
        "/SEL/Actions/LogService.ClearLog")


def test_entries_are_what_the_fault_wrote_expanded_and_one_by_one(redfish, http):
    sel.add_redfish(redfish["lab"], NODE, "machine-check")
    sel.add_redfish(redfish["lab"], NODE, "bios-corruption")
    entries = http("GET", f"{logs_path(redfish)}/SEL/Entries").get_json()
    assert entries["Members@odata.count"] == 2
    first, second = entries["Members"]
    assert first["@odata.id"] == f"{logs_path(redfish)}/SEL/Entries/1"
    assert first["@odata.type"].startswith("#LogEntry.")
    assert (first["EntryType"], first["Severity"], first["SensorType"]) == (
        "SEL", "Critical", "Processor")
    assert second["Message"] == "System firmware error: BIOS ROM corruption detected."
    one = http("GET", f"{logs_path(redfish)}/SEL/Entries/2").get_json()
    assert one == second


def test_unknown_services_entries_and_systems_are_404(redfish, http):
    assert http("GET", f"{logs_path(redfish)}/Lclog").status_code == 404
    assert http("GET", f"{logs_path(redfish)}/SEL/Entries/99").status_code == 404
    assert http("GET", "/redfish/v1/Systems/nope/LogServices").status_code == 404


def test_the_node_name_is_an_alias_of_the_system(redfish, http):
    entries = http("GET", f"/redfish/v1/Systems/{NODE}/LogServices/SEL/Entries")
    assert entries.status_code == 200
    assert entries.get_json()["@odata.id"] == f"{logs_path(redfish)}/SEL/Entries"


def test_the_log_needs_the_bmc_password(redfish):
    client = redfish["app"].test_client()
    assert client.get(f"{logs_path(redfish)}/SEL/Entries").status_code == 401


def test_clear_log_empties_it(redfish, http):
    sel.add_redfish(redfish["lab"], NODE, "ac-lost")
    cleared = http("POST", f"{logs_path(redfish)}/SEL/Actions/LogService.ClearLog", json={})
    assert cleared.status_code == 204
    assert http("GET", f"{logs_path(redfish)}/SEL/Entries").get_json()["Members"] == []


def test_kilns_redfish_reader_reads_the_entries_back(redfish, http):
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    for kind in sel.EVENTS:
        sel.add_redfish(redfish["lab"], NODE, kind, now=when)
    client = RedfishBMC(redfish["url"], username=USER, password=PASSWORD, verify=redfish["ca"])
    try:
        read = client.event_log()
    finally:
        client.close()
    assert [(e.severity, e.message) for e in read] == [
        ("Critical", event.message) for event in sel.EVENTS.values()]
    assert {e.created for e in read} == {"2025-01-02T03:04:05+00:00"}
    ids = [int(e.id) for e in read]  # numbered on past the earlier tests' cleared entries
    assert ids == list(range(ids[0], ids[0] + len(sel.EVENTS)))
    assert redfish["system"] == system_uuid(NODE, json.loads(
        (redfish["lab"] / "hw" / NODE / "profile.json").read_text())["system"]["serial"])


# -- IPMI: the real ipmi_sim and ipmitool ----------------------------------------------------

needs_openipmi = pytest.mark.skipif(
    not (shutil.which("ipmi_sim") and shutil.which("ipmitool")),
    reason="needs OpenIPMI's ipmi_sim and ipmitool (kiln/lab/host-packages.txt)")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ipmi_bmc(tmp_path):
    prepare_node_hardware(tmp_path, IPMI_NODE, 9, "service", None)
    port = free_udp_port()
    lan_conf, emu = ipmi.write_config(tmp_path, IPMI_NODE, "127.0.0.1", port, chassis="true")
    state = tmp_path / "ipmi-state"
    ipmi.write_user_store(state, IPMI_NODE, USER, PASSWORD)
    process = subprocess.Popen(["ipmi_sim", "-c", str(lan_conf), "-f", str(emu), "-s",
                                str(state), "-n"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not ipmi.udp_bound("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, "ipmi_sim did not start"
        time.sleep(0.05)
    yield port
    process.terminate()
    process.wait(timeout=10)


@needs_openipmi
def test_kilns_ipmi_reader_reads_every_kind_back_dated_and_critical(ipmi_bmc):
    port = ipmi_bmc
    sel.set_ipmi_clock("127.0.0.1", port, USER, PASSWORD)
    ids = [sel.add_ipmi("127.0.0.1", port, USER, PASSWORD, kind) for kind in sel.EVENTS]
    assert ids == list(range(1, len(sel.EVENTS) + 1))
    client = IpmiBMC("127.0.0.1", port=port, username=USER, password=PASSWORD, cipher_suite=3)
    read = client.event_log()
    said = {
        "ac-lost": "Power Unit #0x50: AC lost (Asserted)",
        "machine-check": "Processor #0x60: Uncorrectable machine check exception (Asserted)",
        "memory-uncorrectable": "Memory #0x70: Uncorrectable ECC (Asserted)",
        "pcie-fatal": "Critical Interrupt #0xa0: Bus Fatal Error (Asserted)",
        "bios-corruption": "System Firmwares #0x0f: BIOS corruption detected (Asserted)",
    }
    assert [(e.id, e.severity, e.message) for e in read] == [
        (str(i), "Critical", said[kind]) for i, kind in enumerate(sel.EVENTS, 1)]
    # Dated by the BMC's clock, set to this machine's (not ipmi_sim's "pre-init" time).
    for entry in read:
        created = datetime.fromisoformat(entry.created)
        assert abs((created - datetime.now(UTC)).total_seconds()) < 120
    sel.clear_ipmi("127.0.0.1", port, USER, PASSWORD)
    assert client.event_log() == []


@needs_openipmi
def test_a_wrong_password_is_an_error_without_the_password(ipmi_bmc):
    with pytest.raises(sel.SelError) as caught:
        sel.add_ipmi("127.0.0.1", ipmi_bmc, USER, "not-the-password", "ac-lost")
    assert "not-the-password" not in str(caught.value)
