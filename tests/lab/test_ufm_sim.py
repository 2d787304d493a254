"""The UFM simulator in the running lab, driven as kiln drives UFM: `requests` over HTTPS,
the server certificate checked against the lab CA, the lab's UFM credentials.

UFM must list every GPU node's HCA port GUIDs exactly as `ibstat` on the node shows them,
and a port fault injected with `kiln lab fault` must show as an unhealthy, inactive port.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from kiln.lab import services
from kiln.lab import ufm_sim as ufm_simulator
from kiln.lab.credentials import read_lab_secrets
from kiln.lab.ufm_sim import SERVICE, URL
from kiln.lab.vendor import build_repository, server
from kiln.roles.infiniband.parsers import parse_ibstat

pytestmark = pytest.mark.lab

SOURCES = "deb [signed-by=/etc/apt/keyrings/kiln-lab.asc] http://10.231.0.1:8081/apt kilnlab main\n"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"


class Ufm:
    def __init__(self, lab_dir: Path, ca: Path) -> None:
        creds = read_lab_secrets(lab_dir)["ufm"]
        self.auth = (creds["username"], creds["password"])
        # Per request: requests lets $REQUESTS_CA_BUNDLE override a Session's `verify`.
        self.ca = str(ca)

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{URL}ufmRest/{path}", auth=self.auth, verify=self.ca, timeout=30)


@pytest.fixture(scope="module")
def ufm(lab):
    lab_dir = Path(lab.lab_dir)
    started_here = not services.running(lab_dir, SERVICE)
    if started_here:  # a lab whose `kiln lab up` did not start it
        ufm_simulator.start(lab_dir, lab, print)
    ca = Path(getattr(lab, "tls_ca", "") or lab_dir / "tls" / "ca.pem")
    yield Ufm(lab_dir, ca)
    if started_here:
        ufm_simulator.stop(lab_dir)


def gpu_nodes(lab):
    return [n.name for n in lab.nodes if n.role == "gpu"]


@pytest.fixture(scope="module")
def ibstat_on_nodes(lab, labtools):
    """`ibstat` on every GPU node: infiniband-diags from the lab's vendor repository, as a
    deploy installs it; removed again afterwards (the lab is shared by the session)."""
    lab_dir = Path(lab.lab_dir)
    build_repository(lab_dir)  # no-op when `kiln lab up` built it
    server.start(lab_dir)
    key = (lab_dir / "vendor/keys/lab-archive.asc").read_text()
    install = (
        "mkdir -p /etc/apt/keyrings && "
        f"printf %s {shlex.quote(key)} > /etc/apt/keyrings/kiln-lab.asc && "
        f"printf %s {shlex.quote(SOURCES)} > /etc/apt/sources.list.d/kiln-lab.list && "
        f"{APT} update && {APT} install infiniband-diags"
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda node: labtools.ssh(lab, node, install), gpu_nodes(lab)))

    def ibstat(node: str, *args: str) -> list[dict]:
        return parse_ibstat(labtools.ssh(lab, node, " ".join(["ibstat", *args])))

    yield ibstat
    remove = (f"{APT} purge infiniband-diags kiln-hwsim-common; "
              "rm -f /etc/apt/sources.list.d/kiln-lab.list")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda node: labtools.ssh(lab, node, remove, check=False),
                      gpu_nodes(lab)))


def test_ufm_needs_credentials_and_serves_the_lab_ca_certificate(lab, ufm):
    bare = requests.get(f"{URL}ufmRest/resources/systems", verify=ufm.ca,
                        timeout=30)
    assert bare.status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{URL}ufmRest/resources/systems", auth=ufm.auth, timeout=30)


def test_ufm_lists_every_gpu_nodes_hca_ports_as_ibstat_shows_them(lab, ufm, ibstat_on_nodes):
    hosts = {h["system_name"]: h for h in ufm.get("resources/systems?type=host").json()}
    assert sorted(hosts) == gpu_nodes(lab)
    for node in gpu_nodes(lab):
        cas = ibstat_on_nodes(node)
        from_ibstat = {ca["ports"][0]["port_guid"][2:]: ca for ca in cas}
        response = ufm.get(f"resources/ports?system={hosts[node]['name']}")
        assert response.status_code == 200
        ports = {p["guid"]: p for p in response.json()}
        assert set(ports) == set(from_ibstat), node
        assert len(ports) == 8
        for guid, ca in from_ibstat.items():
            port = ports[guid]
            assert port["node_description"] == f"{node} {ca['name']}"
            assert port["lid"] == ca["ports"][0]["base_lid"]
            assert port["logical_state"] == ca["ports"][0]["state"] == "Active"


def test_a_faulted_port_is_unhealthy_and_down_until_cleared(lab, labtools, ufm,
                                                            ibstat_on_nodes):
    node = gpu_nodes(lab)[1]
    assert ufm.get("app/unhealthy_ports").json() == []
    labtools.kiln("fault", node, "hca-port-down", "hca=1")
    try:
        ca = ibstat_on_nodes(node, "mlx5_1")[0]
        guid = ca["ports"][0]["port_guid"][2:]
        assert ca["ports"][0]["state"] == "Down"
        unhealthy = ufm.get("app/unhealthy_ports").json()
        assert [(u["UnhealthyNode"], u["UnhealthyGUID"]) for u in unhealthy] == [(node, guid)]
        port = ufm.get(f"resources/ports/{guid}_1").json()[0]
        assert (port["logical_state"], port["physical_state"]) == ("Down", "Polling")
        events = ufm.get(f"app/events?object_name={guid}_1").json()
        assert [e["event_type"] for e in events] == ["329"]
    finally:
        labtools.kiln("fault", node, "--clear", "hca-port-down")
    assert ufm.get("app/unhealthy_ports").json() == []
    assert ufm.get(f"resources/ports/{guid}_1").json()[0]["logical_state"] == "Active"
    events = ufm.get(f"app/events?object_name={guid}_1").json()
    assert [e["event_type"] for e in events] == ["329", "328"]
