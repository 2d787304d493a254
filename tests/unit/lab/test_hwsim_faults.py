"""Each fault kind changes exactly the output it should, and bad fault files are refused
with errors naming the entry and field."""

from __future__ import annotations

import json

import pytest
from test_hwsim_helpers import Node, changed, snapshot

from kiln.lab.hwsim.faults import KINDS, FaultError, load_faults_file
from kiln.lab.hwsim.lab_hooks import NodeBootFailed, fault_command, on_node_boot
from kiln.roles.burnin.parsers import parse_nccl_tests
from kiln.roles.health.parsers import parse_dcgmi_diag, parse_kernel_log
from kiln.roles.infiniband.parsers import parse_ibstat
from kiln.roles.nvidia.parsers import parse_nvidia_smi_q, parse_nvlink


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    node = Node(tmp_path_factory.mktemp("healthy"), mp)
    snap = snapshot(node)
    yield snap
    mp.undo()


def faulted(tmp_path, monkeypatch, **fault):
    return Node(tmp_path, monkeypatch, faults=[fault])


def _busbw(lines: list[str]) -> float:
    return parse_nccl_tests("\n".join(lines))["rows"][-1]["out_of_place"]["busbw"]


def test_ecc_uncorrectable_changes_only_that_gpus_counters(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="ecc-uncorrectable", gpu=2, count=4)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"smi-q", "smi-x", "dcgmi"}
    assert [y.split(":")[0].strip() for _, y in diff["smi-q"]] == ["DRAM Uncorrectable"] * 2
    gpus = parse_nvidia_smi_q("\n".join(snapshot(node)["smi-q"][1]))["gpus"]
    assert [g["ecc"]["volatile"]["dram_uncorrectable"] for g in gpus] == \
        [0, 0, 4, 0, 0, 0, 0, 0]
    dcgmi = parse_dcgmi_diag("\n".join(snapshot(node)["dcgmi"][1]))
    failing = [t["name"] for t in dcgmi["tests"] if t["status"] == "Fail"]
    assert failing == ["GPU Memory"]
    rc, csv = node.run("nvidia_smi", "--query-gpu=ecc.errors.uncorrected.volatile.total",
                       "--format=csv,noheader")
    assert csv.split() == ["0", "0", "4", "0", "0", "0", "0", "0"]


@pytest.mark.parametrize("kind,field", [("row-remap-pending", "Pending"),
                                        ("row-remap-failed", "Remapping Failure Occurred")])
def test_row_remap(healthy, tmp_path, monkeypatch, kind, field):
    node = faulted(tmp_path, monkeypatch, kind=kind, gpu=5)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"smi-q", "smi-x", "dcgmi"}
    changed_keys = {y.split(":")[0].strip() for _, y in diff["smi-q"]}
    assert field in changed_keys and "Uncorrectable Error" in changed_keys
    assert changed_keys <= {field, "Uncorrectable Error", "Max", "High", "None",
                            "Reset Required"}
    gpus = parse_nvidia_smi_q("\n".join(snapshot(node)["smi-q"][1]))["gpus"]
    assert [g["remapped_rows"]["uncorrectable"] for g in gpus].count(1) == 1


def test_xid_only_adds_a_kernel_line(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="xid", gpu=4, code=79)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"dmesg"}
    log = parse_kernel_log("\n".join(snapshot(node)["dmesg"][1]))
    assert [(x["xid"], x["pci"].lower()) for x in log["xids"]] == [(79, "0000:9b:00")]


def test_sxid_only_adds_a_kernel_line(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="sxid", nvswitch=1, code=20034, link=30)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"dmesg"}
    log = parse_kernel_log("\n".join(snapshot(node)["dmesg"][1]))
    assert [s["sxid"] for s in log["sxids"]][:1] == [20034]


def test_unknown_boot_log_line(healthy, tmp_path, monkeypatch):
    line = "mce: [Hardware Error]: Machine check events logged"
    node = faulted(tmp_path, monkeypatch, kind="boot-log-line", line=line)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"dmesg"}
    assert diff["dmesg"][0][1].endswith(line)


def test_nvlink_inactive(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="nvlink-inactive", gpu=3, link=7)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"nvlink-s", "nccl"}
    assert diff["nvlink-s"] == [("         Link 7: 26.562 GB/s", "         Link 7: <inactive>")]
    links = parse_nvlink("\n".join(snapshot(node)["nvlink-s"][1]))[3]["links"]
    assert [link["active"] for link in links].count(False) == 1
    assert _busbw(snapshot(node)["nccl"][1]) < _busbw(healthy["nccl"][1]) * 0.96


def test_nvlink_degraded(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="nvlink-degraded", gpu=1, factor=0.5)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"nvlink-e", "nccl"}
    assert all(y.startswith("         Link") for _, y in diff["nvlink-e"])
    assert _busbw(snapshot(node)["nccl"][1]) == pytest.approx(
        _busbw(healthy["nccl"][1]) * 0.5, rel=0.02)


def test_gpu_wrong_results(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="gpu-wrong-results", gpu=6)
    after = snapshot(node)
    assert set(changed(healthy, after)) == {"dcgmi", "nccl"}
    dcgmi = parse_dcgmi_diag("\n".join(after["dcgmi"][1]))
    assert {t["name"] for t in dcgmi["tests"] if t["status"] == "Fail"} == \
        {"GPU Memory", "Targeted Stress"}
    assert after["dcgmi"][0] != 0
    nccl = parse_nccl_tests("\n".join(after["nccl"][1]))
    assert nccl["rows"][-1]["out_of_place"]["wrong"] > 0 and after["nccl"][0] != 0


def test_hca_port_down(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="hca-port-down", hca=3)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"ibstat", "ibstatus", "ibv_devinfo"}
    cas = parse_ibstat("\n".join(snapshot(node)["ibstat"][1]))
    states = {c["name"]: (c["ports"][0]["state"], c["ports"][0]["physical_state"]) for c in cas}
    assert states.pop("mlx5_3") == ("Down", "Polling")
    assert set(states.values()) == {("Active", "LinkUp")}
    rc, _ = node.run("ib_write_bw", "-d", "mlx5_3", "127.0.0.1")
    assert rc == 1


def test_hca_rate_200_changes_only_that_ports_rate(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="hca-rate", hca=1)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"ibstat", "ibstatus"}
    assert diff["ibstat"] == [("\t\tRate: 400", "\t\tRate: 200")]
    cas = parse_ibstat("\n".join(snapshot(node)["ibstat"][1]))
    assert {c["name"]: c["ports"][0]["rate"] for c in cas if c["ports"][0]["rate"] != 400} \
        == {"mlx5_1": 200}


def test_gpu_pcie_x8(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="pcie-width", gpu=0, width=8)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"smi-q", "smi-x", "dcgmi"}
    assert [" ".join(y.split()) for _, y in diff["smi-q"]] == ["Current : 8x"]
    rc, csv = node.run("nvidia_smi", "--query-gpu=pcie.link.width.current",
                       "--format=csv,noheader")
    assert csv.split() == ["8"] + ["16"] * 7


def test_hca_pcie_x8(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="pcie-width", hca=2, width=8)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"dmesg"}
    assert "limited by 32.0 GT/s PCIe x8 link" in diff["dmesg"][0][1]


def test_nic_firmware_at_the_wrong_version(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="firmware-version", component="connectx7",
                   version="old", hca=5)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"ibstat", "ibv_devinfo", "mlxfwmanager", "dmesg"}
    assert diff["ibstat"] == [("\tFirmware version: 28.43.1014", "\tFirmware version: 28.39.1002")]
    assert [y.split("] ", 1)[1] for _, y in diff["dmesg"]] == [
        "mlx5_core 0000:bc:00.0: firmware version: 28.39.1002"]


def test_gpu_firmware_at_the_wrong_version(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="firmware-version", component="gpu-vbios",
                   version="old")
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"smi-q", "smi-x"}
    assert {y.split(":")[1].strip() for _, y in diff["smi-q"]} == {"96.00.61.00.01"}


def test_flaky_node_fails_burn_in(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="flaky", p=1.0)
    after = snapshot(node)
    assert set(changed(healthy, after)) == {"dcgmi", "nccl"}
    assert after["dcgmi"][0] != 0 and after["nccl"][0] != 0
    node2 = Node(tmp_path / "p", monkeypatch, faults=[{"kind": "flaky", "p": 0.5}])
    outcomes = set()
    for seed in range(20):
        monkeypatch.setenv("KILN_HWSIM_FLAKY_SEED", str(seed))
        outcomes.add(node2.run("all_reduce_perf", "-b", "1G", "-e", "1G", "-g", "8")[0])
    assert outcomes == {0, 1}  # sometimes, not always


def test_boot_fail_after_imaging(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch, faults=[{"kind": "boot-fail"}])  # boot 1 is fine
    on_node_boot(node.lab, node.name, node.rootfs)  # a reboot of the same image is fine
    (node.rootfs / "var/lib/kiln-hwsim/booted").unlink()  # reset: a fresh image
    with pytest.raises(NodeBootFailed, match="gpu-001"):
        on_node_boot(node.lab, node.name, node.rootfs)


def test_every_kind_is_tested():
    tested = {"ecc-uncorrectable", "row-remap-pending", "row-remap-failed", "xid", "sxid",
              "boot-log-line", "nvlink-inactive", "nvlink-degraded", "gpu-wrong-results",
              "hca-port-down", "hca-rate", "pcie-width", "firmware-version", "flaky",
              "boot-fail"}
    assert tested == set(KINDS)


@pytest.mark.parametrize("entry,message", [
    ({"node": "gpu-001", "kind": "ecc-uncorrectable"}, "faults[0] (node gpu-001, kind "
     "ecc-uncorrectable): field 'gpu': required"),
    ({"node": "gpu-001", "kind": "ecc-uncorrectable", "gpu": 9}, "field 'gpu': 9 is not"),
    ({"node": "gpu-001", "kind": "melted"}, "field 'kind': 'melted' is not a fault kind"),
    ({"kind": "flaky", "p": 0.1}, "faults[0]: field 'node': required"),
    ({"node": "gpu-001", "kind": "flaky", "p": 2}, "field 'p': 2.0 is not a probability"),
    ({"node": "gpu-001", "kind": "hca-rate", "hca": 1, "speed": 200}, "field 'speed': unknown"),
    ({"node": "gpu-001", "kind": "firmware-version", "component": "bios", "version": "9.9"},
     "'9.9' is not a version the lab has for bios"),
    ({"node": "gpu-001", "kind": "pcie-width"}, "name exactly one of fields 'gpu' and 'hca'"),
    ({"node": "gpu-009", "kind": "flaky", "p": 0.1}, "field 'node': 'gpu-009' is not a lab node"),
])
def test_bad_fault_files_name_the_entry_and_field(tmp_path, entry, message):
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"faults": [entry]}))
    with pytest.raises(FaultError) as err:
        load_faults_file(path, nodes=["gpu-001", "gpu-002"])
    assert message in str(err.value) and str(path) in str(err.value)


def test_yaml_fault_file(tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text("faults:\n  - {node: gpu-003, kind: ecc-uncorrectable, gpu: 2, count: 4}\n")
    assert load_faults_file(path) == [{"node": "gpu-003", "kind": "ecc-uncorrectable", "gpu": 2,
                                       "count": 4, "memory": "dram"}]


def test_service_node_refuses_a_gpu_fault(tmp_path):
    from kiln.lab.hwsim.lab_hooks import prepare_node_hardware

    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"faults": [{"node": "svc-01", "kind": "xid", "gpu": 0,
                                            "code": 79}]}))
    with pytest.raises(FaultError, match="node svc-01 has 0 GPUs"):
        prepare_node_hardware(tmp_path / "lab", "svc-01", 9, "service", path)


def test_kiln_lab_fault_at_run_time(healthy, tmp_path, monkeypatch, capsys):
    node = Node(tmp_path, monkeypatch)
    monkeypatch.setenv("KILN_LAB_DIR", str(node.lab))
    assert fault_command(["gpu-001", "hca-rate", "hca=4", "rate=200"]) == 0
    assert set(changed(healthy, snapshot(node))) == {"ibstat", "ibstatus"}
    assert fault_command(["gpu-001", "hca-rate", "hca=twelve"]) == 2
    assert "field 'hca': 'twelve' is not" in capsys.readouterr().err
    assert fault_command(["gpu-001", "--clear"]) == 0
    assert changed(healthy, snapshot(node)) == {}


def test_two_node_busbw_reflects_both_participants(tmp_path, monkeypatch):
    """What rank 0 computes from the records every rank allgathers under mpirun."""
    from kiln.lab.hwsim.tools import _perf, all_reduce_perf
    from kiln.lab.hwsim.view import load_view

    def record(node: Node, host: str) -> dict:
        return {"host": host, "health": _perf.health(load_view(node.hw))}

    good = Node(tmp_path / "a", monkeypatch)
    slow = Node(tmp_path / "b", monkeypatch, faults=[{"kind": "hca-rate", "hca": 3}])
    down = Node(tmp_path / "c", monkeypatch, faults=[{"kind": "hca-port-down", "hca": 0}])
    pair = all_reduce_perf._peak_busbw([record(good, "a"), record(good, "a2")], 16)[0]
    assert 370 <= pair <= 390
    with_slow = all_reduce_perf._peak_busbw([record(good, "a"), record(slow, "b")], 16)[0]
    with_down = all_reduce_perf._peak_busbw([record(good, "a"), record(down, "c")], 16)[0]
    assert with_slow == pytest.approx(pair / 2)
    assert with_down == pytest.approx(pair * 7 / 8)
