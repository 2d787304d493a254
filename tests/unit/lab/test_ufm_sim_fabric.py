"""The UFM simulator's fabric model, built from lab directories made by the real hardware
simulator (lab.hwsim): HCAs as the nodes' own ibstat shows them, faults, cabling, power."""

from __future__ import annotations

import pytest
from test_ufm_sim_helpers import make_lab, profile

from kiln.lab.hwsim import lab_hooks
from kiln.lab.hwsim.tools import ibstat
from kiln.lab.state import LabState, plan_nodes, save_state
from kiln.lab.ufm_sim.fabric import FabricError, build_fabric, port_dname
from kiln.roles.infiniband.parsers import parse_ibstat


def node_ibstat(lab, node, monkeypatch, capsys):
    """What `ibstat` prints on the node, parsed by kiln's own parser."""
    monkeypatch.setenv("KILN_HW_DIR", str(lab / "hw" / node))
    capsys.readouterr()
    assert ibstat.main([]) == 0
    return parse_ibstat(capsys.readouterr().out)


def test_hosts_are_the_gpu_nodes_with_their_hca_ports_as_ibstat_shows(
    tmp_path, monkeypatch, capsys
):
    lab = make_lab(tmp_path, gpu_nodes=3, service_nodes=1)
    fabric = build_fabric(lab)
    assert [h.system_name for h in fabric.hosts()] == ["gpu-001", "gpu-002", "gpu-003"]
    for host in fabric.hosts():
        cas = node_ibstat(lab, host.system_name, monkeypatch, capsys)
        assert [p.guid for p in host.ports] == [ca["ports"][0]["port_guid"][2:] for ca in cas]
        assert [p.lid for p in host.ports] == [ca["ports"][0]["base_lid"] for ca in cas]
        assert [p.rate for p in host.ports] == [400.0] * 8
        assert {p.logical_state for p in host.ports} == {"Active"}
        assert host.guid == cas[0]["node_guid"][2:]  # system named after mlx5_0 (§7.1)
        assert [p.node_description for p in host.ports] == [
            f"{host.system_name} mlx5_{k}" for k in range(8)
        ]


def test_rail_optimised_cabling_and_non_blocking_uplinks(tmp_path):
    fabric = build_fabric(make_lab(tmp_path, gpu_nodes=4, service_nodes=0))
    leaves = [s for s in fabric.systems if s.role == "tor"]
    spines = [s for s in fabric.systems if s.role == "core"]
    assert [s.system_name for s in leaves] == [f"leaf-rail{k}" for k in range(8)]
    assert [s.system_name for s in spines] == ["spine-1", "spine-2", "spine-3", "spine-4"]
    for index, host in enumerate(fabric.hosts(), start=1):
        for k, port in enumerate(host.ports):
            assert port.peer.system is leaves[k]
            assert port.peer.number == index
            assert port.peer.peer is port
    for leaf in leaves:
        uplinks = [p for p in leaf.ports if p.number > 32]
        assert [p.number for p in uplinks] == list(range(33, 65))
        assert {p.peer.system.system_name for p in uplinks} == {s.system_name for s in spines}
        assert all(p.peer.peer is p and p.active for p in uplinks)
    for spine in spines:
        assert [p.number for p in spine.ports] == list(range(1, 65))
    guids = [p.guid for h in fabric.hosts() for p in h.ports] + [s.guid for s in leaves + spines]
    assert len(set(guids)) == len(guids)
    assert port_dname(33) == "17/1" and port_dname(34) == "17/2" and port_dname(1) == "1/1"


def test_switch_guids_follow_the_lab_seed(tmp_path, monkeypatch):
    first = build_fabric(make_lab(tmp_path / "a", gpu_nodes=1, service_nodes=0))
    again = build_fabric(make_lab(tmp_path / "b", gpu_nodes=1, service_nodes=0))
    monkeypatch.setenv("KILN_LAB_SEED", "another-lab")
    other = build_fabric(make_lab(tmp_path / "c", gpu_nodes=1, service_nodes=0))
    switches = [[s.guid for s in f.systems if s.kind == "switch"] for f in (first, again, other)]
    assert switches[0] == switches[1]
    assert not set(switches[0]) & set(switches[2])


@pytest.mark.parametrize("phys,far_end", [("Polling", "Polling"), ("Disabled", "Polling")])
def test_hca_port_down_fault_takes_down_that_link_only(tmp_path, phys, far_end):
    lab = make_lab(tmp_path, gpu_nodes=2, service_nodes=0)
    lab_hooks.apply_fault(lab, "gpu-002", "hca-port-down", {"hca": "5", "phys": phys})
    fabric = build_fabric(lab)
    host = fabric.system("gpu-002")
    down = host.ports[5]
    assert (down.logical_state, down.physical_state, down.fault) == ("Down", phys,
                                                                     "hca-port-down")
    assert down.speed_width == (None, None)
    assert (down.peer.logical_state, down.peer.physical_state) == ("Down", far_end)
    others = [p for h in fabric.hosts() for p in h.ports if p is not down]
    assert all(p.active and p.physical_state == "Link Up" for p in others)


def test_hca_rate_fault_lowers_the_link_speed_at_both_ends(tmp_path):
    lab = make_lab(tmp_path, gpu_nodes=2, service_nodes=0)
    lab_hooks.apply_fault(lab, "gpu-001", "hca-rate", {"hca": "2", "rate": "200"})
    fabric = build_fabric(lab)
    slow = fabric.system("gpu-001").ports[2]
    assert slow.active and slow.degraded and slow.fault == "hca-rate"
    assert slow.speed_width == ("HDR", "4x") and slow.peer.speed_width == ("HDR", "4x")
    assert fabric.system("gpu-001").ports[1].speed_width == ("NDR", "4x")


def test_a_fault_shows_at_the_next_build_and_clears(tmp_path):
    lab = make_lab(tmp_path, gpu_nodes=1, service_nodes=0)
    assert build_fabric(lab).system("gpu-001").ports[1].active
    lab_hooks.apply_fault(lab, "gpu-001", "hca-port-down", {"hca": "1"})
    assert not build_fabric(lab).system("gpu-001").ports[1].active
    lab_hooks.clear_faults(lab, "gpu-001")
    assert build_fabric(lab).system("gpu-001").ports[1].active


def test_power_and_membership_come_from_the_lab_state(tmp_path):
    lab = make_lab(tmp_path, gpu_nodes=3, service_nodes=1)
    nodes = plan_nodes(2, 1)  # gpu-003's hardware is left over, not in the lab
    for node in nodes:
        node.state = "running"
    nodes[1].state = "off"
    save_state(LabState(lab_dir=str(lab), ssh_key="k", nodes=nodes), lab)
    fabric = build_fabric(lab)
    assert [h.system_name for h in fabric.hosts()] == ["gpu-001", "gpu-002"]
    assert all(p.active for p in fabric.system("gpu-001").ports)
    off = fabric.system("gpu-002").ports
    assert {(p.logical_state, p.physical_state, p.fault) for p in off} == {
        ("Down", "Polling", None)
    }


def test_more_gpu_nodes_than_leaf_ports_is_refused_naming_the_node(tmp_path):
    lab_hooks.prepare_node_hardware(tmp_path, "gpu-033", 33, "gpu", None)
    with pytest.raises(FabricError, match=r"gpu-033/profile.json: node gpu-033 has lab index 33"):
        build_fabric(tmp_path)


def test_unreadable_profile_is_an_error_naming_the_file(tmp_path):
    lab = make_lab(tmp_path, gpu_nodes=1, service_nodes=0)
    (lab / "hw" / "gpu-001" / "profile.json").write_text("{not json")
    with pytest.raises(FabricError, match=r"gpu-001"):
        build_fabric(lab)


def test_seed_recorded_in_profiles_wins_over_environment(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, gpu_nodes=1, service_nodes=0)
    before = [s.guid for s in build_fabric(lab).systems if s.kind == "switch"]
    monkeypatch.setenv("KILN_LAB_SEED", "changed-after-up")
    assert [s.guid for s in build_fabric(lab).systems if s.kind == "switch"] == before
    assert profile(lab, "gpu-001")["seed"] == "kiln-lab"
