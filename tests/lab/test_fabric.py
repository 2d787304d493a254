"""The fabric stage on the lab: the real pyinfra run of roles/infiniband (with the UFM check
against the lab's UFM simulator) on 4 deployed GPU nodes, after the stages it needs (base,
OFED, NVIDIA), then read back from the nodes.

    gpu-001, gpu-004   healthy
    gpu-002            HCA 3's port down (fault at `kiln lab up`)
    gpu-003            HCA 1 at 200 Gb/s (fault at `kiln lab up`)
    gpu-004's HCA 5    marked unhealthy in UFM by an operator, after the first run

A healthy node ends with its 8 IPoIB interfaces up at the lab inventory's addresses, the
same rail of another node answering, and nvidia-peermem loaded; a faulted node fails the
stage naming the HCA (and for UFM the switch and its port) while the others go on; a second
run on the healthy nodes changes nothing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from lab_data import lab_apt_data

from kiln.lab.credentials import read_lab_secrets
from kiln.lab.hwsim.profile import ipoib_netdev
from kiln.lab.inventory import lab_ipoib_data
from kiln.lab.ufm_sim import URL as UFM_URL

pytestmark = pytest.mark.lab

DEPLOY = "tests/lab/fabric_deploy.py"
HEALTHY = ["gpu-001", "gpu-004"]
PORT_DOWN, HALF_RATE = "gpu-002", "gpu-003"
FAULTS = [
    {"node": PORT_DOWN, "kind": "hca-port-down", "hca": 3},
    {"node": HALF_RATE, "kind": "hca-rate", "hca": 1, "rate": 200},
]


def profile(state, node: str) -> dict:
    return json.loads((Path(state.lab_dir) / "hw" / node / "profile.json").read_text())


class Fabric:
    def __init__(self, state, labtools):
        self.state = state
        self.labtools = labtools

    def run(self, *nodes: str) -> subprocess.CompletedProcess[str]:
        limits = [arg for node in nodes for arg in ("--limit", node)]
        return subprocess.run(
            [str(self.labtools.bin / "pyinfra"), "-y", "inventory/lab.py", DEPLOY, *limits,
             *lab_apt_data(self.state)],
            cwd=self.labtools.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=900)

    def ssh(self, node: str, command: str, check: bool = True) -> str:
        return self.labtools.ssh(self.state, node, command, check=check)

    def ufm(self, method: str, path: str, **kwargs) -> requests.Response:
        creds = read_lab_secrets(Path(self.state.lab_dir))["ufm"]
        response = requests.request(
            method, f"{UFM_URL}ufmRest/{path}", auth=(creds["username"], creds["password"]),
            verify=self.state.tls_ca, timeout=30, **kwargs)
        response.raise_for_status()
        return response


@pytest.fixture(scope="module")
def fabric(lab_shapes, labtools, tmp_path_factory) -> Fabric:
    faults = tmp_path_factory.mktemp("fabric") / "faults.yaml"
    faults.write_text(yaml.safe_dump({"faults": FAULTS}))
    state = lab_shapes.ensure(("--deployed", "--nodes", "4", "--service-nodes", "1",
                               "--faults", str(faults)))
    yield Fabric(state, labtools)
    lab_shapes.forget()  # the nodes now carry the stack and addresses: start afresh


@pytest.fixture(scope="module")
def first_run(fabric: Fabric) -> subprocess.CompletedProcess[str]:
    return fabric.run("gpu-001", "gpu-002", "gpu-003", "gpu-004")


def node_errors(output: str, node: str) -> list[str]:
    return [line for line in output.splitlines() if f"[{node}]" in line and
            ("CRITICAL" in line or "Error" in line)]


def test_healthy_nodes_get_every_rail_up_at_the_declared_addresses(fabric, first_run):
    output = first_run.stdout
    for node in HEALTHY:
        assert node_errors(output, node) == [], output[-4000:]
        wanted = lab_ipoib_data(fabric.state.node(node))["kiln_ipoib"]["addresses"]
        links = {link["ifname"]: link for link in json.loads(fabric.ssh(node, "ip -j addr"))}
        for hca, address in zip(profile(fabric.state, node)["hcas"], wanted, strict=True):
            link = links[ipoib_netdev(hca)]
            assert "UP" in link["flags"] and "LOWER_UP" in link["flags"], link
            assigned = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                        if a["family"] == "inet"]
            assert assigned == [address], (node, link["ifname"], assigned)


def test_a_healthy_node_reaches_the_same_rail_of_another(fabric, first_run):
    other = lab_ipoib_data(fabric.state.node("gpu-004"))["kiln_ipoib"]["addresses"]
    for rail in (0, 7):
        target = other[rail].split("/")[0]
        fabric.ssh("gpu-001", f"ping -c 1 -W 2 {target}")


def test_peermem_is_loaded_now_and_at_boot(fabric, first_run):
    for node in HEALTHY:
        assert fabric.ssh(node, "cat /sys/module/nvidia_peermem/initstate").strip() == "live"
        assert "nvidia-peermem" in fabric.ssh(node, "cat /etc/modules-load.d/kiln-peermem.conf")


def test_a_port_down_fails_that_node_naming_the_hca_and_the_switch_port(fabric, first_run):
    output = first_run.stdout
    hca = profile(fabric.state, PORT_DOWN)["hcas"][3]["name"]
    failures = node_errors(output, PORT_DOWN)
    # The node's own check fails it; UFM names where the cable ends.
    assert any(hca in line and "port state Down" in line and "switch leaf-rail3" in line
               and " port " in line for line in failures), output[-4000:]
    print("\n".join(failures))
    # The healthy nodes went on to the end.
    assert all(node_errors(output, node) == [] for node in HEALTHY)


def test_a_rail_at_half_rate_fails_that_node_naming_the_hca(fabric, first_run):
    output = first_run.stdout
    hca = profile(fabric.state, HALF_RATE)["hcas"][1]["name"]
    failures = node_errors(output, HALF_RATE)
    assert any(hca in line and "200" in line and "switch leaf-rail1" in line
               for line in failures), output[-4000:]
    print("\n".join(failures))


def test_a_second_run_changes_nothing_on_the_healthy_nodes(fabric, first_run):
    again = fabric.run(*HEALTHY)
    assert again.returncode == 0, again.stdout[-4000:]
    total = [line for line in again.stdout.splitlines() if "Grand total" in line]
    # Grand total | hosts | success (changed) | error | no change: nothing changed, all
    # "No change".
    assert total, again.stdout[-4000:]
    hosts, changed, errors, unchanged = total[0].split()[-4:]
    assert (changed, errors) == ("-", "-") and unchanged == hosts, total
    print("second run:", total[0].strip())


def test_a_port_ufm_calls_unhealthy_fails_the_node_naming_switch_and_port(fabric, first_run):
    hca = profile(fabric.state, "gpu-004")["hcas"][5]
    guid = hca["ports"][0]["port_guid"].removeprefix("0x")
    fabric.ufm("PUT", "app/unhealthy_ports",
               json={"ports": [f"{guid}_1"], "ports_policy": "UNHEALTHY", "action": "no_discover"})
    try:
        run = fabric.run("gpu-004")
    finally:
        fabric.ufm("PUT", "app/unhealthy_ports",
                   json={"ports": [f"{guid}_1"], "ports_policy": "HEALTHY"})
    assert run.returncode != 0, run.stdout[-4000:]
    failures = node_errors(run.stdout, "gpu-004")
    assert any(hca["name"] in line and "switch" in line and "port" in line
               for line in failures), run.stdout[-4000:]
    print("\n".join(failures))


# -- the tenant partition --------------------------------------------------------------------

PKEY = {"pkey": "0x0a12", "name": "tenant-a", "members": {"gpu-004": "limited"}}


def port_guids(state, node: str) -> list[str]:
    return [hca["ports"][0]["port_guid"] for hca in profile(state, node)["hcas"]]


def set_pkey(fabric: Fabric, nodes: list[str]) -> subprocess.CompletedProcess[str]:
    ports = {node: port_guids(fabric.state, node) for node in nodes}
    return subprocess.run(
        [str(fabric.labtools.bin / "pyinfra"), "-y", "inventory/lab.py",
         "tests/lab/pkey_deploy.py", "--limit", "gpu-001",
         "--data", f"kiln_ufm_pkeys={json.dumps([PKEY])}",
         "--data", f"test_pkey_ports={json.dumps(ports)}"],
        cwd=fabric.labtools.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=300)


def members(fabric: Fabric) -> dict[str, str]:
    answer = fabric.ufm("GET", "resources/pkeys/0x0a12", params={"guids_data": "true"}).json()
    return {entry["guid"].lower().removeprefix("0x"): entry["membership"]
            for entry in answer.get("guids", [])}


def expected(fabric: Fabric, nodes: list[str]) -> dict[str, str]:
    return {guid.lower().removeprefix("0x"): PKEY["members"].get(node, "full")
            for node in nodes for guid in port_guids(fabric.state, node)}


def test_the_tenant_pkey_holds_exactly_the_guids_asked_for(fabric, first_run):
    first = set_pkey(fabric, ["gpu-001", "gpu-003", "gpu-004"])
    assert first.returncode == 0, first.stdout[-3000:]
    assert members(fabric) == expected(fabric, ["gpu-001", "gpu-003", "gpu-004"])
    again = set_pkey(fabric, ["gpu-001", "gpu-003", "gpu-004"])
    assert again.returncode == 0, again.stdout[-3000:]
    [total] = [line for line in again.stdout.splitlines() if "Grand total" in line]
    assert total.split()[-4:] == ["1", "-", "-", "1"], total  # the one operation: no change
    # A node leaves (quarantine, reprovision): only its 8 GUIDs go.
    shrunk = set_pkey(fabric, ["gpu-001", "gpu-004"])
    assert shrunk.returncode == 0, shrunk.stdout[-3000:]
    assert members(fabric) == expected(fabric, ["gpu-001", "gpu-004"])
