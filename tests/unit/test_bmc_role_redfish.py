"""roles/bmc over Redfish: the real sushy client against the real vendor mockups.

Read-only facts come from the HPE DL380a Gen11 (H100 NVL) iLO 6 and DMTF public-rackmount1
mockups served by the real `sushy-static` (lab/bmc/static.py; over HTTPS with a test CA for
the host-data path). Expected values are read from the mockup files themselves.

What sushy-static cannot do (change state, fail on purpose, run a task) is done by
`MockupBMC` below: an HTTP server that serves the same mockup files and, on top, applies
resets and boot PATCHes to the system it serves, answers 503/401 when told to, and runs a
SimpleUpdate task through a scripted sequence of task-monitor answers. It stands in for the
BMC, never for the client under test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.lab.bmc.static import serve
from kiln.lab.bmc.static import stop as stop_static
from kiln.lab.tls import ensure_ca, issue_cert
from kiln.roles.bmc import (
    BMCAuthError,
    BMCError,
    BMCTaskFailed,
    BMCTimeout,
    BMCTLSError,
    BMCUnavailable,
    BMCUnsupported,
    RetryPolicy,
    connect,
)
from kiln.roles.bmc import facts as bmc_facts
from kiln.roles.bmc.redfish import RedfishBMC, choose_reset_types

ROOT = Path(__file__).resolve().parents[2]
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


# -- MockupBMC: the mockup plus state, faults and tasks -------------------------------------------


class MockupBMC:
    """Serves a mockup directory as a Redfish BMC that acts (see the module docstring)."""

    def __init__(self, mockup: Path, tls: dict[str, Path] | None = None):
        self.mockup = mockup
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: dict[tuple[str, str], list[int]] = {}
        self.credentials: tuple[str, str] | None = (USER, PASSWORD)
        self.overlay: dict[str, dict[str, Any]] = {}
        self.task_answers: list[tuple[int, dict[str, Any]]] = []
        self.lock = threading.Lock()
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls["cert"], tls["key"])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
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
        if method == "PATCH" and path == system:
            self.overlay.setdefault(system, {}).setdefault("Boot", {}).update(body["Boot"])
            return 204, {}, None
        if method == "POST" and path.endswith("SimpleUpdate"):
            status, task = self.task_answers[0]
            return 202, {"Location": task["@odata.id"]}, task
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
                    if method == "GET" and bmc.task_answers and any(
                            path == task["@odata.id"] for _, task in bmc.task_answers):
                        status, task = bmc.task_answers.pop(0) if len(
                            bmc.task_answers) > 1 else bmc.task_answers[0]
                        headers = {"Location": task["@odata.id"], "Retry-After": "0"} \
                            if status == 202 else {}
                        return self._answer(status, task, headers)
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


def test_401_is_one_attempt_and_names_the_bmc_not_the_password(hpe_bmc):
    sleeps: list[float] = []
    bmc = RedfishBMC(hpe_bmc.url, username=USER, password="wrong-Pa55", retry=fast(sleeps),
                     label="BMC 127.0.0.1 (redfish, node gpu-017)")
    with pytest.raises(BMCAuthError) as failure:
        bmc.power_state()
    message = str(failure.value)
    assert "BMC 127.0.0.1 (redfish, node gpu-017)" in message
    assert "rejected the credentials" in message and "HTTP 401" in message
    assert "wrong-Pa55" not in message and PASSWORD not in message
    assert hpe_bmc.seen("GET", "/redfish/v1/Systems") == 1 and sleeps == []


def test_connection_refused_is_retried_then_unavailable(hpe_bmc):
    url = hpe_bmc.url
    hpe_bmc.close()  # nothing listens there now
    sleeps: list[float] = []
    with pytest.raises(BMCUnavailable, match="node gpu-017.*after 3 attempts"):
        redfish(url, sleeps).power_state()
    assert sleeps == [0.25, 0.5]


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


# -- power and boot against a BMC that acts -------------------------------------------------------


def test_power_uses_the_offered_reset_types_and_is_idempotent(hpe_bmc):
    reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    bmc = redfish(hpe_bmc.url)
    assert bmc.power_on() is False and hpe_bmc.bodies("POST", reset) == []
    assert bmc.power_off(graceful=True, wait=5) is True
    assert bmc.power_state() == "off"
    assert bmc.power_off(wait=5) is False
    assert bmc.power_on(wait=5) is True
    bmc.power_cycle()
    assert hpe_bmc.bodies("POST", reset) == [
        {"ResetType": "GracefulShutdown"}, {"ResetType": "On"}, {"ResetType": "ForceRestart"}]


def test_power_change_that_never_shows_times_out(hpe_bmc):
    hpe_bmc.act = lambda method, path, body: (204, {}, None)  # accepts, does nothing
    with pytest.raises(BMCTimeout, match="node gpu-017.*still 'on' 0.2 s after asking"):
        redfish(hpe_bmc.url).power_off(wait=0.2)


def test_boot_once_pxe_is_patched_and_read_back(hpe_bmc):
    bmc = redfish(hpe_bmc.url)
    bmc.set_boot_once("pxe")
    assert hpe_bmc.bodies("PATCH", "/redfish/v1/Systems/1") == [
        {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}]
    assert bmc.boot_override().device == "pxe" and bmc.boot_override().persistent is False
    bmc.set_boot_once("disk")
    assert bmc.boot_override().device == "disk"


# -- SimpleUpdate and its task ---------------------------------------------------------------------

TASK = "/redfish/v1/TaskService/Tasks/7"


def task(state: str, messages: list[str], percent: int) -> dict[str, Any]:
    return {"@odata.id": TASK, "@odata.type": "#Task.v1_7_3.Task", "Id": "7",
            "Name": "SimpleUpdate", "TaskState": state, "PercentComplete": percent,
            "TaskStatus": "Critical" if state == "Exception" else "OK",
            "Messages": [{"MessageId": "Update.1.0.X", "Message": m} for m in messages]}


def test_simple_update_polls_the_task_to_completion(hpe_bmc):
    hpe_bmc.task_answers = [
        (202, task("Running", ["Transferring image 'rom.fwpkg'."], 5)),
        (202, task("Running", ["Installing image 'rom.fwpkg'."], 40)),
        (200, task("Completed", ["Device 'System ROM' updated.", "Activate at next reset."],
                   100)),
    ]
    result = redfish(hpe_bmc.url).update_firmware("2", "http://10.231.0.1:8081/rom.fwpkg",
                                                  timeout=10)
    assert result.state == "Completed" and result.task == TASK
    assert result.messages == ["Device 'System ROM' updated.", "Activate at next reset."]
    [body] = hpe_bmc.bodies("POST", "/redfish/v1/UpdateService/Actions/"
                                    "UpdateService.SimpleUpdate")
    assert body == {"ImageURI": "http://10.231.0.1:8081/rom.fwpkg", "TransferProtocol": "HTTP",
                    "Targets": ["/redfish/v1/UpdateService/FirmwareInventory/2"]}


def test_a_task_ending_in_exception_names_the_bmc_and_the_task_message(hpe_bmc):
    hpe_bmc.task_answers = [
        (202, task("Running", [], 5)),
        (200, task("Exception", ["Image verification failed: bad signature"], 30)),
    ]
    with pytest.raises(BMCTaskFailed) as failure:
        redfish(hpe_bmc.url).update_firmware("1", "https://mirror/ilo6.bin", timeout=10)
    message = str(failure.value)
    assert message.startswith("BMC 127.0.0.1 (redfish, node gpu-017): SimpleUpdate 1: task ")
    assert "ended Exception: Image verification failed: bad signature" in message


def test_a_task_that_runs_on_is_a_timeout(hpe_bmc):
    hpe_bmc.task_answers = [(202, task("Running", [], 40))]
    with pytest.raises(BMCTimeout, match="node gpu-017.*still running after 0.3 s, 40% done"):
        redfish(hpe_bmc.url).update_firmware("2", "http://mirror/rom.bin", timeout=0.3)


def test_update_of_an_unknown_component_lists_the_inventory(hpe_bmc):
    with pytest.raises(BMCUnsupported, match="no firmware inventory item 'BIOS' .*items: 1, 2"):
        redfish(hpe_bmc.url).update_firmware("BIOS", "http://mirror/x.bin")


# -- pyinfra operations ----------------------------------------------------------------------------


# -- restarting the BMC (Manager.Reset) --------------------------------------------------------

MANAGER = "/redfish/v1/Managers/1"
MANAGER_RESET = f"{MANAGER}/Actions/Manager.Reset"


def offering(*resets: str) -> dict[str, Any]:
    return {"Actions": {"#Manager.Reset": {"target": MANAGER_RESET,
                                           "ResetType@Redfish.AllowableValues": list(resets)}}}


def test_bmc_restart_is_graceful_and_waits_until_the_bmc_answers_again(hpe_bmc):
    offered = resource(HPE, MANAGER)["Actions"]["#Manager.Reset"]
    assert set(offered["ResetType@Redfish.AllowableValues"]) == {"ForceRestart",
                                                                 "GracefulRestart"}
    bmc = redfish(hpe_bmc.url)
    bmc.power_state()  # connected: the service root was read before the restart
    hpe_bmc.faults[("GET", "/redfish/v1")] = [503, 503]  # the BMC's web server is down
    assert bmc.reset_bmc(wait=10, settle=10) == "GracefulRestart"
    assert hpe_bmc.bodies("POST", MANAGER_RESET) == [{"ResetType": "GracefulRestart"}]
    assert hpe_bmc.faults[("GET", "/redfish/v1")] == []  # both 503s were seen, then an answer


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


@pytest.fixture
def hpe_https_bmc(tls) -> Iterator[MockupBMC]:
    bmc = MockupBMC(HPE, tls)
    yield bmc
    bmc.close()


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


def test_operations_change_only_what_differs(hpe_https_bmc, tls, tmp_path, monkeypatch):
    from kiln.roles.bmc import operations

    for name in ("KILN_BMC_USERNAME", "KILN_BMC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    data = host_data(hpe_https_bmc.port, secrets_file(tmp_path), ca_bundle=str(tls["ca"]))
    reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    assert run_operation(data, operations.power, "on") == (True, False)
    assert hpe_https_bmc.bodies("POST", reset) == []
    assert run_operation(data, operations.power, "off", wait=5) == (True, True)
    assert hpe_https_bmc.bodies("POST", reset) == [{"ResetType": "ForceOff"}]
    assert run_operation(data, operations.power, "off") == (True, False)
    assert run_operation(data, operations.boot_once, device="pxe") == (True, True)
    assert run_operation(data, operations.boot_once, device="pxe") == (True, False)
    assert len(hpe_https_bmc.bodies("PATCH", "/redfish/v1/Systems/1")) == 1
    same = resource(HPE, "/redfish/v1/UpdateService/FirmwareInventory/2")["Version"]
    assert run_operation(data, operations.firmware_update, component="2",
                         image_uri="http://127.0.0.1:9/rom.bin", sha256="0" * 64,
                         version=same) == (True, False)


def test_firmware_update_operation_checks_the_image_first(hpe_https_bmc, tls, tmp_path,
                                                           monkeypatch, caplog):
    from kiln.roles.bmc import operations

    for name in ("KILN_BMC_USERNAME", "KILN_BMC_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    image = tmp_path / "rom.bin"
    image.write_bytes(os.urandom(4096))
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    site = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        port = int(site.stdout.readline().split("port ")[1].split()[0])
        uri = f"http://127.0.0.1:{port}/rom.bin"
        data = host_data(hpe_https_bmc.port, secrets_file(tmp_path), ca_bundle=str(tls["ca"]))
        update = "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate"
        # A wrong sha256: the host fails, naming the node, and nothing is sent to the BMC.
        assert run_operation(data, operations.firmware_update, component="2", image_uri=uri,
                             sha256="f" * 64, version="new") == (False, True)
        assert any(r.getMessage().startswith("[@local] node gpu-017: firmware image ") and
                   f"has sha256 {digest}" in r.getMessage() for r in caplog.records)
        assert hpe_https_bmc.bodies("POST", update) == []
        hpe_https_bmc.task_answers = [(200, task("Completed", ["done"], 100))]
        assert run_operation(data, operations.firmware_update, component="2", image_uri=uri,
                             sha256=digest, version="new") == (True, True)
        assert [b["ImageURI"] for b in hpe_https_bmc.bodies("POST", update)] == [uri]
    finally:
        site.terminate()
        site.wait()


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
    with pytest.raises(BMCError, match=r"node gpu-003: kiln_bmc: protocol: input should be"):
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

