"""The MAAS simulator in a running lab brought up as a new rack: New machines are
commissioned and deployed through their real BMCs (Redfish for gpu-001, IPMI for svc-001)
and the lab's PXE side, and come up on a fresh root filesystem that takes the SSH key the
deploy's user_data carried; gpu-002, whose image never boots (fault boot-fail), ends in
Failed deployment. Spoken to over HTTP with requests and OAuth1 PLAINTEXT, not kiln's
client: the thing under test is the simulator.

The lab is a new rack (not deployed) of 2 GPU nodes and 1 service node, from the session's
`lab_shapes`.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from kiln.lab.credentials import read_lab_secrets
from kiln.lab.maas_sim.openapi_check import check_requests, read_requests
from kiln.lab.state import load_state

pytestmark = pytest.mark.lab

MARKER = "/root/kiln-maas-sim-marker"
BROKEN = "gpu-002"  # its image does not boot
TIMEOUT = 600  # seconds a transition may take here; MAAS's own deadlines are longer


@pytest.fixture(scope="module")
def new_rack(lab_shapes, tmp_path_factory):
    faults = tmp_path_factory.mktemp("faults") / "faults.yaml"
    faults.write_text(f"faults:\n  - {{node: {BROKEN}, kind: boot-fail, first_ok: 0}}\n")
    state = lab_shapes.new_rack(2, 1, faults)
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "maas-sim-test",
                    "-f", str(key)], check=True)
    yield state, key
    lab_shapes.forget()  # machines were reimaged: not a fresh new rack any more


class Maas:
    def __init__(self, url: str, api_key: str) -> None:
        consumer, token, secret = api_key.split(":")
        self.api = url.rstrip("/") + "/api/2.0/"
        self._auth = (consumer, token, secret)

    def _oauth(self) -> OAuth1:
        consumer, token, secret = self._auth
        return OAuth1(consumer, client_secret="", resource_owner_key=token,
                      resource_owner_secret=secret, signature_method=SIGNATURE_PLAINTEXT)

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(self.api + path, params=params, auth=self._oauth(), timeout=60)

    def post(self, path: str, op: str, **fields: str) -> requests.Response:
        form = {k: (None, v) for k, v in (fields or {"comment": "lab test"}).items()}
        return requests.post(self.api + path, params={"op": op}, files=form,
                             auth=self._oauth(), timeout=60)

    def machine(self, hostname: str) -> dict:
        found = self.get("machines/", hostname=hostname)
        assert found.status_code == 200, found.text
        [machine] = found.json()
        return machine

    def wait(self, hostname: str, status_name: str, fails: bool = False) -> dict:
        deadline = time.monotonic() + TIMEOUT
        seen: list[str] = []
        while True:
            machine = self.machine(hostname)
            line = f"{machine['status_name']}: {machine['status_message']}"
            if not seen or seen[-1] != line:
                seen.append(line)
            if machine["status_name"] == status_name:
                print(f"{hostname}: " + " | ".join(seen))
                return machine
            assert fails or not machine["status_name"].startswith("Failed"), seen
            assert time.monotonic() < deadline, f"{hostname} not {status_name}: {seen}"
            time.sleep(1)


def ssh(state, node: str, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    address = state.node(node).address
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", f"root@{address}", command],
        capture_output=True, text=True, timeout=60)


def user_data(key: Path) -> str:
    public = key.with_suffix(".pub").read_text().strip()
    text = f"#cloud-config\nssh_authorized_keys:\n  - {public}\n"
    return base64.b64encode(text.encode()).decode()


def test_new_machines_commission_and_deploy_through_their_bmcs(new_rack):
    state, key = new_rack
    maas = Maas(state.endpoints["maas"], read_lab_secrets(Path(state.lab_dir))["maas"]["api_key"])
    hosts = [n.name for n in state.nodes if n.name != BROKEN]
    assert {n.bmc["protocol"] for n in state.nodes} == {"redfish", "ipmi"}
    for host in hosts:
        machine = maas.machine(host)
        assert (machine["status_name"], machine["power_state"]) == ("New", "off")
        deploy_new = maas.post(f"machines/{machine['system_id']}/", "deploy")
        assert deploy_new.status_code == 409  # MAAS deploys only Ready or Allocated machines
        assert maas.post(f"machines/{machine['system_id']}/", "commission").status_code == 200
    for host in hosts:
        ready = maas.wait(host, "Ready")
        node = state.node(host)
        profile = json.loads((Path(state.lab_dir) / "hw" / host / "profile.json").read_text())
        assert ready["boot_interface"]["mac_address"] == profile["mgmt_nic"]["mac"]
        assert ready["cpu_count"] > 0 and ready["memory"] > 0
        assert ready["power_state"] == "off"  # commissioning ends powered off
        assert node.bmc["address"] not in json.dumps(ready)  # power details stay in MAAS
    for host in hosts:
        system_id = maas.machine(host)["system_id"]
        answer = maas.post(f"machines/{system_id}/", "deploy", distro_series="bookworm",
                           user_data=user_data(key))
        assert answer.status_code == 200, answer.text
        assert answer.json()["status_name"] == "Deploying"
    for host in hosts:
        deployed = maas.wait(host, "Deployed")
        assert deployed["power_state"] == "on"
        assert deployed["ip_addresses"] == [state.node(host).address]
        reached = ssh(state, host, key, "cat /etc/kiln-lab/image.json")
        assert reached.returncode == 0, reached.stderr  # the user_data's key is accepted
        image = json.loads(reached.stdout)
        assert (image["osystem"], image["distro_series"]) == ("debian", "bookworm")
        assert ssh(state, host, key, "hostname").stdout.strip() == host


def test_a_redeploy_gives_a_fresh_root_filesystem(new_rack):
    state, key = new_rack
    maas = Maas(state.endpoints["maas"], read_lab_secrets(Path(state.lab_dir))["maas"]["api_key"])
    host = "gpu-001"
    system_id = maas.machine(host)["system_id"]
    assert ssh(state, host, key, f"echo was-here > {MARKER}").returncode == 0
    released = maas.post(f"machines/{system_id}/", "release", erase="true", quick_erase="true")
    assert released.status_code == 200, released.text
    ready = maas.wait(host, "Ready")
    assert ready["owner"] is None and ready["power_state"] == "off"
    # The erase ran on the node (a PXE boot into MAAS's ephemeral environment): blank disk.
    assert load_state(Path(state.lab_dir)).node(host).disk == "blank"
    answer = maas.post(f"machines/{system_id}/", "deploy", user_data=user_data(key))
    assert answer.status_code == 200, answer.text
    maas.wait(host, "Deployed")
    after = ssh(state, host, key, f"test -e {MARKER} && echo kept || echo gone")
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "gone"


def test_a_node_whose_image_does_not_boot_ends_in_failed_deployment(new_rack):
    state, key = new_rack
    maas = Maas(state.endpoints["maas"], read_lab_secrets(Path(state.lab_dir))["maas"]["api_key"])
    system_id = maas.machine(BROKEN)["system_id"]
    assert maas.post(f"machines/{system_id}/", "commission").status_code == 200
    maas.wait(BROKEN, "Ready")
    answer = maas.post(f"machines/{system_id}/", "deploy", user_data=user_data(key))
    assert answer.status_code == 200, answer.text
    failed = maas.wait(BROKEN, "Failed deployment", fails=True)
    assert failed["status"] == 11
    assert failed["status_message"] == (
        "Marking node failed - Installation failed (refer to the installation log for more "
        "information).")
    assert ssh(state, BROKEN, key, "true").returncode != 0
    released = maas.post(f"machines/{system_id}/", "release")
    assert released.status_code == 200, released.text
    maas.wait(BROKEN, "Ready")


def test_every_request_the_simulator_took_follows_maas_document(new_rack):
    state, _ = new_rack
    received = read_requests(Path(state.lab_dir) / "maas" / "requests.jsonl")
    assert received
    assert check_requests([r for r in received if r.status and r.status < 300]) == []
