"""`python -m lab.maas_sim` as a process on loopback, spoken to over real HTTP by requests and
requests-oauthlib (as kiln's client speaks), with the real power drivers behind it.

The lab's BMC addresses are not there in a unit test; the nodes' BMCs here point at a
loopback port nothing listens on, so a power action fails the way an unreachable BMC does,
through sushy (Redfish) and ipmitool (IPMI), and MAAS's answer to that is checked.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1
from test_maas_sim_harness import make_lab

from kiln.lab.credentials import read_lab_secrets
from kiln.lab.maas_sim.openapi_check import check_requests, read_requests
from kiln.lab.state import save_state
from kiln.lab.tls import ensure_ca


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    state = make_lab(root, gpu=1, service=1)
    dead = free_port()  # nothing listens here: the BMCs are unreachable
    for node in state.nodes:
        node.bmc = {**node.bmc, "address": "127.0.0.1", "port": dead}
    lab = root / "lab"
    state.tls_ca = str(ensure_ca(lab))  # the real lab CA: TLS is set up, the BMC is not there
    save_state(state, lab)
    port = free_port()
    log = open(root / "service.log", "w")
    # --ipmi-retries 1: each ipmitool command at the dead port gives up in about 2 s, not the
    # 12 s of the default 3 retries; the failure MAAS sees is the same.
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln.lab.maas_sim", "--lab", str(lab), "--listen", "127.0.0.1",
         "--port", str(port), "--enlist", "new", "--step", "0.05", "--poll", "0.05",
         "--power-waits", "0.05,0.05", "--ipmi-retries", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/MAAS/api/2.0/"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url + "version/", timeout=1)
            break
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError((root / "service.log").read_text()) from None
            time.sleep(0.1)
    consumer, token, secret = read_lab_secrets(lab)["maas"]["api_key"].split(":")
    auth = OAuth1(consumer, client_secret="", resource_owner_key=token,
                  resource_owner_secret=secret, signature_method=SIGNATURE_PLAINTEXT)
    yield url, auth, lab, root / "service.log"
    process.terminate()
    process.wait(timeout=10)
    log.close()


def test_version_over_http(service):
    url, _, _, _ = service
    answer = requests.get(url + "version/", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["version"].startswith("3.")


def test_machines_over_http_with_oauth(service):
    url, auth, _, _ = service
    answer = requests.get(url + "machines/", auth=auth, timeout=5)
    assert answer.status_code == 200
    assert [(m["hostname"], m["status_name"], m["power_type"]) for m in answer.json()] == [
        ("gpu-001", "New", "redfish"), ("svc-001", "New", "ipmi")]
    assert requests.get(url + "machines/", timeout=5).status_code == 401


def test_deploy_of_new_over_http_is_409(service):
    url, auth, _, _ = service
    system_id = requests.get(url + "machines/", auth=auth, timeout=5).json()[0]["system_id"]
    answer = requests.post(url + f"machines/{system_id}/", params={"op": "deploy"},
                           files={"distro_series": (None, "bookworm")}, auth=auth, timeout=5)
    assert answer.status_code == 409
    assert answer.text == "Can't deploy a machine that is in the 'New' state"


@pytest.mark.parametrize("hostname", ["gpu-001", "svc-001"])
def test_commission_with_an_unreachable_bmc_reverts(service, hostname):
    url, auth, _, log = service
    machine = requests.get(url + "machines/", params={"hostname": hostname}, auth=auth,
                           timeout=5).json()[0]
    answer = requests.post(url + f"machines/{machine['system_id']}/",
                           params={"op": "commission"}, files={"comment": (None, "test")},
                           auth=auth, timeout=5)
    assert answer.status_code == 200
    deadline = time.monotonic() + 60
    while True:
        now = requests.get(url + f"machines/{machine['system_id']}/", auth=auth,
                           timeout=5).json()
        if now["status_name"] == "New" and now["power_state"] == "error":
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    assert "Unable to power control the node" in now["status_message"]
    failures = [line for line in Path(log).read_text().splitlines()
                if line.startswith(f"maas-sim: {hostname}: power action failed")]
    assert failures, "the simulator's log does not say which BMC failed"
    assert "127.0.0.1" in failures[0]


def test_the_service_records_what_it_was_sent(service):
    _, _, lab, _ = service
    recorded = read_requests(lab / "maas" / "requests.jsonl")
    assert recorded, "no request recorded"
    accepted = [r for r in recorded if r.status and r.status < 300]
    assert check_requests(accepted) == []
    raw = (lab / "maas" / "requests.jsonl").read_text()
    assert "oauth_signature" not in raw  # the Authorization header is not recorded
