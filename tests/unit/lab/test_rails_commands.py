"""The lab's rails (kiln/lab/rails.py) without root: names, the `ip` commands, and link state
from the same fault view `ibstat` prints. tests/lab/test_lab_rails.py runs them for real."""

from __future__ import annotations

import pytest
from test_hwsim_helpers import Node

from kiln.lab import rails
from kiln.lab.hwsim.lab_hooks import apply_fault, clear_faults, prepare_node_hardware
from kiln.lab.hwsim.profile import generate_profile
from kiln.roles.infiniband.parsers import parse_ibstat


@pytest.fixture
def gpu_profile():
    return generate_profile("gpu-003", 3)


def test_each_hca_gets_a_rail_named_like_its_ipoib_netdev(gpu_profile):
    found = rails.node_rails("gpu-003", 3, gpu_profile)
    assert [r.rail for r in found] == list(range(8))
    assert [r.hca for r in found] == [f"mlx5_{i}" for i in range(8)]
    assert [r.bridge for r in found] == [f"kilnrail{i}" for i in range(8)]
    assert [r.host_end for r in found] == [f"kr{i}-gpu-003" for i in range(8)]
    # The HGX board's HCA buses (one above each GPU's): what udev calls their IPoIB netdevs.
    assert [r.netdev for r in found] == [
        "ibp26s0", "ibp60s0", "ibp77s0", "ibp94s0", "ibp156s0", "ibp188s0", "ibp204s0",
        "ibp220s0",
    ]  # fmt: skip
    # ...and the name the simulated kernel log says each HCA's ib<N> was renamed to.
    renamed = {line.split()[2].rstrip(":"): line.split()[-1]
               for _, line in gpu_profile["boot_log"] if "renamed from ib" in line}
    assert renamed == {r.netdev: f"ib{r.rail}" for r in found}
    assert all(len(r.host_end) <= 15 and len(r.netdev) <= 15 for r in found)


def test_a_service_node_has_no_rails():
    assert rails.node_rails("svc-001", 9, generate_profile("svc-001", 9, "service")) == []


def test_macs_are_unique_and_locally_administered():
    macs = {rails.rail_mac(index, rail) for index in range(1, 245) for rail in range(8)}
    assert len(macs) == 244 * 8
    assert all(int(mac[:2], 16) & 0b11 == 0b10 for mac in macs)  # local, unicast


def test_a_long_node_name_is_refused():
    with pytest.raises(ValueError, match="too long"):
        rails.host_end("gpu-rack12-007", 0)


def test_create_commands_put_each_end_in_its_rail_bridge_down_at_datagram_mtu(gpu_profile):
    found = rails.node_rails("gpu-003", 3, gpu_profile)
    lines = rails.create_commands(found[:1], "kiln-gpu-003")
    assert lines == [
        "link add kr0-gpu-003 mtu 65520 type veth peer name ibp26s0 address 02:6b:6c:00:00:03 "
        "mtu 4092 netns kiln-gpu-003",
        "link set dev kr0-gpu-003 addrgenmode none",
        "link set dev kr0-gpu-003 master kilnrail0",
    ]
    assert not any(" up" in line for line in lines)  # a new node is powered off


def test_bridges_get_no_address_of_any_kind():
    lines = rails.bridge_commands(2)
    assert lines == ["link set dev kilnrail0 addrgenmode none", "link set dev kilnrail0 up",
                     "link set dev kilnrail1 addrgenmode none", "link set dev kilnrail1 up"]
    assert not any("addr add" in line for line in lines)


def test_port_down_is_the_only_fault_that_drops_the_link(gpu_profile):
    assert rails.carriers(gpu_profile, []) == dict.fromkeys(range(8), True)
    down = [{"kind": "hca-port-down", "hca": 5, "phys": "Polling"}]
    assert rails.carriers(gpu_profile, down) == {**dict.fromkeys(range(8), True), 5: False}
    # Half rate still passes traffic; a narrow PCIe link too.
    others = [{"kind": "hca-rate", "hca": 1, "rate": 200},
              {"kind": "pcie-width", "hca": 2, "gpu": None, "width": 8}]
    assert rails.carriers(gpu_profile, others) == dict.fromkeys(range(8), True)


def test_the_link_agrees_with_what_ibstat_reports(tmp_path, monkeypatch):
    faults = [{"kind": "hca-port-down", "hca": 3, "phys": "Disabled"},
              {"kind": "hca-rate", "hca": 4, "rate": 100}]
    node = Node(tmp_path, monkeypatch, faults=faults)
    rc, text = node.run("ibstat")
    assert rc == 0
    states = {ca["name"]: ca["ports"][0]["state"] for ca in parse_ibstat(text)}
    profile, active = rails.read_hardware(node.hw)
    link = rails.carriers(profile, active)
    assert {f"mlx5_{rail}": up for rail, up in link.items()} == {
        name: state == "Active" for name, state in states.items()}
    assert link[3] is False and link[4] is True


def test_power_off_commands_drop_what_the_os_set():
    assert rails.power_off_commands(["ibp26s0"]) == [
        "addr flush dev ibp26s0", "link set dev ibp26s0 down"]


def test_leftovers_are_found_by_name_only():
    ends, bridges = rails.leftovers(
        ["lo", "eth0", "kilnbr0", "kv-gpu-001", "kr0-gpu-001", "kr7-svc-001", "kilnrail0",
         "kilnrail7", "kilnrailx", "krusty", "kr-gpu-001"])
    assert ends == ["kr0-gpu-001", "kr7-svc-001"]
    assert bridges == ["kilnrail0", "kilnrail7"]


class Recorder:
    """Stands in for `ip`: records each batch, answers link listings from `links`."""

    def __init__(self, links: list[str]) -> None:
        self.links = links
        self.batches: list[tuple[str | None, list[str]]] = []

    def batch(self, lines: list[str], netns: str | None = None, check: bool = True) -> None:
        if lines:
            self.batches.append((netns, list(lines)))


@pytest.fixture
def lab_node(tmp_path, monkeypatch):
    monkeypatch.delenv("KILN_LAB_SEED", raising=False)
    prepare_node_hardware(tmp_path, "gpu-002", 2, "gpu", None)
    recorder = Recorder([f"kr{i}-gpu-002" for i in range(8)] + ["kv-gpu-002", "kilnbr0"])
    monkeypatch.setattr(rails, "_ip_batch", recorder.batch)
    monkeypatch.setattr(rails, "_link_names", lambda: recorder.links)
    return tmp_path, tmp_path / "hw" / "gpu-002", recorder


def _states(batch: list[str]) -> dict[str, str]:
    return {line.split()[3]: line.split()[4] for line in batch}


def test_links_follow_power_and_the_port_down_fault_at_run_time(lab_node):
    lab, hw, recorder = lab_node
    assert rails.set_links("gpu-002", "kiln-gpu-002", hw, powered=True) == dict.fromkeys(
        range(8), True)
    apply_fault(lab, "gpu-002", "hca-port-down", {"hca": "6"})
    assert rails.set_links("gpu-002", "kiln-gpu-002", hw, powered=True)[6] is False
    assert _states(recorder.batches[-1][1])["kr6-gpu-002"] == "down"
    assert list(_states(recorder.batches[-1][1]).values()).count("up") == 7
    clear_faults(lab, "gpu-002", "hca-port-down")
    assert rails.set_links("gpu-002", "kiln-gpu-002", hw, powered=True)[6] is True
    # Powered off, every link is down whatever the faults say.
    assert set(rails.set_links("gpu-002", "kiln-gpu-002", hw, powered=False).values()) == {
        False}


def test_power_off_takes_links_down_then_clears_the_nodes_ends(lab_node):
    lab, hw, recorder = lab_node
    rails.power_off("gpu-002", "kiln-gpu-002", hw)
    (host_ns, host), (node_ns, node) = recorder.batches
    assert host_ns is None and set(_states(host).values()) == {"down"}
    assert node_ns == "kiln-gpu-002"
    assert "addr flush dev ibp26s0" in node and "link set dev ibp220s0 down" in node


def test_create_removes_a_stale_controller_end_first(lab_node):
    lab, hw, recorder = lab_node
    rails.create_node_rails("gpu-002", 2, "kiln-gpu-002", hw)
    stale, create = recorder.batches
    assert stale == (None, [f"link del dev kr{i}-gpu-002" for i in range(8)])
    assert sum(line.startswith("link add ") for line in create[1]) == 8


def test_a_node_without_hardware_is_left_alone(tmp_path, monkeypatch):
    recorder = Recorder([])
    monkeypatch.setattr(rails, "_ip_batch", recorder.batch)
    monkeypatch.setattr(rails, "_link_names", lambda: [])
    rails.power_off("gpu-009", "kiln-gpu-009", tmp_path / "hw" / "gpu-009")
    assert rails.set_links("gpu-009", "kiln-gpu-009", tmp_path / "hw" / "gpu-009", True) == {}
    assert recorder.batches == []
