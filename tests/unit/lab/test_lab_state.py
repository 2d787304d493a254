"""The lab's state file, its inventory and its host checks: no root, no running lab needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.lab.host import LabError, require_tools
from kiln.lab.inventory import inventory_groups, lab_groups
from kiln.lab.rootfs import find_mirror
from kiln.lab.state import LabState, StateError, parse_state, plan_nodes, save_state

ROOT = Path(__file__).resolve().parents[3]


def _state(tmp_path: Path, gpu: int = 2, service: int = 1) -> LabState:
    state = LabState(lab_dir=str(tmp_path), ssh_key=str(tmp_path / "ssh/id_ed25519"))
    state.nodes = plan_nodes(gpu, service)
    return state


def test_plan_names_gpu_nodes_first_then_service_nodes():
    nodes = plan_nodes(3, 2)
    assert [(n.name, n.role, n.address) for n in nodes] == [
        ("gpu-001", "gpu", "10.231.0.11"),
        ("gpu-002", "gpu", "10.231.0.12"),
        ("gpu-003", "gpu", "10.231.0.13"),
        ("svc-001", "service", "10.231.0.14"),
        ("svc-002", "service", "10.231.0.15"),
    ]
    assert nodes[0].netns == "kiln-gpu-001"
    with pytest.raises(ValueError, match="at least one node"):
        plan_nodes(0, 0)
    with pytest.raises(ValueError, match="at most 244"):
        plan_nodes(240, 5)


def test_state_round_trips_through_json(tmp_path):
    state = _state(tmp_path)
    state.nodes[1].state = "running"
    state.faults_file = "/tmp/faults.yaml"
    save_state(state, tmp_path)
    text = (tmp_path / "state.json").read_text()
    assert json.loads(text)["schema"] == 1
    assert parse_state(text) == state


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["nodes"][1].pop("address"), "node gpu-002: missing field 'address'"),
        (lambda d: d["nodes"][0].update(role="storage"), "node gpu-001: role 'storage'"),
        (lambda d: d["nodes"][2].update(state="on"), "node svc-001: state 'on'"),
        (lambda d: d["nodes"][0].update(ssh_port="22"), "field 'ssh_port' should be int"),
        (lambda d: d.update(schema=2), "schema 2 is not the supported 1"),
        (lambda d: d.pop("ssh_key"), "missing field 'ssh_key'"),
    ],
)
def test_a_bad_state_file_names_node_and_field(tmp_path, change, message):
    document = json.loads(_state(tmp_path).to_json())
    change(document)
    with pytest.raises(StateError, match=message) as error:
        parse_state(json.dumps(document), "lab/state.json")
    assert str(error.value).startswith("lab/state.json: ")


def test_state_that_is_not_json_says_which_line():
    with pytest.raises(StateError, match=r"state.json: not JSON \(line 2"):
        parse_state('{\n  "schema": 1,,\n}', "state.json")


def test_lab_inventory_groups_and_host_data(tmp_path):
    groups = lab_groups(_state(tmp_path))
    assert set(groups) == {"gpu", "service", "rack_lab"}
    assert [name for name, _ in groups["gpu"]] == ["@metal/gpu-001", "@metal/gpu-002"]
    assert [name for name, _ in groups["service"]] == ["@metal/svc-001"]
    assert len(groups["rack_lab"]) == 3
    data = dict(groups["service"])["@metal/svc-001"]
    mirror = {key: data.pop(key) for key in list(data) if key.startswith("kiln_mirror_")}
    assert mirror["kiln_mirror_tls_cert"] == str(tmp_path / "tls/mirror-svc-001.pem")
    assert mirror["kiln_mirror_firmware_upstream"] == "http://10.231.0.1:8081/firmware/"
    # Kraken cannot run in the lab: configs and units only; the backend registry on svc-001.
    kraken = {key: data.pop(key) for key in list(data) if key.startswith("kiln_kraken_")}
    assert kraken == {
        "kiln_kraken_activate": False,
        "kiln_kraken_version": "lab",
        "kiln_kraken_mirror_clients": ["docker", "containers"],
        "kiln_kraken_backends": [{"registry": "10.231.0.13:5000", "insecure": True}],
    }
    assert data.pop("kiln_ledger") == str(tmp_path / "kiln.db")
    assert data.pop("kiln_pool_file") == str(tmp_path / "pool.yaml")
    # Lab nodes are network namespaces sharing the host's kernel and clock.
    assert data.pop("kiln_ntp_servers") == ["10.231.0.1"]
    assert data.pop("kiln_time_sync_sets_clock") is False
    assert all(key.startswith("net.") for key in data.pop("kiln_sysctl"))
    assert data == {
        "ssh_hostname": "10.231.0.13",
        "ssh_user": "root",
        "ssh_port": 22,
        "ssh_key": str(tmp_path / "ssh/id_ed25519"),
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "kiln_cluster": "lab",
        "kiln_node": "svc-001",
        "kiln_sku": "lab",
        "kiln_role": "service",
        "kiln_rack": "lab",
        "kiln_maas": {"system_id": None, "hostname": "svc-001"},
        # Service nodes are managed over IPMI in the lab; its BMC is on the 10.231.1.x side.
        "kiln_bmc": {"address": "10.231.1.13", "protocol": "ipmi", "port": 623,
                     "verify_tls": True, "ca_bundle": None, "credentials": "bmc",
                     "cipher_suite": 3},
        "kiln_maas_server": {"url": "http://10.231.0.1:5240/MAAS/", "verify_tls": True,
                             "ca_bundle": None, "credentials": "maas"},
        "kiln_ufm_server": {"url": "https://10.231.0.1:8443/", "verify_tls": True,
                            "ca_bundle": None, "credentials": "ufm"},
    }
    gpu = dict(groups["gpu"])["@metal/gpu-001"]
    assert gpu["kiln_bmc"]["protocol"] == "redfish" and gpu["kiln_bmc"]["port"] == 443
    assert "kiln_mirror_tls_cert" not in gpu  # only the service node serves the mirror
    # Burn-in runs on GPU nodes only: its key, and mpirun's traffic kept on eth0.
    assert gpu["kiln_burnin_state"] == str(tmp_path / "burnin-state")
    assert gpu["kiln_burnin_mpi_options"][:3] == ["--mca", "btl_tcp_if_include", "eth0"]


def test_lab_inventory_without_a_lab_is_a_clear_error(tmp_path):
    from pyinfra.api.exceptions import InventoryError

    with pytest.raises(InventoryError, match="no lab state .*kiln lab up"):
        inventory_groups(tmp_path)


def test_missing_tool_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LabError, match="apt-get install debootstrap iproute2"):
        require_tools(["debootstrap", "ip"])


def test_mirror_comes_from_the_hosts_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("KILN_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://security.example/debian-security bookworm-security main\n"
    )
    (tmp_path / "sources.list.d/other.sources").write_text(
        "Types: deb\nURIs: https://vendor.example/apt\nSuites: stable\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
    )
    assert find_mirror(tmp_path) == "http://mirror.example/debian"
    monkeypatch.setenv("KILN_LAB_MIRROR", "http://override.example/debian")
    assert find_mirror(tmp_path) == "http://override.example/debian"


def test_no_bookworm_source_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KILN_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian trixie main\n")
    with pytest.raises(LabError, match="no apt source for Debian bookworm main"):
        find_mirror(tmp_path)


def test_the_lab_says_it_needs_root(monkeypatch, capsys):
    from kiln.lab.cli import run

    # The one thing faked: who we are. Everything the command does after is real.
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert run(["up", "--nodes", "1"]) == 1
    assert "the lab needs root" in capsys.readouterr().err
    assert run(["down"]) == 1
