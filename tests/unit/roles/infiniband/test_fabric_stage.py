"""The fabric stage on the node: the per-HCA report (real captures, then the lab's simulated
tools), mlxconfig settings, IPoIB, peermem and the node-side check."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml
from hca_support import (
    FIXTURES,
    FakeHost,
    SimNode,
    execute,
    ip_json,
    report_text,
    run_operation,
    text_of,
)

from kiln.core.checks import Status
from kiln.core.errors import KilnError, ValidationFailed
from kiln.core.inventory import host_data, load_cluster
from kiln.core.ledger import Ledger
from kiln.core.manifest import HCATopology, load_manifest
from kiln.core.parsing import ParseError
from kiln.core.paths import FIRMWARE_DIR
from kiln.roles.firmware.parsers import parse_mlxconfig
from kiln.roles.infiniband import operations
from kiln.roles.infiniband.checks import CHECK_NAME, check_fabric
from kiln.roles.infiniband.ipoib import (
    IFUPDOWN_FILE,
    NETPLAN_FILE,
    live_commands,
    plan_ipoib,
    render_config,
    settings_from_data,
)
from kiln.roles.infiniband.mlxsettings import matches, not_taken, plan_settings
from kiln.roles.infiniband.parsers import parse_hca_report, parse_ibstat, parse_ip_addr

LAB = load_manifest(FIRMWARE_DIR / "lab.yaml")
NDR = (FIXTURES / "ibstat" / "ibstat.h100.ib-ndr.all-active.txt").read_text()
MSTCONFIG = (FIXTURES / "mlxconfig" / "mstconfig-q.connectx6.trimmed.txt").read_text()
SYSFS = FIXTURES / "sysfs" / "class-infiniband-h100"
EXPECT = HCATopology(count=8, ca_type="MT4129", link_layer="InfiniBand", port_rate_gbps=400,
                     pcie={"gen": 5, "width": 16})


# -- the report, on real captures -------------------------------------------------------------


def real_report(width: str = "16") -> dict:
    names = [ca["name"] for ca in parse_ibstat(NDR)]
    sysfs = {name: {"pci": f"0000:{0x18 + i:02x}:00.0",
                    "board_id": (SYSFS / "mlx5_4" / "board_id").read_text().strip(),
                    "current_link_width": width, "netdev": f"ibp{0x18 + i}s0"}
             for i, name in enumerate(names)}
    text = report_text(NDR, sysfs, ip_json({f"ibp{0x18 + i}s0": (True, [])
                                            for i in range(8)}),
                       {name: MSTCONFIG for name in names}, modules=("mlx5_ib",))
    return parse_hca_report(text)


def test_report_from_real_ibstat_sysfs_and_mstconfig():
    report = real_report()
    hcas = report["hcas"]
    assert [h["device"] for h in hcas][:3] == ["mlx5_0", "mlx5_1", "mlx5_4"]
    assert hcas[-1]["device"] == "mlx5_bond_0"
    first = hcas[0]
    assert first["node_guid"] == first["port_guid"] == "0x58a2e10300a7820e"
    assert first["firmware"] == "28.41.1000" and first["psid"] == "MT_0000000838"
    assert (first["state"], first["physical_state"], first["rate"], first["link_layer"]) == (
        "Active", "LinkUp", 400, "InfiniBand")
    assert first["pcie_width"] == 16 and first["netdev"] == "ibp24s0"
    assert first["netdev_up"] is True and first["ipoib"] == []
    assert first["mlxconfig"] == parse_mlxconfig(MSTCONFIG)[0]["config"]
    assert report["modules"] == ["mlx5_ib"] and report["os"] == "debian"
    assert check_fabric(hcas, EXPECT).ok


def test_ibpanic_in_the_report_names_the_section():
    text = report_text((FIXTURES / "ibstat" / "ibstat.a100.ibpanic-exit-255.txt").read_text(),
                       {}, "[]", {})
    with pytest.raises(ParseError, match=r"ibstat section \(line 1\).*ibpanic"):
        parse_hca_report(text)


def test_a_card_mlxconfig_cannot_open_is_that_card_s_problem():
    text = report_text(NDR, {}, "[]", {"mlx5_0": "-E- Failed to open device: mlx5_0\n"})
    hca = parse_hca_report(text)["hcas"][0]
    assert hca["mlxconfig"] is None and "Failed to open device" in hca["mlxconfig_error"]
    plan = plan_settings({"LINK_TYPE_P1": "IB"}, [hca])
    assert plan.problems == [f"mlx5_0: cannot read its settings: {hca['mlxconfig_error']}"]


def test_ip_addr_json_keeps_global_ipv4_only():
    links = parse_ip_addr(ip_json({"ibp24s0": (False, ["10.200.0.17/24"])}))
    assert links["lo"]["ipv4"] == []
    assert links["ibp24s0"] == {"up": False, "operstate": "DOWN", "mtu": 2044,
                                "link_type": "infiniband", "ipv4": ["10.200.0.17/24"]}


def test_check_names_the_hca_at_half_width_and_the_missing_ones():
    report = real_report(width="8")
    result = check_fabric(report["hcas"][:7], EXPECT)
    assert not result.ok
    failures = result.failures()
    assert failures[0].startswith(
        "node this host: CRITICAL: 7 of 8 MT4129s (InfiniBand) present: mlx5_0, mlx5_1, "
        "mlx5_4, mlx5_5, mlx5_6, mlx5_7, mlx5_8 -> reseat: ")
    assert failures[1].startswith(
        "node this host: HCA mlx5_0 (port GUID 0x58a2e10300a7820e, PCI 0000:18:00.0): "
        "CRITICAL: PCIe x8, not x16 (0000:18:00.0) -> reseat: reseat HCA mlx5_0")
    assert result.results[0].evidence["port_guid"] == "0x58a2e10300a7820e"


def test_check_says_unknown_when_sysfs_gave_no_width():
    text = report_text(NDR, {}, "[]", None)
    result = check_fabric(parse_hca_report(text)["hcas"], EXPECT)
    assert {r.status for r in result.results} == {"UNKNOWN"}
    assert "PCIe link width not read" in result.results[0].problems[0]


# -- mlxconfig settings ----------------------------------------------------------------------


def test_values_match_by_name_or_number():
    assert matches("IB", "IB(1)") and matches(1, "IB(1)") and matches(True, "True(1)")
    assert matches("False", "False(0)") and matches(0, "0")
    assert not matches("ETH", "IB(1)") and not matches(True, "False(0)")


def test_real_mstconfig_capture_plans_only_what_differs():
    [device] = parse_mlxconfig(MSTCONFIG)
    config = device["config"]
    key = next(iter(config))
    hca = {"device": "mlx5_0", "mlxconfig": config}
    same = plan_settings({key: config[key]["raw"]}, [hca])
    assert same.changes == [] and same.problems == []
    plan = plan_settings({key: "12345", "NO_SUCH": 1}, [hca])
    assert plan.problems == ["mlx5_0: NO_SUCH: the card has no such setting (mlxconfig q does "
                             "not list it)"]
    assert plan.cards[0].to_set == {key: "12345"}


def test_simulated_card_set_reset_read_back(tmp_path, monkeypatch):
    node = SimNode(tmp_path, monkeypatch)
    wanted = dict(LAB.settings.mlxconfig)
    report = parse_hca_report(node.report())
    plan = plan_settings(wanted, report["hcas"])
    assert [card.device for card in plan.changes] == [f"mlx5_{i}" for i in range(8)]
    card = plan.changes[0]
    assert card.set_command() == "mlxconfig -y -d mlx5_0 set ADVANCED_PCI_SETTINGS=True"
    for card in plan.changes:
        rc, out = node.run("mlxconfig", *card.set_command().split()[1:])
        assert rc == 0, out
    # Set, not yet reset: Next Boot is right, Current is not.
    report = parse_hca_report(node.report())
    pending = plan_settings(wanted, report["hcas"])
    assert all(not c.to_set and c.needs_reset for c in pending.changes)
    assert not_taken(wanted, report["hcas"])[0] == (
        "mlx5_0: ADVANCED_PCI_SETTINGS is False(0), not True")
    node.boot()  # the power cycle through the BMC
    report = parse_hca_report(node.report())
    assert plan_settings(wanted, report["hcas"]).changes == []
    assert not_taken(wanted, report["hcas"]) == []
    assert check_fabric(report["hcas"], LAB.topology.hca).ok


def test_simulated_port_down_fails_the_check_naming_the_hca(tmp_path, monkeypatch):
    node = SimNode(tmp_path, monkeypatch, faults=[{"kind": "hca-port-down", "hca": 3}])
    result = check_fabric(parse_hca_report(node.report())["hcas"], LAB.topology.hca, "gpu-001")
    assert not result.ok
    [failure] = result.failures()
    assert failure.startswith("node gpu-001: HCA mlx5_3 (port GUID ")
    assert "CRITICAL: port state Down, not Active" in failure
    assert "-> check-cable: reseat the cable of HCA mlx5_3" in failure


# -- operations --------------------------------------------------------------------------------


def lab_host(tmp_path, monkeypatch, **kwargs) -> tuple[SimNode, FakeHost]:
    node = SimNode(tmp_path, monkeypatch)
    fake = FakeHost({"kiln_node": "gpu-001"}, parse_hca_report(node.report(**kwargs)))
    return node, fake


def test_mlxconfig_operation_sets_then_power_cycles_without_mlxfwreset(tmp_path, monkeypatch):
    _, fake = lab_host(tmp_path, monkeypatch)
    commands = run_operation(operations.mlxconfig_settings, fake,
                             settings=dict(LAB.settings.mlxconfig), source="lab.yaml")
    texts = [c for c in commands if isinstance(c, str)]
    assert texts == [f"mlxconfig -y -d mlx5_{i} set ADVANCED_PCI_SETTINGS=True"
                     for i in range(8)]
    functions = [c.function.__name__ for c in commands if not isinstance(c, str)]
    assert functions == ["_reboot", "_settings_took"]


def test_mlxconfig_operation_uses_mlxfwreset_where_every_card_supports_it(tmp_path,
                                                                          monkeypatch):
    _, fake = lab_host(tmp_path, monkeypatch)
    fake.mlxfwreset = {f"mlx5_{i}": True for i in range(8)}
    commands = run_operation(operations.mlxconfig_settings, fake,
                             settings=dict(LAB.settings.mlxconfig), source="lab.yaml")
    resets = [c for c in commands if isinstance(c, str) and c.startswith("mlxfwreset")]
    assert resets[0] == "mlxfwreset -d mlx5_0 -y reset" and len(resets) == 8


def test_mlxconfig_operation_yields_nothing_when_settings_are_right(tmp_path, monkeypatch):
    node, fake = lab_host(tmp_path, monkeypatch)
    for i in range(8):
        node.run("mlxconfig", "-y", "-d", f"mlx5_{i}", "set", "ADVANCED_PCI_SETTINGS=True")
    node.boot()
    fake.report = parse_hca_report(node.report())
    assert run_operation(operations.mlxconfig_settings, fake,
                         settings=dict(LAB.settings.mlxconfig), source="lab.yaml") == []
    assert fake.noops == ["mlxconfig: 8 HCA(s) run the settings of lab.yaml"]


def test_peermem_loaded_and_configured_yields_nothing_else_modprobe(tmp_path, monkeypatch):
    _, fake = lab_host(tmp_path, monkeypatch)
    commands = [text_of(c) for c in run_operation(operations.peermem, fake)]
    assert "modprobe nvidia-peermem" in commands
    _, loaded = lab_host(tmp_path / "again", monkeypatch, modules=("nvidia_peermem",))
    assert "modprobe nvidia-peermem" not in [text_of(c) for c in
                                             run_operation(operations.peermem, loaded)]


def addresses(host_number: int = 17) -> list[str]:
    return [f"10.200.{rail}.{host_number}/24" for rail in range(8)]


def test_ipoib_renders_ifupdown_on_debian_and_brings_the_rails_up(tmp_path, monkeypatch):
    node, fake = lab_host(tmp_path, monkeypatch)
    settings = settings_from_data({"addresses": addresses(), "mtu": None}, "gpu-001")
    plan = plan_ipoib(settings, fake.report["hcas"])
    assert plan.problems == []
    assert [(p.rail, p.device, p.netdev, p.address) for p in plan.ports][:2] == [
        (0, "mlx5_0", "ibp26s0", "10.200.0.17/24"), (1, "mlx5_1", "ibp60s0", "10.200.1.17/24")]
    path, text = render_config("debian", plan.ports, None)
    assert path == IFUPDOWN_FILE
    assert "auto ibp26s0\niface ibp26s0 inet static\n    address 10.200.0.17/24\n" in text
    assert live_commands(plan.ports[0]) == ["ip addr add 10.200.0.17/24 dev ibp26s0"]
    commands = [text_of(c) for c in run_operation(operations.ipoib, fake, settings=settings)]
    assert "ip addr add 10.200.7.17/24 dev ibp220s0" in commands


def test_ipoib_netplan_on_ubuntu_and_a_converged_node_changes_nothing(tmp_path, monkeypatch):
    node = SimNode(tmp_path, monkeypatch)
    settings = settings_from_data({"addresses": addresses(), "mtu": 4092}, "gpu-001")
    profile = node.profile()
    netdevs = [f"ibp{int(h['pci_bdf'][5:7], 16)}s0" for h in profile["hcas"]]
    report = parse_hca_report(node.report(
        addresses={n: [a] for n, a in zip(netdevs, addresses(), strict=True)}))
    plan = plan_ipoib(settings, report["hcas"])
    path, text = render_config("ubuntu", plan.ports, 4092)
    assert path == NETPLAN_FILE
    document = yaml.safe_load(text)
    assert document["network"]["ethernets"]["ibp26s0"] == {
        "dhcp4": False, "addresses": ["10.200.0.17/24"], "mtu": 4092}
    assert all(live_commands(port) == [] for port in plan.ports)
    with pytest.raises(KilnError, match="netplan \\(ubuntu\\) or ifupdown \\(debian\\)"):
        render_config("rhel", plan.ports, None)


def test_ipoib_wrong_address_is_replaced_and_a_missing_netdev_named():
    hcas = [{"device": "mlx5_0", "link_layer": "InfiniBand", "netdev": "ibp24s0",
             "ipoib": ["10.9.9.9/24"], "netdev_up": False},
            {"device": "mlx5_1", "link_layer": "InfiniBand", "netdev": None}]
    settings = settings_from_data({"addresses": addresses()[:2]}, "gpu-001")
    plan = plan_ipoib(settings, hcas)
    assert live_commands(plan.ports[0]) == ["ip -4 addr flush dev ibp24s0 scope global",
                                            "ip addr add 10.200.0.17/24 dev ibp24s0",
                                            "ip link set dev ibp24s0 up"]
    assert plan.problems[0].startswith("rail 1: mlx5_1 has no IPoIB netdev")


def test_ipoib_settings_from_bad_host_data_name_the_node():
    with pytest.raises(KilnError, match="node gpu-001: host data kiln_ipoib.addresses"):
        settings_from_data({"addresses": ["10.200.0.300/24"]}, "gpu-001")


def test_fabric_check_operation_fails_the_node_naming_the_hca(tmp_path, monkeypatch):
    node = SimNode(tmp_path, monkeypatch, faults=[{"kind": "hca-port-down", "hca": 3}])
    data = {"kiln_node": "gpu-001", "kiln_ledger": str(tmp_path / "kiln.db")}
    fake = FakeHost(data, parse_hca_report(node.report()))
    [command] = run_operation(operations.fabric_check, fake, expect=LAB.topology.hca)
    assert execute(command, fake) is False
    [message] = fake.logged
    assert message.startswith("node gpu-001: fabric check: node gpu-001: HCA mlx5_3 ")
    assert "CRITICAL: port state Down" in message
    # the failure is in the ledger, with its remediation
    book = Ledger(tmp_path / "kiln.db")
    [bad] = [r for r in book.results("gpu-001") if r.status == Status.CRITICAL]
    assert bad.subject == "HCA mlx5_3" and bad.remediation.startswith("check-cable")
    book.close()


def test_fabric_check_records_a_pass_once_then_changes_nothing(tmp_path):
    data = {"kiln_node": "gpu-001", "kiln_ledger": str(tmp_path / "kiln.db")}
    ok = FakeHost(data, real_report())
    [command] = run_operation(operations.fabric_check, ok, expect=EXPECT)
    assert not (tmp_path / "kiln.db").exists()  # planning wrote nothing
    assert execute(command, ok) is True
    book = Ledger(tmp_path / "kiln.db")
    assert len(book.results("gpu-001", CHECK_NAME)) == 9  # the node and its 8 HCAs
    assert run_operation(operations.fabric_check, ok, expect=EXPECT) == []  # converged
    assert ok.noops == ["fabric: node gpu-001: 8 HCA(s) Active/LinkUp at the manifest's rate "
                        "and width"]
    # a rail goes down: a failing command; back up: one pass recorded, then nothing again
    down = real_report()
    down["hcas"][2]["state"] = "Down"
    bad = FakeHost(data, down)
    [failing] = run_operation(operations.fabric_check, bad, expect=EXPECT)
    assert execute(failing, bad) is False
    [again] = run_operation(operations.fabric_check, ok, expect=EXPECT)
    assert execute(again, ok) is True
    assert run_operation(operations.fabric_check, ok, expect=EXPECT) == []
    assert len(book.results("gpu-001", CHECK_NAME)) == 9 * 3
    book.close()


def test_preview_of_a_node_with_no_os_reads_nothing():
    fake = FakeHost({"kiln_node": "gpu-001"}, report={})
    fake.connector.client = None
    for operation, kwargs in ((operations.peermem, {}),
                              (operations.fabric_check, {"expect": EXPECT}),
                              (operations.mlxconfig_settings, {"settings": {"A": 1},
                                                               "source": "x"})):
        [command] = run_operation(operation, fake, **kwargs)
        assert command.function.__name__ == "_noted"


# -- the inventory's IPoIB scheme ------------------------------------------------------------


def inventory(tmp_path: Path, ipoib: dict | None, nodes: list[dict]) -> Path:
    document = {"cluster": "t", "racks": [{"name": "r1", "nodes": nodes}]}
    if ipoib is not None:
        document["ipoib"] = ipoib
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def gpu(name: str, address: str, **extra) -> dict:
    octet = address.rsplit(".", 1)[-1]
    return {"hostname": name, "sku": "lab", "role": "gpu", "address": address,
            "bmc": {"address": f"10.1.0.{octet}" if octet.isdigit() else "bmc-" + name},
            **extra}


def test_scheme_gives_each_gpu_node_one_address_per_rail(tmp_path):
    path = inventory(tmp_path, {"subnet_pattern": "10.200.{rail}.0/24", "mtu": 4092},
                     [gpu("gpu-001", "10.0.0.17"), gpu("gpu-002", "10.0.0.18", ipoib_host=40)])
    cluster = load_cluster(path, FIRMWARE_DIR)
    rack = cluster.racks[0]
    data = host_data(cluster, rack, rack.nodes[0])
    assert data["kiln_ipoib"] == {"addresses": addresses(17), "mtu": 4092}
    assert host_data(cluster, rack, rack.nodes[1])["kiln_ipoib"]["addresses"][7] == \
        "10.200.7.40/24"
    assert settings_from_data(data["kiln_ipoib"], "gpu-001").addresses[0] == \
        ipaddress.IPv4Interface("10.200.0.17/24")


def test_scheme_as_a_list_of_subnets(tmp_path):
    subnets = [f"172.16.{rail * 4}.0/22" for rail in range(8)]
    path = inventory(tmp_path, {"subnets": subnets}, [gpu("gpu-001", "10.0.0.17")])
    cluster = load_cluster(path, FIRMWARE_DIR)
    data = host_data(cluster, cluster.racks[0], cluster.racks[0].nodes[0])
    assert data["kiln_ipoib"]["addresses"][1] == "172.16.4.17/22"


@pytest.mark.parametrize(("ipoib", "nodes", "message"), [
    ({"subnets": ["10.200.0.0/24", "10.200.0.0/23"], "rails": 2}, [],
     "ipoib: value error, rail 1's subnet 10.200.0.0/23 overlaps rail 0's 10.200.0.0/24"),
    ({"subnet_pattern": "10.200.0.0/24"}, [], "has no {rail}"),
    ({"subnet_pattern": "10.200.{rail}.0/24", "subnets": ["10.0.0.0/24"]}, [], "not both"),
    ({"subnet_pattern": "10.200.{rail}.0/28"}, [gpu("gpu-001", "10.0.0.17")],
     "racks.0.nodes.0.address: node gpu-001: IPoIB host number 17 is outside 1..14"),
    ({"subnet_pattern": "10.200.{rail}.0/24"},
     [gpu("gpu-001", "10.0.0.17"), gpu("gpu-002", "10.0.1.17")],
     "racks.0.nodes.1.address: node gpu-002: IPoIB host number 17 is node gpu-001's too"),
    ({"subnet_pattern": "10.200.{rail}.0/24"}, [gpu("gpu-001", "node1.example")],
     "racks.0.nodes.0.ipoib_host: node gpu-001: not set"),
    ({"subnet_pattern": "10.{rail}.0.0/16"}, [gpu("gpu-001", "10.0.0.17")],
     "racks.0.nodes.0.address: node gpu-001: 10.0.0.17 is inside IPoIB rail 0's subnet"),
])
def test_scheme_problems_name_the_file_field_and_node(tmp_path, ipoib, nodes, message):
    path = inventory(tmp_path, ipoib, nodes or [gpu("gpu-001", "10.0.0.17")])
    with pytest.raises(ValidationFailed) as caught:
        load_cluster(path, FIRMWARE_DIR)
    assert any(problem.startswith(f"{path}: ") and message in problem
               for problem in caught.value.problems), caught.value.problems


def test_without_a_scheme_no_node_gets_ipoib(tmp_path):
    cluster = load_cluster(inventory(tmp_path, None, [gpu("gpu-001", "10.0.0.17")]),
                           FIRMWARE_DIR)
    assert "kiln_ipoib" not in host_data(cluster, cluster.racks[0], cluster.racks[0].nodes[0])


# -- the deploy --------------------------------------------------------------------------------


def test_deploy_composes_the_stage_for_a_gpu_node(monkeypatch):
    from site_manifests import Recorder, deploy_state

    import kiln.roles.infiniband as infiniband_role

    recorder = Recorder()
    monkeypatch.setattr(infiniband_role, "operations", recorder)
    monkeypatch.setattr(infiniband_role, "base_operations", recorder)
    data = {"kiln_node": "gpu-001", "kiln_sku": "lab", "kiln_role": "gpu",
            "kiln_hostname": "gpu-001", "kiln_ntp_servers": ["10.0.0.1"],
            "kiln_ipoib": {"addresses": addresses(), "mtu": None}}
    deploy_state(infiniband_role.infiniband, data, "gpu-001")
    assert [name for name, _ in recorder.calls] == [
        "mlxconfig_settings", "rdma_limits", "peermem", "ipoib", "fabric_check"]
    (settings,) = recorder.called("mlxconfig_settings")
    assert settings["settings"] == {"LINK_TYPE_P1": "IB", "SRIOV_EN": "False",
                                    "ADVANCED_PCI_SETTINGS": "True"}
    assert recorder.called("rdma_limits")[0]["memlock"] == "unlimited"
    assert recorder.called("fabric_check")[0]["expect"].count == 8


def test_deploy_refuses_bad_ipoib_host_data_naming_the_node(monkeypatch):
    from site_manifests import Recorder, deploy_state

    import kiln.roles.infiniband as infiniband_role

    recorder = Recorder()
    monkeypatch.setattr(infiniband_role, "operations", recorder)
    data = {"kiln_node": "gpu-001", "kiln_sku": "lab", "kiln_role": "gpu",
            "kiln_ipoib": {"addresses": "10.200.0.17/24"}}
    monkeypatch.setattr(infiniband_role, "refuse",
                        lambda name, message: recorder.refuse(name=name, message=message))
    deploy_state(infiniband_role.infiniband, data, "gpu-001")
    [refused] = recorder.called("refuse")
    assert re.search("node gpu-001: host data kiln_ipoib", refused["message"])
    assert recorder.called("mlxconfig_settings") == []


def stage_operations(monkeypatch, **data) -> list[str]:
    """The names of the operations infiniband() adds for gpu-001 (a preview: the @metal
    node has no session yet, so nothing is read, from the node or from UFM)."""
    from site_manifests import Recorder, deploy_state

    import kiln.roles.infiniband as infiniband_role

    monkeypatch.setattr(infiniband_role, "base_operations", Recorder())
    base = {"kiln_node": "gpu-001", "kiln_sku": "lab", "kiln_role": "gpu",
            "kiln_hostname": "gpu-001", "kiln_ntp_servers": ["10.0.0.1"],
            "kiln_ledger": "/nonexistent/kiln.db"}
    state = deploy_state(infiniband_role.infiniband, {**base, **data}, "gpu-001")
    return [sorted(meta.names)[0].split(" | ")[-1] for meta in state.op_meta.values()]


UFM_SERVER = {"url": "https://ufm.example/", "ca_bundle": "/etc/ssl/ufm.pem"}


def test_the_stage_runs_the_ufm_check_after_the_node_side_one_where_there_is_ufm(
        monkeypatch):
    names = stage_operations(monkeypatch, kiln_ufm_server=UFM_SERVER)
    assert names[-2:] == ["Every HCA Active, LinkUp, at rate and width",
                          "Every rail healthy in UFM: switch port up, at rate, no faults"]


@pytest.mark.parametrize("data", [{}, {"kiln_ufm_server": UFM_SERVER,
                                       "kiln_fabric_manager": "opensm"}])
def test_without_ufm_or_with_opensm_the_stage_runs_no_ufm_check(monkeypatch, data):
    names = stage_operations(monkeypatch, **data)
    assert names[-1] == "Every HCA Active, LinkUp, at rate and width"
    assert not any("UFM" in name for name in names)


def test_the_ufm_check_reads_the_rails_port_guids_and_starts_after_the_node_check():
    from types import SimpleNamespace

    from pyinfra.context import ctx_host, ctx_state

    from kiln.core.checkrun import mark_ran, ran_at

    fake = FakeHost({"kiln_node": "gpu-001"}, real_report())
    with ctx_state.use(SimpleNamespace(is_executing=False)), ctx_host.use(fake):
        ports = operations.rail_ports(EXPECT)
    assert ports[0] == ("mlx5_0", "0x58a2e10300a7820e") and len(ports) == 8

    class Run:
        pass

    run = Run()
    assert ran_at(fake, CHECK_NAME, run=run) is None
    mark_ran(fake, CHECK_NAME, at=123.0, run=run)
    assert ran_at(fake, CHECK_NAME, run=run) == 123.0
