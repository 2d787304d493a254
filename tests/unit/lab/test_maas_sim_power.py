"""The MAAS simulator's power drivers against the lab's real BMCs on loopback (no root).

Redfish: sushy-tools' application with the lab's driver (lab/bmc), over TLS with a lab CA
certificate, basic auth; IPMI: the real ipmi_sim with the lab's configuration, reached with
the real ipmitool. Behind each BMC the lab's power calls are a recorder (as in the BMC
tests), so what is checked is what the simulator asked the BMC to do: a one-time PXE boot
override and a power on (or a cycle of a running machine), a power off, the state.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.lab.hwsim.lab_hooks import prepare_node_hardware
from kiln.lab.maas_sim.power import BmcCredentials, IpmiPower, PowerError, RedfishPower
from kiln.lab.tls import issue_cert

USER, PASSWORD = "kilnmaas", "Pw-maas-0123456789ab"  # 20 characters: IPMI's longest


SUPPORT = Path(__file__).resolve().parents[2] / "support"
# The Redfish BMC runs in its own process: sushy-tools' application is one module-level
# object, configured once per process (the BMC's own tests configure it too).
REDFISH_BMC = """
import json, logging, ssl, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bmc_ipmi_recorder import FilePower
from sushy_tools.emulator import main as emulator
from werkzeug.serving import make_server
from kiln.lab.bmc.redfish import write_htpasswd
from kiln.lab.bmc.redfish_app import UpdateSettings, fetch_over_http, install
from kiln.lab.bmc.redfish_driver import LabSystemsDriver, lab_system
lab, node, user, password = Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
emulator.app.configure(extra_config={
    "SUSHY_EMULATOR_AUTH_FILE": str(write_htpasswd(lab / "htpasswd", user, password)),
    "SUSHY_EMULATOR_STATE_DIR": str(lab / "state"),
    "SUSHY_EMULATOR_FEATURE_SET": "full",
    "SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, node, "127.0.0.1")],
})
power = FilePower(lab / "power.json")
driver = LabSystemsDriver(emulator.app.config, logging.getLogger("bmc"), lab, node, power)
install(driver, UpdateSettings(fetch_over_http(), seconds=0.1))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[6], sys.argv[7])
server = make_server("127.0.0.1", 0, emulator.app, threaded=True, ssl_context=context)
(lab / "port").write_text(str(server.server_port))
server.serve_forever()
"""


@pytest.fixture(scope="module")
def redfish(tmp_path_factory):
    lab = tmp_path_factory.mktemp("redfish")
    node = "gpu-001"
    prepare_node_hardware(lab, node, 1, "gpu", None)
    cert, key = issue_cert(lab, "bmc-maas-test", ["127.0.0.1"])
    (lab / "power.json").write_text(json.dumps({"state": "off", "calls": []}))
    log = open(lab / "bmc.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-c", REDFISH_BMC, str(SUPPORT), str(lab), node, USER,
         PASSWORD, str(cert), str(key)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (lab / "port").exists():
        assert process.poll() is None and time.monotonic() < deadline, (
            (lab / "bmc.log").read_text())
        time.sleep(0.1)
    yield {"port": int((lab / "port").read_text()), "ca": str(lab / "tls" / "ca.pem"),
           "record": lab / "power.json", "node": node}
    process.terminate()
    process.wait(timeout=10)
    log.close()


def redfish_driver(redfish, password: str = PASSWORD, ca: str | None = "lab") -> RedfishPower:
    return RedfishPower("127.0.0.1", redfish["port"], BmcCredentials(USER, password),
                        redfish["ca"] if ca == "lab" else ca)


def test_redfish_pxe_power_on_of_an_off_machine(redfish):
    reset(redfish, "off")
    driver = redfish_driver(redfish)
    assert driver.power_state() == "off"
    driver.power_on(pxe=True)
    assert recorded(redfish)[1] == [("on", redfish["node"], "pxe", False)]
    assert driver.power_state() == "on"


def test_redfish_pxe_power_on_of_a_running_machine_forces_it_off_first(redfish):
    reset(redfish, "on")
    redfish_driver(redfish).power_on(pxe=True)
    assert recorded(redfish)[1] == [("off", redfish["node"]),
                                    ("on", redfish["node"], "pxe", False)]


def test_redfish_power_off(redfish):
    reset(redfish, "on")
    driver = redfish_driver(redfish)
    driver.power_off()
    driver.power_off()  # already off: nothing more
    assert recorded(redfish)[1] == [("off", redfish["node"])]


def test_redfish_wrong_password_and_unknown_ca_are_power_errors(redfish):
    with pytest.raises(PowerError, match=r"Redfish BMC https://127\.0\.0\.1:\d+"):
        redfish_driver(redfish, password="wrong").power_state()
    with pytest.raises(PowerError):
        redfish_driver(redfish, ca=None).power_state()  # the system CAs do not know the lab's


def test_credentials_do_not_show_their_password():
    assert PASSWORD not in repr(BmcCredentials(USER, PASSWORD))


needs_openipmi = pytest.mark.skipif(
    not (shutil.which("ipmi_sim") and shutil.which("ipmitool")),
    reason="ipmi_sim/ipmitool not installed (lab/host-packages.txt: openipmi, ipmitool)",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ipmi(tmp_path_factory):
    from kiln.lab.bmc import ipmi as lab_ipmi

    lab = tmp_path_factory.mktemp("ipmi")
    node = "svc-001"
    prepare_node_hardware(lab, node, 9, "service", None)
    record = lab / "power.json"
    record.write_text(json.dumps({"state": "off", "calls": []}))
    recorder = SUPPORT / "bmc_ipmi_recorder.py"
    chassis = " ".join(shlex.quote(a) for a in
                       [sys.executable, str(recorder), str(record), str(lab), node])
    port = free_udp_port()
    lan_conf, emu = lab_ipmi.write_config(lab, node, "127.0.0.1", port, chassis=chassis)
    state = lab / "ipmi-state"
    lab_ipmi.write_user_store(state, node, USER, PASSWORD)
    process = subprocess.Popen(
        ["ipmi_sim", "-c", str(lan_conf), "-f", str(emu), "-s", str(state), "-n"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not lab_ipmi.udp_bound("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, "ipmi_sim did not start"
        time.sleep(0.05)
    yield {"port": port, "record": record, "node": node}
    process.terminate()
    process.wait(timeout=10)


def recorded(ipmi) -> tuple[str, list[tuple]]:
    data = json.loads(ipmi["record"].read_text())
    return data["state"], [tuple(c) for c in data["calls"]]


def reset(ipmi, state: str) -> None:
    ipmi["record"].write_text(json.dumps({"state": state, "calls": []}))


@needs_openipmi
def test_ipmi_pxe_power_on_then_cycle(ipmi):
    driver = IpmiPower("127.0.0.1", ipmi["port"], BmcCredentials(USER, PASSWORD))
    reset(ipmi, "off")
    assert driver.power_state() == "off"
    driver.power_on(pxe=True)
    assert recorded(ipmi)[1] == [("on", ipmi["node"], "pxe", False)]
    assert driver.power_state() == "on"
    driver.power_on(pxe=True)  # running: "chassis power cycle", the PXE boot flag again
    # ipmi_sim cycles as off, a second, on: the boot flag is used by the "on".
    deadline = time.monotonic() + 10
    while recorded(ipmi)[1][-1][0] != "on":
        assert time.monotonic() < deadline, recorded(ipmi)
        time.sleep(0.1)
    assert recorded(ipmi)[1][1:] == [("off", ipmi["node"]), ("on", ipmi["node"], "pxe", False)]
    driver.power_off()
    assert recorded(ipmi)[0] == "off"


@needs_openipmi
def test_ipmi_wrong_password_is_a_power_error_that_names_the_bmc(ipmi):
    driver = IpmiPower("127.0.0.1", ipmi["port"], BmcCredentials(USER, "not-the-password"))
    with pytest.raises(PowerError, match=rf"IPMI BMC 127\.0\.0\.1:{ipmi['port']}") as error:
        driver.power_state()
    assert "not-the-password" not in str(error.value)
