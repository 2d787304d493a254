"""roles/bmc over Redfish: the real sushy client against real Redfish services.

- Read-only facts: the HPE DL380a Gen11 (H100 NVL) iLO 6 and DMTF public-rackmount1 mockups
  served by the real `sushy-static` (lab/bmc/static.py; over HTTPS with a test CA for the
  host-data path). Expected values are read from the mockup files themselves.
- The happy paths that change state (power, boot override, SimpleUpdate and its task,
  Manager.Reset, the pyinfra operations, wrong credentials): the real sushy-tools emulator
  in this process, as the lab runs it (kiln/lab/bmc/redfish_app.py: sushy-tools' own Flask
  application, its htpasswd auth, the lab's systems driver), over HTTPS on loopback. Its
  node's power is a recorder (tests/unit/lab/test_bmc_sim_redfish_driver.py), its images come
  from a local HTTP server, and a listener in front of it records each request and status.
- `MockupBMC` below, a hand-built BMC serving the HPE mockup, only for the faults sushy-tools
  cannot make (each test says which): a given number of 503 or 500 answers to a given
  request, a reset accepted and never acted on, a Manager that offers other reset types or
  does not come back Enabled. It stands in for the BMC, never for the client under test.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import logging
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import yaml
from test_bmc_sim_redfish_driver import NODE, PowerRecorder, reboot_node
from werkzeug.serving import make_server

from kiln.core.manifest import load_manifest
from kiln.core.retry import RetryPolicy
from kiln.lab.bmc import bios as lab_bios
from kiln.lab.bmc import firmware as lab_firmware
from kiln.lab.bmc.redfish import write_htpasswd
from kiln.lab.bmc.redfish_app import RESTART_SECONDS, UpdateSettings, fetch_over_http, install
from kiln.lab.bmc.redfish_driver import LabSystemsDriver, lab_system
from kiln.lab.bmc.static import free_port, serve
from kiln.lab.bmc.static import stop as stop_static
from kiln.lab.firmware_blobs import blob_bytes, blob_file_name
from kiln.lab.hwsim.lab_hooks import prepare_node_hardware
from kiln.lab.hwsim.profile import (
    BIOS_ATTRIBUTES,
    FIRMWARE,
    OLD_FIRMWARE,
    read_json,
    write_json,
)
from kiln.lab.tls import ensure_ca, issue_cert
from kiln.roles.bmc import (
    BMCAuthError,
    BMCError,
    BMCTaskFailed,
    BMCTimeout,
    BMCTLSError,
    BMCUnavailable,
    BMCUnsupported,
    connect,
)
from kiln.roles.bmc import facts as bmc_facts
from kiln.roles.bmc.redfish import RedfishBMC, choose_reset_types

ROOT = Path(__file__).resolve().parents[4]
MOCKUPS = ROOT / "tests" / "fixtures" / "redfish"
HPE = MOCKUPS / "hpe-dl380a-gen11-h100nvl"
DMTF = MOCKUPS / "dmtf-public-rackmount1"
USER, PASSWORD = "kiln-admin", "Red-Fish-Pa55word"


def resource(mockup: Path, uri: str) -> dict[str, Any]:
    """The mockup's JSON for a Redfish URI."""
    relative = uri.removeprefix("/redfish/v1").strip("/")
    return json.loads((mockup / relative / "index.json").read_text())


def only_system(mockup: Path) -> dict[str, Any]:
    [member] = resource(mockup, "/redfish/v1/Systems")["Members"]
    return resource(mockup, member["@odata.id"])


def fast(sleeps: list[float] | None = None, attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, first_delay=0.25, factor=2.0,
                       sleep=(sleeps.append if sleeps is not None else lambda _: None))


def redfish(root: str, sleeps: list[float] | None = None, **kwargs: Any) -> RedfishBMC:
    kwargs.setdefault("retry", fast(sleeps))
    return RedfishBMC(root, username=USER, password=PASSWORD, poll_interval=0.01,
                      label="BMC 127.0.0.1 (redfish, node gpu-017)", **kwargs)


@pytest.fixture(scope="module")
def hpe() -> Iterator[str]:
    with serve(HPE) as root:
        yield root


@pytest.fixture(scope="module")
def dmtf() -> Iterator[str]:
    with serve(DMTF) as root:
        yield root


# -- facts from the vendor mockups (real sushy-static) -----------------------------------------


@pytest.mark.parametrize("mockup", [HPE, DMTF], ids=["hpe", "dmtf"])
def test_power_state_is_the_mockups(mockup):
    with serve(mockup) as root:
        assert redfish(root).power_state() == only_system(mockup)["PowerState"].lower()


def inventory_in_files(mockup: Path) -> list[tuple[str, str, str]]:
    collection = resource(mockup, "/redfish/v1/UpdateService/FirmwareInventory")
    items = [resource(mockup, m["@odata.id"]) for m in collection["Members"]]
    return [(item["Id"], item["Name"], item["Version"]) for item in items]


def test_hpe_firmware_inventory_lists_every_component(hpe):
    components = redfish(hpe).firmware_inventory()
    expected = inventory_in_files(HPE)
    assert [(c.id, c.name, c.version) for c in components] == expected
    assert len(components) == 34
    by_name: dict[str, list[str]] = {}
    for component in components:
        by_name.setdefault(component.name, []).append(component.version)
    # The parts an H100 NVL node's bring-up pins, as the iLO reports them.
    assert by_name["iLO 6"] == ["1.66 Dec 13 2024"]
    assert by_name["System ROM"] == ["U58 v2.44 (01/17/2025)"]
    assert by_name["NVIDIA H100 NVL"] == ["96.00.AF.00.02", "96.00.AF.00.02"]
    assert by_name["ConnectX-7 200GE 2P NIC"] == ["28.43.1014"]
    updateable = {c.name: c.updateable for c in components}
    assert updateable["iLO 6"] is True and updateable["NVIDIA H100 NVL"] is False


def test_dmtf_firmware_inventory(dmtf):
    components = redfish(dmtf).firmware_inventory()
    assert [(c.id, c.name, c.version) for c in components] == inventory_in_files(DMTF)
    assert {c.id for c in components} == {"BMC", "SS", "BIOS"}


def test_boot_override_as_the_mockups_say(hpe, dmtf):
    boot = only_system(DMTF)["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Pxe",
                                                                                      "Once")
    override = redfish(dmtf).boot_override()
    assert (override.device, override.persistent, override.mode) == ("pxe", False,
                                                                      boot["BootSourceOverrideMode"])
    assert only_system(HPE)["Boot"]["BootSourceOverrideEnabled"] == "Disabled"
    assert redfish(hpe).boot_override().device is None


def test_dmtf_event_log_entries(dmtf):
    entries = redfish(dmtf).event_log()
    system = only_system(DMTF)
    services = resource(DMTF, system["LogServices"]["@odata.id"])
    log = resource(DMTF, services["Members"][0]["@odata.id"])
    page = resource(DMTF, log["Entries"]["@odata.id"])
    # The page names a next page but its count says it is complete: no request for more
    # (sushy-static would answer 404 to the ?$skiptoken= page).
    assert "@odata.nextLink" in page and page["Members@odata.count"] == len(page["Members"])
    assert [(e.id, e.created, e.severity, e.message) for e in entries] == [
        (m["Id"], m["Created"], m["Severity"], m["Message"]) for m in page["Members"]
    ]
    assert entries[0].message == "Temperature threshold exceeded"


def test_hpe_mockup_has_no_log_entries_and_says_so(hpe):
    with pytest.raises(BMCUnsupported) as failure:
        redfish(hpe).event_log()
    message = str(failure.value)
    assert message.startswith("BMC 127.0.0.1 (redfish, node gpu-017): the BMC offers no log")
    assert "/redfish/v1/Systems/1/LogServices" in message


@pytest.mark.parametrize("mockup", [HPE, DMTF], ids=["hpe", "dmtf"])
def test_reset_types_chosen_from_what_the_system_offers(mockup):
    offered = set(only_system(mockup)["Actions"]["#ComputerSystem.Reset"][
        "ResetType@Redfish.AllowableValues"])
    with serve(mockup) as root:
        assert redfish(root).allowed_reset_types() == offered
    assert choose_reset_types("on", offered) == ["On"]
    assert choose_reset_types("off", offered) == ["ForceOff"]
    assert choose_reset_types("soft", offered) == ["GracefulShutdown"]
    # Neither iLO 6 nor the DMTF system offers PowerCycle.
    assert choose_reset_types("cycle", offered) == ["ForceRestart"]


def test_reset_type_fallbacks():
    assert choose_reset_types("cycle", {"On", "ForceOff", "PowerCycle", "ForceRestart"}) == [
        "PowerCycle"]
    assert choose_reset_types("cycle", {"On", "ForceOff"}) == ["ForceOff", "On"]
    assert choose_reset_types("on", {"ForceOn", "ForceOff"}) == ["ForceOn"]
    with pytest.raises(BMCUnsupported, match="offers no GracefulShutdown reset .*ForceOff, On"):
        choose_reset_types("soft", {"On", "ForceOff"})


# -- the host-data path: HTTPS, the CA bundle, credentials from the secrets file ------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    lab = tmp_path_factory.mktemp("tls")
    cert, key = issue_cert(lab, "bmc-test", ["127.0.0.1"])
    return {"ca": ensure_ca(lab), "cert": cert, "key": key}


@pytest.fixture(scope="module")
def hpe_https(tls) -> Iterator[int]:
    """sushy-static serving the HPE mockup over HTTPS with a certificate from a test CA."""
    from kiln.lab.bmc.static import free_port, sushy_static_command

    port = free_port()
    process = subprocess.Popen(
        [*sushy_static_command(), "--interface", "127.0.0.1", "--port", str(port),
         "--mockup-files", str(HPE), "--ssl-certificate", str(tls["cert"]),
         "--ssl-key", str(tls["key"])],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        redfish(f"https://127.0.0.1:{port}", verify=str(tls["ca"]),
                retry=RetryPolicy(attempts=40, first_delay=0.1, factor=1.0)).power_state()
        yield port
    finally:
        stop_static(process)


def secrets_file(directory: Path, password: str = PASSWORD) -> Path:
    path = directory / "secrets.yaml"
    path.write_text(yaml.safe_dump({"bmc": {"username": USER, "password": password}}))
    path.chmod(0o600)
    return path


def host_data(port: int, secrets: Path, **bmc: Any) -> dict[str, Any]:
    return {
        "kiln_node": "gpu-017",
        "kiln_bmc": {"address": "127.0.0.1", "protocol": "redfish", "port": port,
                     "verify_tls": True, "ca_bundle": None, "credentials": "bmc", **bmc},
        "kiln_secrets_file": str(secrets),
        "kiln_bmc_retry": {"attempts": 2, "first_delay": 0.05},
    }


def test_facts_from_host_data_over_verified_https(hpe_https, tls, tmp_path, monkeypatch):
    for name in ("KILN_BMC_USERNAME", "KILN_BMC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    data = host_data(hpe_https, secrets_file(tmp_path), ca_bundle=str(tls["ca"]))
    assert bmc_facts.power_state(data) == "on"
    inventory = bmc_facts.firmware_inventory(data)
    assert inventory[0] == {"id": "1", "name": "iLO 6", "version": "1.66 Dec 13 2024",
                            "updateable": True}
    assert bmc_facts.boot_override(data) == {"device": None, "persistent": False, "mode": None}


def test_unknown_ca_is_a_tls_error_not_retried(hpe_https, tmp_path):
    sleeps: list[float] = []
    data = host_data(hpe_https, secrets_file(tmp_path))  # no ca_bundle: the system's CAs
    bmc = connect(data, retry=fast(sleeps))
    with pytest.raises(BMCTLSError) as failure:
        bmc.power_state()
    assert "BMC 127.0.0.1:" in str(failure.value) and "node gpu-017" in str(failure.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value)
    assert sleeps == []


def test_verify_tls_false_is_honoured_and_reported_every_time(hpe_https, tmp_path):
    warnings: list[str] = []
    data = host_data(hpe_https, secrets_file(tmp_path), verify_tls=False)
    for _ in range(2):
        assert connect(data, warn=warnings.append, retry=fast()).power_state() == "on"
    assert len(warnings) == 2
    assert all(f"BMC 127.0.0.1:{hpe_https} (redfish, node gpu-017)" in w and
               "verification is OFF" in w for w in warnings)


# -- the lab's BMC: the real sushy-tools emulator, in this process ------------------------------

OLD_BIOS = OLD_FIRMWARE["bios"]
RESET = "/Actions/ComputerSystem.Reset"
SIMPLE_UPDATE = "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate"
MANAGER_RESET_ACTION = "/Actions/Manager.Reset"


class Listener:
    """WSGI middleware in front of the BMC: records each request (method, path, JSON body,
    status it was answered) and changes nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[list[Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        entry = [environ["REQUEST_METHOD"], environ["PATH_INFO"].rstrip("/") or "/",
                 json.loads(raw) if raw else None, None]
        self.seen.append(entry)

        def answered(status: str, headers: Any, exc_info: Any = None) -> Any:
            entry[3] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        return self.app(environ, answered)

    def bodies(self, method: str, path_end: str) -> list[Any]:
        return [body for m, p, body, _ in self.seen if m == method and p.endswith(path_end)]

    def statuses(self, method: str, path: str) -> list[int | None]:
        return [status for m, p, _, status in self.seen if (m, p) == (method, path)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Iterator[str]:
    """The vendor site the BMC downloads from: a released BIOS image and a tampered copy."""
    site = tmp_path_factory.mktemp("images")
    good = blob_bytes("bios", OLD_BIOS)
    (site / blob_file_name("bios", OLD_BIOS)).write_bytes(good)
    tampered = bytearray(good)
    tampered[4096] ^= 0x01
    (site / "tampered-bios.bin").write_bytes(bytes(tampered))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def lab_bmc_server(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """sushy-tools' emulator with the lab driver, configured as kiln/lab/bmc/redfish.py does
    (htpasswd auth, state directory, the node's system), served over HTTPS by werkzeug."""
    from sushy_tools.emulator import main as emulator

    lab = tmp_path_factory.mktemp("lab-bmc")
    prepare_node_hardware(lab, NODE, 1, "gpu", None)
    cert, key = issue_cert(lab, "bmc-role-test", ["127.0.0.1"])
    power = PowerRecorder("on")
    app = emulator.app  # sushy-tools' routes live on this one application
    saved_wsgi, saved_config = app.wsgi_app, dict(app.config)
    if isinstance(app.wsgi_app, emulator.RedfishAuthMiddleware):
        app.wsgi_app = app.wsgi_app.app  # configure() adds auth once: ours, not another test's
    app.configure(extra_config={
        "SUSHY_EMULATOR_AUTH_FILE": str(write_htpasswd(lab / "htpasswd", USER, PASSWORD)),
        "SUSHY_EMULATOR_STATE_DIR": str(lab / "sushy-state"),
        "SUSHY_EMULATOR_FEATURE_SET": "full",
        "SUSHY_EMULATOR_FAKE_SYSTEMS": [lab_system(lab, NODE, "127.0.0.1")],
    })
    driver = LabSystemsDriver(app.config, logging.getLogger("lab-bmc"), lab, NODE, power)
    install(driver, UpdateSettings(fetch_over_http(), seconds=0.2))
    listener = Listener(app)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, listener, threaded=True, ssl_context=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_port}"
    ca = str(ensure_ca(lab))
    [member] = requests.get(f"{url}/redfish/v1/Systems", auth=(USER, PASSWORD),
                            verify=ca).json()["Members"]
    try:
        yield SimpleNamespace(url=url, port=server.server_port, ca=ca, lab=lab, power=power,
                              app=app, requests=listener, system=member["@odata.id"])
    finally:
        server.shutdown()
        app.wsgi_app = saved_wsgi
        app.config.clear()
        app.config.update(saved_config)


@pytest.fixture
def lab_bmc(lab_bmc_server) -> SimpleNamespace:
    """The lab BMC as each test finds it: the node on, no boot override, quick updates."""
    bmc = lab_bmc_server
    bmc.power.state = "on"
    bmc.power.calls.clear()
    bmc.app.lab_update = UpdateSettings(fetch_over_http(), seconds=0.2)
    response = requests.patch(f"{bmc.url}{bmc.system}", auth=(USER, PASSWORD), verify=bmc.ca,
                              json={"Boot": {"BootSourceOverrideEnabled": "Disabled"}})
    assert response.status_code == 204, response.text
    # The BIOS at its defaults, nothing pending.
    lab_bios.pending_path(bmc.lab, NODE).unlink(missing_ok=True)
    profile_file = lab_firmware.profile_path(bmc.lab, NODE)
    profile = read_json(profile_file)
    profile["bios_attributes"] = dict(BIOS_ATTRIBUTES)
    write_json(profile_file, profile)
    bmc.requests.seen.clear()
    return bmc


def lab_redfish(bmc: SimpleNamespace, **kwargs: Any) -> RedfishBMC:
    return redfish(bmc.url, verify=bmc.ca, **kwargs)


def test_power_uses_the_offered_reset_types_and_is_idempotent(lab_bmc):
    bmc = lab_redfish(lab_bmc)
    offered = bmc.allowed_reset_types()
    assert bmc.power_on() is False and lab_bmc.requests.bodies("POST", RESET) == []
    assert bmc.power_off(graceful=True, wait=5) is True
    assert bmc.power_state() == "off"
    assert bmc.power_off(wait=5) is False
    assert bmc.power_on(wait=5) is True
    bmc.power_cycle()
    # The lab system offers no PowerCycle: a cycle is its ForceRestart.
    assert "PowerCycle" not in offered and choose_reset_types("cycle", offered) == [
        "ForceRestart"]
    assert lab_bmc.requests.bodies("POST", RESET) == [
        {"ResetType": "GracefulShutdown"}, {"ResetType": "On"}, {"ResetType": "ForceRestart"}]
    assert lab_bmc.power.calls == [("off", NODE), ("on", NODE, "disk", False),
                                   ("cycle", NODE, "disk", False)]


def test_boot_once_pxe_is_patched_read_back_and_used_by_the_next_boot(lab_bmc):
    bmc = lab_redfish(lab_bmc)
    bmc.set_boot_once("pxe")
    [patch] = lab_bmc.requests.bodies("PATCH", lab_bmc.system)
    # sushy also sends "HttpBootUri": null to a system that has the property, as this one does
    assert {key: value for key, value in patch["Boot"].items() if value is not None} == {
        "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
    override = bmc.boot_override()
    assert (override.device, override.persistent) == ("pxe", False)
    bmc.power_cycle()
    assert lab_bmc.power.calls == [("cycle", NODE, "pxe", False)]
    assert bmc.boot_override().device is None  # a one-time override is used up
    bmc.set_boot_once("disk")
    assert bmc.boot_override().device == "disk"


def test_simple_update_polls_the_task_to_completion(lab_bmc, images):
    name = blob_file_name("bios", OLD_BIOS)
    result = lab_redfish(lab_bmc).update_firmware("BIOS", f"{images}/{name}", timeout=30)
    assert result.state == "Completed"
    assert result.task.startswith("/redfish/v1/TaskService/Tasks/")
    assert result.messages[-2:] == [
        f"Device 'BIOS' successfully updated with image '{name}'.",
        f"Image '{name}' on 'BIOS' is activated at the next system reset "
        "(ComputerSystem.Reset)."]
    assert lab_bmc.requests.bodies("POST", SIMPLE_UPDATE) == [
        {"ImageURI": f"{images}/{name}", "TransferProtocol": "HTTP",
         "Targets": ["/redfish/v1/UpdateService/FirmwareInventory/BIOS"]}]
    # polled: the task was read until it was done
    assert len(lab_bmc.requests.statuses("GET", result.task)) >= 1
    assert lab_firmware.staged_versions(lab_bmc.lab, NODE)["bios"] == OLD_BIOS


def test_a_task_ending_in_exception_names_the_bmc_and_the_task_message(lab_bmc, images):
    with pytest.raises(BMCTaskFailed) as failure:
        lab_redfish(lab_bmc).update_firmware("BIOS", f"{images}/tampered-bios.bin", timeout=30)
    message = str(failure.value)
    assert message.startswith("BMC 127.0.0.1 (redfish, node gpu-017): SimpleUpdate BIOS: task ")
    assert "ended Exception: " in message and "image verification failed" in message


def test_a_task_that_runs_on_is_a_timeout(lab_bmc, images):
    lab_bmc.app.lab_update = UpdateSettings(fetch_over_http(), seconds=5)  # a slow flash write
    name = blob_file_name("bios", OLD_BIOS)
    with pytest.raises(BMCTimeout, match=r"node gpu-017.*still running after 0.3 s, \d+% done"):
        lab_redfish(lab_bmc).update_firmware("BIOS", f"{images}/{name}", timeout=0.3)


def test_update_of_an_unknown_component_lists_the_inventory(lab_bmc):
    with pytest.raises(BMCUnsupported, match=r"no firmware inventory item 'NIC' \(items: BIOS, "
                                             r"BMC\)"):
        lab_redfish(lab_bmc).update_firmware("NIC", "http://mirror/x.bin")
    assert lab_bmc.requests.bodies("POST", SIMPLE_UPDATE) == []


def wrong_password(lab_bmc, sleeps: list[float]) -> RedfishBMC:
    """The lab BMC's client with a password it rejects (retries recorded in `sleeps`)."""
    return RedfishBMC(lab_bmc.url, username=USER, password="wrong-Pa55", retry=fast(sleeps),
                      verify=lab_bmc.ca, label="BMC 127.0.0.1 (redfish, node gpu-017)")


def test_401_is_one_attempt_and_names_the_bmc_not_the_password(lab_bmc):
    sleeps: list[float] = []
    bmc = wrong_password(lab_bmc, sleeps)
    with pytest.raises(BMCAuthError) as failure:
        bmc.power_state()
    message = str(failure.value)
    assert "BMC 127.0.0.1 (redfish, node gpu-017)" in message
    assert "rejected the credentials" in message and "HTTP 401" in message
    assert "wrong-Pa55" not in message and PASSWORD not in message
    assert lab_bmc.requests.statuses("GET", "/redfish/v1/Systems") == [401] and sleeps == []


def test_connection_refused_is_retried_then_unavailable():
    sleeps: list[float] = []  # nothing listens on the port: no BMC is needed for this one
    with pytest.raises(BMCUnavailable, match="node gpu-017.*after 3 attempts"):
        redfish(f"http://127.0.0.1:{free_port()}", sleeps).power_state()
    assert sleeps == [0.25, 0.5]


def test_bmc_restart_is_graceful_and_waits_until_the_bmc_answers_again(lab_bmc):
    bmc = lab_redfish(lab_bmc)
    bmc.power_state()  # connected: the service root was read before the restart
    started = time.monotonic()
    assert bmc.reset_bmc(wait=10, settle=10) == "GracefulRestart"
    assert lab_bmc.requests.bodies("POST", MANAGER_RESET_ACTION) == [
        {"ResetType": "GracefulRestart"}]
    # It saw the BMC's web server down (503 while restarting), then answering again.
    roots = lab_bmc.requests.statuses("GET", "/redfish/v1")
    assert 503 in roots and roots[-1] == 200
    assert time.monotonic() - started >= RESTART_SECONDS * 0.5


def test_operations_change_only_what_differs(lab_bmc, tmp_path, monkeypatch):
    from kiln.roles.bmc import operations

    for name in ("KILN_BMC_USERNAME", "KILN_BMC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    data = host_data(lab_bmc.port, secrets_file(tmp_path), ca_bundle=lab_bmc.ca)
    assert run_operation(data, operations.power, "on") == (True, False)
    assert lab_bmc.requests.bodies("POST", RESET) == []
    assert run_operation(data, operations.power, "off", wait=5) == (True, True)
    assert lab_bmc.requests.bodies("POST", RESET) == [{"ResetType": "ForceOff"}]
    assert lab_bmc.power.calls == [("off", NODE)]
    assert run_operation(data, operations.power, "off") == (True, False)
    assert run_operation(data, operations.boot_once, device="pxe") == (True, True)
    assert run_operation(data, operations.boot_once, device="pxe") == (True, False)
    assert len(lab_bmc.requests.bodies("PATCH", lab_bmc.system)) == 1
    assert run_operation(data, operations.firmware_update, component="BIOS",
                         image_uri="http://127.0.0.1:9/rom.bin", sha256="0" * 64,
                         version=FIRMWARE["bios"]) == (True, False)
    assert lab_bmc.requests.bodies("POST", SIMPLE_UPDATE) == []


def test_firmware_update_operation_checks_the_image_first(lab_bmc, images, tmp_path,
                                                           monkeypatch, caplog):
    from kiln.roles.bmc import operations

    for name in ("KILN_BMC_USERNAME", "KILN_BMC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    uri = f"{images}/{blob_file_name('bios', OLD_BIOS)}"
    digest = hashlib.sha256(blob_bytes("bios", OLD_BIOS)).hexdigest()
    data = host_data(lab_bmc.port, secrets_file(tmp_path), ca_bundle=lab_bmc.ca)
    # A wrong sha256: the host fails, naming the node, and nothing is sent to the BMC.
    assert run_operation(data, operations.firmware_update, component="BIOS", image_uri=uri,
                         sha256="f" * 64, version=OLD_BIOS) == (False, True)
    assert any(r.getMessage().startswith("[@local] node gpu-017: firmware image ") and
               f"has sha256 {digest}" in r.getMessage() for r in caplog.records)
    assert lab_bmc.requests.bodies("POST", SIMPLE_UPDATE) == []
    assert run_operation(data, operations.firmware_update, component="BIOS", image_uri=uri,
                         sha256=digest, version=OLD_BIOS) == (True, True)
    assert [b["ImageURI"] for b in lab_bmc.requests.bodies("POST", SIMPLE_UPDATE)] == [uri]
    assert lab_firmware.staged_versions(lab_bmc.lab, NODE)["bios"] == OLD_BIOS


# -- MockupBMC: faults sushy-tools cannot make --------------------------------------------------


class MockupBMC:
    """Serves a mockup directory as a Redfish BMC that powers its system, answers a queued
    status instead of a request, and shows overlaid fields (see the module docstring). Only
    for the faults the sushy-tools emulator cannot make."""

    def __init__(self, mockup: Path):
        self.mockup = mockup
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: dict[tuple[str, str], list[int]] = {}
        self.credentials: tuple[str, str] | None = (USER, PASSWORD)
        self.overlay: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.scheme = "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))

    def bodies(self, method: str, path: str) -> list[Any]:
        return [body for m, p, body in self.requests if (m, p) == (method, path)]

    def document(self, path: str) -> dict[str, Any] | None:
        file = self.mockup / path.removeprefix("/redfish/v1").strip("/") / "index.json"
        if not file.is_file():
            return None
        document = json.loads(file.read_text())
        for key, value in self.overlay.get(path, {}).items():
            if isinstance(value, dict):
                document[key] = {**document.get(key, {}), **value}
            else:
                document[key] = value
        return document

    def act(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        """What the BMC does for a write; the default: accept and do nothing."""
        system = self.system_path()
        if method == "POST" and path == f"{system}/Actions/ComputerSystem.Reset":
            reset = body.get("ResetType")
            state = {"On": "On", "ForceOn": "On", "ForceOff": "Off",
                     "GracefulShutdown": "Off"}.get(reset)
            if state:
                self.overlay.setdefault(system, {})["PowerState"] = state
            return 204, {}, None
        return 204, {}, None

    def system_path(self) -> str:
        return resource(self.mockup, "/redfish/v1/Systems")["Members"][0]["@odata.id"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        bmc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, document: Any = None,
                        headers: dict[str, str] | None = None) -> None:
                data = json.dumps(document).encode() if document is not None else b""
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self, path: str) -> bool:
                if bmc.credentials is None or path in ("/redfish/v1", "/redfish/v1/"):
                    return True  # the service root is open, as on real BMCs
                user, password = bmc.credentials
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                return self.headers.get("Authorization") == f"Basic {token}"

            def _handle(self, method: str) -> None:
                path = self.path.split("?")[0].rstrip("/") or "/"
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with bmc.lock:
                    bmc.requests.append((method, path, body))
                    queued = bmc.faults.get((method, path))
                    if queued:
                        return self._answer(queued.pop(0), {"error": {"message": "busy"}})
                    if not self._authorized(path):
                        return self._answer(401, {"error": {"message": "unauthorized"}})
                    if method == "GET":
                        document = bmc.document(path)
                        if document is None:
                            return self._answer(404, {"error": {"message": "not found"}})
                        return self._answer(200, document)
                    status, headers, document = bmc.act(method, path, body)
                    return self._answer(status, document, headers)

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PATCH(self) -> None:  # noqa: N802
                self._handle("PATCH")

        return Handler


@pytest.fixture
def hpe_bmc() -> Iterator[MockupBMC]:
    bmc = MockupBMC(HPE)
    yield bmc
    bmc.close()


# -- retries and refusals ---------------------------------------------------------------------
# Hand-built: sushy-tools answers 503 only while a Manager.Reset restarts it (for as long as
# that takes, to every request), never a given number of times, and never 500.


def test_503_twice_then_the_real_answer(hpe_bmc):
    hpe_bmc.faults[("GET", "/redfish/v1/Systems/1")] = [503, 503]
    sleeps: list[float] = []
    assert redfish(hpe_bmc.url, sleeps).power_state() == "on"
    assert hpe_bmc.seen("GET", "/redfish/v1/Systems/1") == 3
    assert sleeps == [0.25, 0.5]  # exponential backoff


def test_503_past_the_bound_is_unavailable_naming_the_bmc(hpe_bmc):
    hpe_bmc.faults[("GET", "/redfish/v1/Systems/1")] = [503] * 10
    sleeps: list[float] = []
    with pytest.raises(BMCUnavailable) as failure:
        redfish(hpe_bmc.url, sleeps).power_state()
    assert str(failure.value).startswith("BMC 127.0.0.1 (redfish, node gpu-017): read the "
                                         "power state: no usable answer after 3 attempts")
    assert "HTTP 503" in str(failure.value) and len(sleeps) == 2


def test_a_write_is_retried_only_when_the_bmc_did_not_act(hpe_bmc):
    reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    hpe_bmc.faults[("POST", reset)] = [503]
    assert redfish(hpe_bmc.url).power_off(wait=5) is True
    assert hpe_bmc.bodies("POST", reset) == [{"ResetType": "ForceOff"}] * 2
    hpe_bmc.faults[("POST", reset)] = [500]  # may have acted: reading state is the way on
    with pytest.raises(BMCUnavailable, match="not retried: the request may have reached"):
        redfish(hpe_bmc.url).power_on(wait=5)
    assert len(hpe_bmc.bodies("POST", reset)) == 3


def test_retry_policy_delays_and_bounds():
    policy = RetryPolicy(attempts=6, first_delay=1.0, factor=3.0, max_delay=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 10.0, 10.0]
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)


# -- power against a BMC that accepts and does nothing (hand-built: sushy-tools always acts) --


def test_power_change_that_never_shows_times_out(hpe_bmc):
    hpe_bmc.act = lambda method, path, body: (204, {}, None)  # accepts, does nothing
    with pytest.raises(BMCTimeout, match="node gpu-017.*still 'on' 0.2 s after asking"):
        redfish(hpe_bmc.url).power_off(wait=0.2)


# -- restarting the BMC (Manager.Reset) --------------------------------------------------------

MANAGER = "/redfish/v1/Managers/1"
MANAGER_RESET = f"{MANAGER}/Actions/Manager.Reset"


def offering(*resets: str) -> dict[str, Any]:
    return {"Actions": {"#Manager.Reset": {"target": MANAGER_RESET,
                                           "ResetType@Redfish.AllowableValues": list(resets)}}}


# Hand-built: the lab's Manager (sushy-tools has none) offers GracefulRestart and
# ForceRestart and comes back Enabled; another offer, or a Manager that stays Starting, is
# made here.


def test_bmc_restart_falls_back_to_force_restart(hpe_bmc):
    hpe_bmc.overlay[MANAGER] = offering("ForceRestart")
    assert redfish(hpe_bmc.url).reset_bmc(wait=1, settle=0) == "ForceRestart"
    assert hpe_bmc.bodies("POST", MANAGER_RESET) == [{"ResetType": "ForceRestart"}]


def test_bmc_restart_the_manager_does_not_offer_is_refused_naming_the_bmc(hpe_bmc):
    hpe_bmc.overlay[MANAGER] = offering("Nmi")
    with pytest.raises(BMCUnsupported, match=r"^BMC 127.0.0.1 \(redfish, node gpu-017\): the "
                       r"manager offers no GracefulRestart or ForceRestart reset \(it offers "
                       r"Nmi\)"):
        redfish(hpe_bmc.url).reset_bmc(wait=1)
    assert hpe_bmc.bodies("POST", MANAGER_RESET) == []


def test_a_manager_that_does_not_come_back_enabled_is_a_timeout(hpe_bmc):
    hpe_bmc.overlay[MANAGER] = {"Status": {"State": "Starting"}}
    with pytest.raises(BMCTimeout, match=r"^BMC 127.0.0.1 \(redfish, node gpu-017\): the BMC "
                       r"is not back 0.3 s after its restart \(last seen: Manager Status "
                       r"State 'Starting', Health 'OK'\)"):
        redfish(hpe_bmc.url).reset_bmc(wait=0.3)
    assert len(hpe_bmc.bodies("POST", MANAGER_RESET)) == 1


def test_a_bmc_reset_that_may_have_reached_the_bmc_is_not_sent_again(hpe_bmc):
    hpe_bmc.faults[("POST", MANAGER_RESET)] = [500]
    with pytest.raises(BMCUnavailable, match="Manager.Reset \\(GracefulRestart\\).*not retried"):
        redfish(hpe_bmc.url).reset_bmc(wait=1)
    assert len(hpe_bmc.bodies("POST", MANAGER_RESET)) == 1


def run_operation(data: dict[str, Any], op: Any, *args: Any,
                  **kwargs: Any) -> tuple[bool, bool]:
    """Run one pyinfra operation on a host with `data` (pyinfra's API); (success, changed)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    inventory = Inventory(([("@local", data)], {}))
    state = State(inventory, Config())
    connect_all(state)
    add_op(state, op, *args, **kwargs)
    try:
        run_ops(state)
    except PyinfraError as exc:  # the one host failed: pyinfra has none left to run
        assert "No hosts remaining" in str(exc)
    host = inventory.get_host("@local")
    meta, results = state.get_meta_for_host(host), state.get_results_for_host(host)
    return results.error_ops == 0, meta.ops_change > 0


def test_an_unreachable_bmc_fails_its_host_alone(tmp_path, tls, caplog):
    from kiln.lab.bmc.static import free_port
    from kiln.roles.bmc import operations

    data = host_data(free_port(), secrets_file(tmp_path), ca_bundle=str(tls["ca"]))
    assert run_operation(data, operations.power, "on") == (False, True)
    assert any("BMC 127.0.0.1:" in r.getMessage() and "node gpu-017" in r.getMessage() and
               "Connection refused" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)


# -- connect: choosing the client and its credentials ----------------------------------------------


def test_connect_chooses_by_protocol_and_reads_credentials(tmp_path):
    from kiln.roles.bmc.ipmi import IpmiBMC

    path = secrets_file(tmp_path)
    ipmi = connect({"kiln_node": "svc-001", "kiln_secrets_file": str(path),
                    "kiln_bmc": {"address": "10.231.1.19", "protocol": "ipmi",
                                 "cipher_suite": 3}}, env={})
    assert isinstance(ipmi, IpmiBMC) and ipmi.label == "BMC 10.231.1.19 (ipmi, node svc-001)"
    assert ipmi.argv("mc", "info")[-4:] == ["-C", "3", "mc", "info"]
    env = {"KILN_BMC_USERNAME": "from-env", "KILN_BMC_PASSWORD": "env-Pa55"}
    red = connect({"address": "bmc-17.example.net", "ca_bundle": "/etc/kiln/ca.pem"},
                  node="gpu-017", env=env, secrets_file=path)
    assert isinstance(red, RedfishBMC)
    assert (red.url, red.verify, red._username) == ("https://bmc-17.example.net:443",
                                                   "/etc/kiln/ca.pem", "from-env")


def test_connect_errors_name_the_node_and_field(tmp_path):
    with pytest.raises(BMCError, match=r"node gpu-003: host data kiln_bmc: protocol: input "
                                       r"should be"):
        connect({"kiln_node": "gpu-003", "kiln_bmc": {"address": "10.0.0.3",
                                                      "protocol": "idrac"}}, env={})
    with pytest.raises(BMCError, match="node gpu-004: host data has no kiln_bmc"):
        connect({"kiln_node": "gpu-004"}, env={})
    with pytest.raises(BMCError, match=r"^BMC 10.0.0.5 \(redfish, node gpu-005\): no "
                                       r"credentials for 'bmc-gpu-005': set "
                                       r"KILN_BMC_GPU_005_USERNAME"):
        connect({"kiln_node": "gpu-005", "kiln_bmc": {"address": "10.0.0.5",
                                                      "credentials": "bmc-gpu-005"}}, env={})
    with pytest.raises(BMCError, match="node gpu-008: kiln_bmc_retry: expected a mapping of"):
        connect({"kiln_node": "gpu-008", "kiln_bmc": {"address": "10.0.0.8"},
                 "kiln_bmc_retry": {"tries": 3}}, env={})
    with pytest.raises(BMCError, match="cipher_suite: input should be less than or equal to 17"):
        connect({"address": "10.0.0.6", "protocol": "ipmi", "cipher_suite": 99}, env={})


# -- BIOS attributes ---------------------------------------------------------------------------

BIOS_SETTINGS = "/BIOS/Settings"


def test_dmtf_bios_attributes_are_the_mockups(dmtf):
    expected = resource(DMTF, only_system(DMTF)["Bios"]["@odata.id"])["Attributes"]
    attributes = redfish(dmtf).bios_attributes()
    assert attributes == expected and len(attributes) == 10
    # Typed as the BMC typed them: an Integer attribute stays an int.
    assert attributes["ProcCoreDisable"] == 0 and attributes["BootMode"] == "Uefi"


def dmtf_without_bios(directory: Path, keep_link: bool) -> Path:
    """The DMTF mockup with its Bios resource removed, and its link too unless `keep_link`."""
    copy = directory / "mockup"
    shutil.copytree(DMTF, copy)
    system_dir = copy / "Systems" / "437XR1138R2"
    shutil.rmtree(system_dir / "Bios")
    if not keep_link:
        document = json.loads((system_dir / "index.json").read_text())
        del document["Bios"]
        (system_dir / "index.json").write_text(json.dumps(document))
    return copy


@pytest.mark.parametrize("keep_link, said", [
    (False, "the system /redfish/v1/Systems/437XR1138R2 links no Bios resource: this BMC "
            "offers no BIOS attributes over Redfish"),
    (True, "the system /redfish/v1/Systems/437XR1138R2 links a Bios resource, but the BMC "
           "has none: "),
], ids=["no-link", "linked-but-404"])
def test_a_bmc_without_a_bios_resource_is_unsupported(tmp_path, keep_link, said):
    sleeps: list[float] = []
    with serve(dmtf_without_bios(tmp_path, keep_link)) as root:
        bmc = redfish(root, sleeps)
        assert bmc.power_state() == "on"  # the rest of the BMC answers
        with pytest.raises(BMCUnsupported) as failure:
            bmc.bios_attributes()
    assert str(failure.value).startswith(f"BMC 127.0.0.1 (redfish, node gpu-017): {said}")
    assert sleeps == []  # an answer, not a transient failure: not retried


def test_lab_bios_attributes_are_the_nodes_and_hold_what_the_manifest_pins(lab_bmc, tmp_path,
                                                                          monkeypatch):
    attributes = lab_redfish(lab_bmc).bios_attributes()
    assert attributes == BIOS_ATTRIBUTES
    pinned = load_manifest(ROOT / "kiln" / "firmware" / "lab.yaml").settings.bios
    assert pinned and {name: attributes.get(name) for name in pinned} == pinned
    assert lab_bmc.requests.statuses("GET", f"{lab_bmc.system}/BIOS") == [200]
    # The fact, from host data as a deploy has it.
    for name in ("KILN_BMC_USERNAME", "KILN_BMC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    data = host_data(lab_bmc.port, secrets_file(tmp_path), ca_bundle=lab_bmc.ca)
    assert bmc_facts.bios_attributes(data) == BIOS_ATTRIBUTES


def test_a_bios_attribute_patched_over_redfish_is_read_back_after_the_reset(lab_bmc):
    bmc = lab_redfish(lab_bmc)
    response = requests.patch(f"{lab_bmc.url}{lab_bmc.system}{BIOS_SETTINGS}",
                              json={"Attributes": {"SriovGlobalEnable": "Enabled"}},
                              auth=(USER, PASSWORD), verify=lab_bmc.ca)
    assert response.status_code == 204, response.text
    # A BIOS setting takes effect at the next reset: until then the BMC reports the old one.
    assert bmc.bios_attributes()["SriovGlobalEnable"] == "Disabled"
    bmc.power_cycle()
    assert lab_bmc.power.calls == [("cycle", NODE, "disk", False)]
    reboot_node(lab_bmc.lab)  # the node boots (the lab's boot hook)
    assert bmc.bios_attributes() == {**BIOS_ATTRIBUTES, "SriovGlobalEnable": "Enabled"}


def test_bios_attributes_with_a_wrong_password_is_one_attempt_and_an_auth_error(lab_bmc):
    sleeps: list[float] = []
    bmc = wrong_password(lab_bmc, sleeps)
    with pytest.raises(BMCAuthError) as failure:
        bmc.bios_attributes()
    message = str(failure.value)
    assert message.startswith("BMC 127.0.0.1 (redfish, node gpu-017): the BMC rejected the "
                              "credentials")
    assert "HTTP 401 on read the BIOS attributes" in message and "wrong-Pa55" not in message
    assert lab_bmc.requests.statuses("GET", "/redfish/v1/Systems") == [401] and sleeps == []


def test_bios_attributes_from_a_bmc_that_does_not_answer_is_unavailable():
    sleeps: list[float] = []
    with pytest.raises(BMCUnavailable, match="node gpu-017.*read the BIOS attributes"):
        redfish(f"http://127.0.0.1:{free_port()}", sleeps).bios_attributes()
    assert sleeps == [0.25, 0.5]
