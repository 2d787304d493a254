"""The lab's InfiniBand rails (kiln/lab/rails.py): an address set on a node's rail interface
reaches the same rail of another node and no other rail; `hca-port-down` cuts that link and
clearing it brings the link back; a power cycle leaves the node's ends as a fresh boot has
them. Addresses are set by hand here (10.231.200.0/24, only on the nodes' rail interfaces;
the controller has no address on a rail), and removed at the end."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from kiln.lab import cluster, rails

pytestmark = pytest.mark.lab

A, B, C = "gpu-001", "gpu-002", "gpu-003"
SUBNET = "10.231.200"


def _rails(lab, node: str) -> list[rails.Rail]:
    profile = json.loads((Path(lab.lab_dir) / "hw" / node / "profile.json").read_text())
    return rails.node_rails(node, lab.node(node).index, profile)


def _link(lab, labtools, node: str, netdev: str) -> dict:
    out = labtools.ssh(lab, node, f"ip -j -d addr show dev {netdev}")
    return json.loads(out)[0]


def _ping(lab, labtools, node: str, address: str, count: int = 1) -> bool:
    out = labtools.ssh(lab, node, f"ping -n -q -c {count} -W 1 {address} >/dev/null 2>&1; "
                       "echo rc=$?")
    return out.strip() == "rc=0"


def _ping_eventually(lab, labtools, node: str, address: str, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _ping(lab, labtools, node, address):
            return True
    return False


@pytest.fixture
def by_hand(lab, labtools):
    """Addresses set by hand on rail interfaces; flushed (and faults cleared) afterwards."""
    touched: list[tuple[str, str]] = []

    def assign(node: str, netdev: str, address: str) -> None:
        touched.append((node, netdev))
        labtools.ssh(lab, node, f"ip addr add {address}/24 dev {netdev} && "
                     f"ip link set dev {netdev} up")

    yield assign
    labtools.kiln("fault", B, "--clear", "hca-port-down", check=False)
    for node, netdev in touched:
        labtools.ssh(lab, node, f"ip addr flush dev {netdev}; ip link set dev {netdev} down",
                     check=False)


def test_every_gpu_node_has_a_rail_per_hca_and_the_controller_none(lab, labtools):
    for node in lab.nodes:
        names = json.loads(labtools.ssh(lab, node.name, "ip -j link show"))
        found = sorted(link["ifname"] for link in names if link["ifname"].startswith("ib"))
        expected = sorted(r.netdev for r in _rails(lab, node.name))
        assert found == expected, node.name
        assert (len(found) == 8) == (node.role == "gpu")
    link = _link(lab, labtools, A, _rails(lab, A)[0].netdev)
    # Fresh from boot: admin down, no address, the link (the cable) up; datagram-mode MTU.
    assert link["mtu"] == rails.IPOIB_MTU == 4092
    assert "UP" not in link["flags"] and not [a for a in link["addr_info"]
                                              if a["family"] == "inet"]
    assert link["address"] == rails.rail_mac(1, 0)
    for rail in range(8):
        bridge = rails.bridge_name(rail)
        shown = subprocess.run(["ip", "-j", "addr", "show", "dev", bridge],
                               capture_output=True, text=True, check=True).stdout
        assert json.loads(shown)[0]["addr_info"] == [], bridge
        ports = subprocess.run(["ip", "-j", "link", "show", "master", bridge],
                               capture_output=True, text=True, check=True).stdout
        assert sorted(p["ifname"] for p in json.loads(ports)) == sorted(
            rails.host_end(n.name, rail) for n in lab.nodes if n.role == "gpu")


def test_same_rail_reaches_other_rail_does_not_and_port_down_cuts_the_link(
        lab, labtools, by_hand):
    started = time.monotonic()
    a0, b0, c1 = _rails(lab, A)[0], _rails(lab, B)[0], _rails(lab, C)[1]
    by_hand(A, a0.netdev, f"{SUBNET}.11")
    by_hand(B, b0.netdev, f"{SUBNET}.12")
    # C's rail-1 interface in rail 0's subnet: it would answer, were it on rail 0.
    by_hand(C, c1.netdev, f"{SUBNET}.13")

    assert _ping_eventually(lab, labtools, A, f"{SUBNET}.12"), "same rail: no reply"
    assert _ping(lab, labtools, B, f"{SUBNET}.11")
    assert not _ping(lab, labtools, A, f"{SUBNET}.13"), "a different rail answered"

    out = labtools.kiln("fault", B, "hca-port-down", "hca=0").stdout
    assert "hca-port-down active" in out
    link = _link(lab, labtools, B, b0.netdev)
    assert link["operstate"] == "DOWN" and "NO-CARRIER" in link["flags"], link
    # The node cannot cure a port that is down: its end stays without carrier.
    labtools.ssh(lab, B, f"ip link set dev {b0.netdev} up")
    assert "NO-CARRIER" in _link(lab, labtools, B, b0.netdev)["flags"]
    assert not _ping(lab, labtools, A, f"{SUBNET}.12"), "a port that is down passed traffic"
    # The other rails of that node keep their links.
    others = json.loads(labtools.ssh(lab, B, "ip -j link show"))
    assert all("NO-CARRIER" not in link["flags"] for link in others
               if link["ifname"].startswith("ib") and link["ifname"] != b0.netdev)

    labtools.kiln("fault", B, "--clear", "hca-port-down")
    assert _link(lab, labtools, B, b0.netdev)["operstate"] == "UP"
    assert _ping_eventually(lab, labtools, A, f"{SUBNET}.12"), "cleared, still no reply"

    # Half rate still passes traffic.
    labtools.kiln("fault", B, "hca-rate", "hca=0", "rate=200")
    try:
        assert _link(lab, labtools, B, b0.netdev)["operstate"] == "UP"
        assert _ping(lab, labtools, A, f"{SUBNET}.12")
    finally:
        labtools.kiln("fault", B, "--clear", "hca-rate")
    assert time.monotonic() - started < 60


def test_a_power_cycle_clears_what_the_os_set(lab, labtools, by_hand):
    c0 = _rails(lab, C)[0]
    by_hand(C, c0.netdev, f"{SUBNET}.13")
    cluster.power_off(C)
    ends = subprocess.run(["ip", "-j", "link", "show", "dev", c0.host_end],
                          capture_output=True, text=True, check=True).stdout
    assert "UP" not in json.loads(ends)[0]["flags"]  # a node that is off has no link
    cluster.power_on(C, wait=True)
    link = _link(lab, labtools, C, c0.netdev)
    assert "UP" not in link["flags"] and not [a for a in link["addr_info"]
                                              if a["family"] == "inet"]
    labtools.ssh(lab, C, f"ip link set dev {c0.netdev} up")
    assert _link(lab, labtools, C, c0.netdev)["operstate"] == "UP"
