"""ibstat and /sys/class/infiniband parsers against real captures (tests/fixtures)."""

from pathlib import Path

import pytest

from kiln.core.parsing import ParseError
from kiln.roles.infiniband.parsers import parse_ibstat, parse_sysfs_infiniband, sysfs_listing

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def read(name: str) -> str:
    return (FIXTURES / "ibstat" / name).read_text()


def test_h100_node_all_ethernet_hcas():
    cas = parse_ibstat(read("ibstat.h100.all-active.txt"))
    assert len(cas) == 12
    by_name = {ca["name"]: ca for ca in cas}
    mlx5_1 = by_name["mlx5_1"]
    assert mlx5_1["ca_type"] == "MT4125"
    assert mlx5_1["num_ports"] == 1
    assert mlx5_1["firmware_version"] == "22.39.1002"
    assert mlx5_1["ports"][0]["link_layer"] == "Ethernet"
    assert mlx5_1["ports"][0]["rate"] == 100
    cx7 = by_name["mlx5_0"]
    assert cx7["ca_type"] == "MT4129" and cx7["firmware_version"] == "28.39.1002"
    assert cx7["node_guid"] == "0xa088c20300e3142a"
    assert cx7["ports"][0] == {
        "port": 1, "state": "Active", "physical_state": "LinkUp", "rate": 400, "base_lid": 0,
        "lmc": 0, "sm_lid": 0, "capability_mask": "0x00010000",
        "port_guid": "0xa288c2fffee3142a", "link_layer": "Ethernet",
    }
    assert sum(1 for ca in cas if ca["ports"][0]["rate"] == 400) == 8


def test_a100_node_ethernet_beside_infiniband():
    cas = parse_ibstat(read("ibstat.a100.all-active.txt"))
    layers = {ca["name"]: ca["ports"][0]["link_layer"] for ca in cas}
    assert layers["mlx5_0"] == "Ethernet"
    assert [name for name, layer in layers.items() if layer == "InfiniBand"] == [
        f"mlx5_{i}" for i in range(1, 9)
    ]
    mlx5_1 = cas[1]["ports"][0]
    assert (mlx5_1["base_lid"], mlx5_1["sm_lid"], mlx5_1["rate"]) == (1369, 83, 200)


def test_no_hca_prints_nothing():
    assert parse_ibstat("") == []
    assert parse_ibstat("\n  \n") == []


def test_port_down_and_space_indented():
    text = read("ibstat.a100.all-active.txt").replace("State: Active", "State: Down", 1)
    text = text.replace("Physical state: LinkUp", "Physical state: Polling", 1)
    text = text.replace("\t", "    ")
    port = parse_ibstat(text)[0]["ports"][0]
    assert (port["state"], port["physical_state"]) == ("Down", "Polling")


def test_garbage_names_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_ibstat("this is not ibstat\n")
    with pytest.raises(ParseError, match="line 3"):
        parse_ibstat("CA 'mlx5_0'\n\tCA type: MT4129\nnonsense here\n")
    with pytest.raises(ParseError, match="line 2: expected a number"):
        parse_ibstat("CA 'mlx5_0'\n\tNumber of ports: one\n")


def test_truncated_ca_is_an_error():
    text = read("ibstat.h100.all-active.txt")
    cut = text[: text.index("\tPort 1:")]
    expected = "line 1: CA 'mlx5_0': 'Number of ports: 1' but 0 port blocks"
    with pytest.raises(ParseError, match=expected):
        parse_ibstat(cut)


def test_sysfs_tree():
    devices = parse_sysfs_infiniband(sysfs_listing(FIXTURES / "sysfs" / "class-infiniband-h100"))
    names = [d["name"] for d in devices]
    assert names == ["mlx5_0", "mlx5_1", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_7", "mlx5_8",
                     "mlx5_9", "mlx5_bond_0"]
    mlx5_0 = devices[0]
    assert (mlx5_0["hca_type"], mlx5_0["fw_ver"], mlx5_0["board_id"]) == (
        "MT4129", "28.41.1000", "MT_0000000838")
    port = mlx5_0["ports"][0]
    assert (port["state"], port["state_code"]) == ("ACTIVE", 4)
    assert (port["phys_state"], port["phys_state_code"]) == ("LinkUp", 5)
    assert port["rate_gb_s"] == 400.0 and port["link_layer"] == "InfiniBand"
    assert port["counters"]["link_downed"] == 0
    assert port["counters"]["symbol_error"] == 0
    assert devices[-1]["ports"][0]["link_layer"] == "Ethernet"


def test_sysfs_garbage_names_the_line():
    with pytest.raises(ParseError, match="line 2"):
        parse_sysfs_infiniband("mlx5_0/fw_ver:28.41.1000\ngarbage\n")
    with pytest.raises(ParseError, match="line 1: counter"):
        parse_sysfs_infiniband("mlx5_0/ports/1/counters/link_downed:lots\n")


def test_ibstat_ndr_infiniband_capture():
    cas = parse_ibstat(read("ibstat.h100.ib-ndr.all-active.txt"))
    # eight ConnectX-7 rails and a BlueField-3 (MT41692) bond for the front end
    assert [ca["ca_type"] for ca in cas] == ["MT4129"] * 8 + ["MT41692"]
    assert [ca["ports"][0]["link_layer"] for ca in cas] == ["InfiniBand"] * 8 + ["Ethernet"]
    port = cas[0]["ports"][0]
    assert (port["state"], port["physical_state"], port["rate"], port["link_layer"]) == (
        "Active", "LinkUp", 400, "InfiniBand")
    assert (port["base_lid"], port["sm_lid"]) == (128, 1)


def test_ibpanic_is_named_not_garbage():
    """A real capture: ibstat listed mlx5_8, then could not stat it and exited 255."""
    text = read("ibstat.a100.ibpanic-exit-255.txt")
    number = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("ibpanic")))
    with pytest.raises(ParseError, match=rf"line {number + 1}: ibstat failed after 8 CA\(s\): "
                                         r"ibpanic: .*stat of IB device 'mlx5_8' failed"):
        parse_ibstat(text)


def test_ibwarn_lines_are_skipped():
    text = ("ibwarn: [4242] mad_rpc_open_port: can't open UMAD port ((null):0)\n"
            + read("ibstat.a100.all-active.txt"))
    assert parse_ibstat(text) == parse_ibstat(read("ibstat.a100.all-active.txt"))
