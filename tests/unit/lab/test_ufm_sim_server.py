"""The UFM simulator as the lab runs it: `python -m lab.ufm_sim`, HTTPS with a certificate
from the lab CA (checked by the client, never switched off), the lab's credentials from
its secrets file. On loopback and an unprivileged port, so no root is needed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import requests
from test_ufm_sim_helpers import make_lab, profile

from kiln.lab.credentials import ensure_lab_secrets, read_lab_secrets
from kiln.lab.hwsim import lab_hooks
from kiln.lab.tls import issue_cert


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, project_root):
    lab = make_lab(tmp_path, gpu_nodes=2, service_nodes=1)
    ensure_lab_secrets(lab)
    cert, key = issue_cert(lab, "ufm", ["127.0.0.1"])
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln.lab.ufm_sim", "--lab", str(lab), "--address", "127.0.0.1",
         "--port", str(port), "--cert", str(cert), "--key", str(key)],
        cwd=project_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"simulator did not start:\n{process.communicate()[0]}")
            time.sleep(0.05)
    yield lab, f"https://127.0.0.1:{port}/ufmRest", lab / "tls" / "ca.pem"
    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert process.returncode == 0, output
    assert read_lab_secrets(lab)["ufm"]["password"] not in output  # nothing logs the secret


def test_https_with_the_lab_ca_and_basic_auth(server):
    lab, url, ca = server
    creds = read_lab_secrets(lab)["ufm"]
    auth = (creds["username"], creds["password"])
    systems = requests.get(f"{url}/resources/systems?type=host", auth=auth, verify=ca,
                           timeout=10)
    assert systems.status_code == 200
    assert [s["system_name"] for s in systems.json()] == ["gpu-001", "gpu-002"]
    denied = requests.get(f"{url}/resources/systems", verify=ca, timeout=10)
    assert denied.status_code == 401
    wrong = requests.get(f"{url}/resources/systems", auth=(auth[0], "nope"), verify=ca,
                         timeout=10)
    assert wrong.status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/resources/systems", auth=auth, timeout=10)  # system CAs only


def test_the_sweeper_logs_a_fault_as_it_happens(server):
    lab, url, ca = server
    creds = read_lab_secrets(lab)["ufm"]
    auth = (creds["username"], creds["password"])
    # A request is a look at the fabric too: this one makes sure the healthy fabric has been
    # seen (the first look is silent), so the fault below is a change the sweeper must log.
    requests.get(f"{url}/resources/ports", auth=auth, verify=ca, timeout=10).raise_for_status()
    lab_hooks.apply_fault(lab, "gpu-002", "hca-port-down", {"hca": "6"})
    name = profile(lab, "gpu-002")["hcas"][6]["ports"][0]["port_guid"][2:] + "_1"
    deadline = time.monotonic() + 30
    while not (lab / "ufm" / "events.json").exists():  # no request: the sweeper saw it
        assert time.monotonic() < deadline, "no event logged by the sweeper"
        time.sleep(0.2)
    events = requests.get(f"{url}/app/events", auth=auth, verify=ca, timeout=10).json()
    assert [(e["event_type"], e["object_name"]) for e in events] == [("329", name)]
    unhealthy = requests.get(f"{url}/app/unhealthy_ports", auth=auth, verify=ca,
                             timeout=10).json()
    assert [u["UnhealthyGUID"] + "_1" for u in unhealthy] == [name]
