"""Harness for the MAAS simulator's unit tests (no root, no running lab).

The thing under test is the simulator: its HTTP API (Flask's test client), its lifecycle and
its store, on a lab directory in tmp_path with real hardware profiles, real lab credentials
and the real lab/netboot.py files. At the BMC boundary it gets `LabBmcDouble`s, which play
a node's BMC and what the lab does on a PXE boot (lab/cluster.py): a commissioning boot
records the hardware inventory and powers off, an erase boot records ok and powers off (the
double has no disk to blank), a deploy boot records ok (or failed, for a
node given the boot-fail fault), a node that never finishes records nothing.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oauthlib.oauth1 import SIGNATURE_PLAINTEXT, Client

from kiln.lab import netboot
from kiln.lab.credentials import ensure_lab_secrets, read_lab_secrets
from kiln.lab.hwsim.profile import generate_profile
from kiln.lab.maas_sim import write_fresh_store
from kiln.lab.maas_sim.api import create_app
from kiln.lab.maas_sim.enlist import lab_image
from kiln.lab.maas_sim.lifecycle import Timing
from kiln.lab.maas_sim.power import PowerError, PowerFatalError
from kiln.lab.maas_sim.server import build_simulator
from kiln.lab.state import LabState, plan_nodes, save_state

FAST = Timing(step=0.02, poll=0.01, commission_timeout=5, deploy_timeout=5,
              release_timeout=5, erase=0.02, power_waits=(0.01, 0.01, 0.01))
API = "/MAAS/api/2.0/"


@dataclass
class LabBmcDouble:
    lab: Path
    node: str
    state: str = "off"
    reachable: bool = True
    refuses: bool = False  # the BMC answers 401: a wrong password
    failures: int = 0  # the next calls that fail as a busy BMC's do (HTTP 500)
    boot_fail: bool = False
    finishes: bool = True  # False: a PXE boot that never reports back
    boot_seconds: float = 0.0  # how long the lab takes before it reports
    calls: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _check(self) -> None:
        if not self.reachable:
            raise PowerError(f"Redfish BMC https://{self.node}-bmc: connection refused")
        if self.refuses:
            raise PowerFatalError(f"Redfish BMC https://{self.node}-bmc: returned code 401")
        if self.failures:
            self.failures -= 1
            self.calls.append("failed")
            raise PowerError(f"Redfish BMC https://{self.node}-bmc: returned code 500")

    def power_state(self) -> str:
        self._check()
        self.calls.append("query")
        return self.state

    def power_off(self) -> None:
        self._check()
        self.calls.append("off")
        self.state = "off"

    def power_on(self, pxe: bool) -> None:
        self._check()
        self.calls.append("on-pxe" if pxe else "on-disk")
        self.state = "on"
        request = netboot.pending(self.lab, self.node) if pxe else None
        if request is None:
            return
        netboot.cancel(self.lab, self.node)
        self.requests.append(request)
        if not self.finishes:
            return
        if self.boot_seconds:
            threading.Timer(self.boot_seconds, self._boot, args=(request,)).start()
        else:
            self._boot(request)

    def _boot(self, request: dict[str, Any]) -> None:
        if request["action"] == "commission":
            profile = json.loads((self.lab / "hw" / self.node / "profile.json").read_text())
            netboot.record_result(self.lab, self.node, "commission", True,
                                  hardware=netboot.hardware_summary(profile))
            self.state = "off"
        elif request["action"] == "erase":
            netboot.record_result(self.lab, self.node, "erase", True)
            self.state = "off"
        elif self.boot_fail:
            netboot.record_result(self.lab, self.node, "deploy", False,
                                  error=f"{self.node}: image does not boot (boot-fail)")
        else:
            netboot.record_result(self.lab, self.node, "deploy", True)


def make_lab(root: Path, gpu: int = 2, service: int = 1) -> LabState:
    lab = root / "lab"
    state = LabState(lab_dir=str(lab), ssh_key=str(lab / "ssh" / "id_ed25519"),
                     nodes=plan_nodes(gpu, service),
                     secrets_file=str(ensure_lab_secrets(lab)),
                     tls_ca=str(lab / "tls" / "ca.pem"))
    for node in state.nodes:
        profile = generate_profile(node.name, node.index, node.role)
        path = lab / "hw" / node.name / "profile.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(profile))
    save_state(state, lab)
    return state


class MaasClient:
    """Signs like a MAAS client (oauthlib's OAuth1 PLAINTEXT), sends multipart forms."""

    def __init__(self, flask_client: Any, api_key: str) -> None:
        self.http = flask_client
        consumer, token, secret = api_key.split(":")
        self._keys = (consumer, token, secret)

    def headers(self, url: str, method: str) -> dict[str, str]:
        consumer, token, secret = self._keys
        client = Client(consumer, client_secret="", resource_owner_key=token,
                        resource_owner_secret=secret, signature_method=SIGNATURE_PLAINTEXT)
        _, headers, _ = client.sign(f"http://10.231.0.1:5240{url}", http_method=method)
        return headers

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        url = API + path
        return self.http.get(url, query_string=query or {}, headers=self.headers(url, "GET"))

    def post(self, path: str, op: str | None = None, **fields: Any) -> Any:
        url = API + path
        query = {"op": op} if op else {}
        # A field-less operation still sends a (one-field) form: MAAS's document requires
        # a body on every POST.
        form = fields or {"comment": "kiln unit test"}
        return self.http.post(url, query_string=query, data=form,
                              content_type="multipart/form-data",
                              headers=self.headers(url, "POST"))

    def delete(self, path: str) -> Any:
        url = API + path
        return self.http.delete(url, headers=self.headers(url, "DELETE"))

    def machine(self, system_id: str) -> dict[str, Any]:
        response = self.get(f"machines/{system_id}/")
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def by_hostname(self, hostname: str) -> dict[str, Any]:
        found = self.get("machines/", {"hostname": hostname}).get_json()
        assert len(found) == 1, found
        return found[0]


@dataclass
class SimHarness:
    lab: Path
    state: LabState
    simulator: Any
    client: MaasClient
    bmcs: dict[str, LabBmcDouble]
    logs: list[str]

    @property
    def api_key(self) -> str:
        return read_lab_secrets(self.lab)["maas"]["api_key"]

    def wait(self, system_id: str, status_name: str, timeout: float = 5.0,
             seen: list[str] | None = None) -> dict[str, Any]:
        """Poll until the machine has `status_name`; `seen` collects status messages."""
        deadline = time.monotonic() + timeout
        while True:
            machine = self.client.machine(system_id)
            if seen is not None and (not seen or seen[-1] != machine["status_message"]):
                seen.append(machine["status_message"])
            if machine["status_name"] == status_name:
                return machine
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{machine['hostname']} is {machine['status_name']} "
                    f"({machine['status_message']}), not {status_name}, after {timeout} s"
                )
            time.sleep(0.01)

    def settle(self) -> None:
        """Let the workers of finished transitions exit."""
        for thread in list(self.simulator.lifecycle.threads):
            thread.join(timeout=5)


def build(root: Path, deployed: bool = False, timing: Timing = FAST, gpu: int = 2,
          service: int = 1, bmcs: dict[str, LabBmcDouble] | None = None) -> SimHarness:
    lab = root / "lab"
    if not (lab / "state.json").exists():
        state = make_lab(root, gpu, service)
        write_fresh_store(lab, state, deployed)
    else:
        from kiln.lab.state import load_state

        state = load_state(lab)
    if bmcs is None:
        bmcs = {n.name: LabBmcDouble(lab, n.name, state="on" if deployed else "off")
                for n in state.nodes}
    logs: list[str] = []
    simulator = build_simulator(lab, timing, lab_image(),
                                power=lambda machine: bmcs[machine.hostname],
                                log=logs.append)
    simulator.lifecycle.resume()
    client = MaasClient(create_app(simulator).test_client(),
                        read_lab_secrets(lab)["maas"]["api_key"])
    return SimHarness(lab, state, simulator, client, bmcs, logs)


def system_id_of(harness: SimHarness, hostname: str) -> str:
    return harness.client.by_hostname(hostname)["system_id"]

