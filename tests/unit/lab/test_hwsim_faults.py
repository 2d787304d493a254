"""Each fault kind changes exactly the output it should, and bad fault files are refused
with errors naming the entry and field."""

from __future__ import annotations

import json

import pytest
from test_hwsim_helpers import Node, changed, snapshot

from kiln.lab.hwsim.faults import KINDS, FaultError, load_faults_file
from kiln.lab.hwsim.lab_hooks import NodeBootFailed, fault_command, on_node_boot
from kiln.lab.hwsim.profile import read_json
from kiln.lab.hwsim.view import load_view
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
    assert failing == ["memory"]
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
        {"memory", "diagnostic"}
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
              "boot-fail", "ecc-correctable-storm", "gpu-lost", "pcie-gen", "thermal-throttle",
              "fabric-manager-down", "peermem-unloaded", "kernel-log-rotate", "tool-hang"}
    assert tested == set(KINDS)


def _keys(diff: list[tuple[str, str]]) -> set[str]:
    return {y.split(":")[0].strip() for _, y in diff}


def _cleared_is_healthy(healthy, node: Node, monkeypatch) -> None:
    monkeypatch.setenv("KILN_LAB_DIR", str(node.lab))
    assert fault_command([node.name, "--clear"]) == 0
    assert changed(healthy, snapshot(node)) == {}


@pytest.mark.parametrize("memory,counter", [("dram", "DRAM Correctable"),
                                            ("sram", "SRAM Correctable")])
def test_ecc_correctable_storm_makes_a_straggler(healthy, tmp_path, monkeypatch, memory,
                                                 counter):
    node = faulted(tmp_path, monkeypatch, kind="ecc-correctable-storm", gpu=2, memory=memory)
    after = snapshot(node)
    diff = changed(healthy, after)
    assert set(diff) == {"smi-q", "smi-x", "dmesg"}
    # the two counters (volatile, aggregate), the held clocks and the slowdown reason
    assert _keys(diff["smi-q"]) == {counter, "Graphics", "SM", "Idle", "HW Slowdown"}
    gpus = parse_nvidia_smi_q("\n".join(after["smi-q"][1]))["gpus"]
    key = counter.lower().replace(" ", "_")
    assert [g["ecc"]["volatile"][key] for g in gpus] == [0, 0, 25000, 0, 0, 0, 0, 0]
    assert gpus[2]["ecc"]["aggregate"][key] == 25000
    assert gpus[2]["ecc"]["volatile_uncorrectable"] == 0
    assert gpus[2]["active_clocks_event_reasons"] == ["hw_slowdown"]
    assert gpus[2]["clocks"]["sm"] == gpus[2]["clocks"]["graphics"] == 990
    assert gpus[2]["max_clocks"]["sm"] == 1980
    assert {g["clocks"]["sm"] for i, g in enumerate(gpus) if i != 2} == {345}
    log = parse_kernel_log("\n".join(after["dmesg"][1]))
    assert [(x["xid"], x["pci"], x["pid"], x["message"]) for x in log["xids"]] == [
        (92, "0000:4c:00", None, "High single-bit ECC error rate")]
    rc, csv = node.run("nvidia_smi", "--query-gpu=ecc.errors.corrected.volatile.total,"
                       "clocks_event_reasons.active", "--format=csv,noheader")
    assert csv.splitlines()[2] == "25000, 0x0000000000000008"
    assert csv.splitlines()[0] == "0, 0x0000000000000001"
    _cleared_is_healthy(healthy, node, monkeypatch)


def test_ecc_correctable_storm_clock_is_a_hw_slowdown(tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="ecc-correctable-storm", gpu=0, count=7,
                   sm_clock=705)
    rc, csv = node.run("nvidia_smi", "-i", "0", "--query-gpu=clocks.sm,clocks.gr,"
                       "ecc.errors.corrected.aggregate.total", "--format=csv,noheader,nounits")
    assert csv == "705, 705, 7\n"


def test_gpu_lost_fails_every_nvidia_smi_query_that_names_it(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="gpu-lost", gpu=4)
    after = snapshot(node)
    diff = changed(healthy, after)
    # dcgmi sees seven GPUs; all_reduce_perf -g 8 has no eighth device
    assert set(diff) == {"smi-q", "smi-x", "nvlink-s", "nvlink-e", "dmesg", "dcgmi", "nccl"}
    lost = "Unable to determine the device handle for GPU0000:9B:00.0: Unknown Error"
    for view in ("smi-q", "smi-x", "nvlink-s", "nvlink-e"):
        assert after[view] == (255, [lost]), view
    for argv in ([], ["--query-gpu=index", "--format=csv"], ["-i", "4", "-q"]):
        assert node.run("nvidia_smi", *argv) == (255, lost + "\n")
    # -i naming only GPUs still on the bus works; NVML still counts the lost one
    rc, out = node.run("nvidia_smi", "-i", "3,5", "-q")
    assert rc == 0 and [x for x in out.splitlines() if x.startswith("GPU ")] == [
        "GPU 00000000:5D:00.0", "GPU 00000000:BB:00.0"]
    assert "Attached GPUs                             : 8" in out.splitlines()
    rc, out = node.run("nvidia_smi", "-i", "0", "nvlink", "-s")
    assert rc == 0 and [g["index"] for g in parse_nvlink(out)] == [0]
    assert all(link["active"] for link in parse_nvlink(out)[0]["links"])
    rc, out = node.run("nvidia_smi", "-L")
    assert rc == 255
    assert out.splitlines()[4] == ("Unable to determine the device handle for gpu "
                                   "0000:9B:00.0: Unknown Error")
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("GPU ")] == [
        f"GPU {i}" for i in (0, 1, 2, 3, 5, 6, 7)]
    log = [line.split("] ", 1)[1] if line.startswith("[") else line
           for _, line in diff["dmesg"]]
    assert log == [
        "NVRM: GPU at PCI:0000:9b:00: " + parsed_uuid(node, 4),
        "NVRM: GPU Board Serial Number: " + parsed_serial(node, 4),
        "NVRM: Xid (PCI:0000:9b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off "
        "the bus.",
        "NVRM: GPU 0000:9b:00.0: GPU has fallen off the bus.",
        "NVRM: A GPU crash dump has been created. If possible, please run",
        "               NVRM: nvidia-bug-report.sh as root to collect this data before",
        "               NVRM: the NVIDIA kernel module is unloaded.",
    ]
    # what CUDA, DCGM and the burn-in tools see: the seven GPUs still on the bus
    assert [g["index"] for g in load_view(node.hw).gpus] == [0, 1, 2, 3, 5, 6, 7]
    _cleared_is_healthy(healthy, node, monkeypatch)


def parsed_uuid(node: Node, gpu: int) -> str:
    return read_json(node.hw / "profile.json")["gpus"][gpu]["uuid"]


def parsed_serial(node: Node, gpu: int) -> str:
    return read_json(node.hw / "profile.json")["gpus"][gpu]["serial"]


def test_gpu_pcie_gen3(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="pcie-gen", gpu=1, gen=3)
    diff = changed(healthy, snapshot(node))
    # (dcgmi's PCIe test may judge the generation too: its own module)
    assert {"smi-q", "smi-x"} <= set(diff) <= {"smi-q", "smi-x", "dcgmi"}
    assert [" ".join(y.split()) for _, y in diff["smi-q"]] == ["Current : 3",
                                                               "Device Current : 3"]
    rc, csv = node.run("nvidia_smi", "--query-gpu=pcie.link.gen.current,pcie.link.gen.max",
                       "--format=csv,noheader")
    assert csv.splitlines() == ["5, 5", "3, 5"] + ["5, 5"] * 6
    _cleared_is_healthy(healthy, node, monkeypatch)


def test_hca_pcie_gen4(healthy, tmp_path, monkeypatch):
    from kiln.lab.hwsim.tools import _perf

    node = faulted(tmp_path, monkeypatch, kind="pcie-gen", hca=2)
    diff = changed(healthy, snapshot(node))
    assert set(diff) == {"dmesg"}
    assert [y.split("] ", 1)[1] for _, y in diff["dmesg"]] == [
        "mlx5_core 0000:4d:00.0: 252.048 Gb/s available PCIe bandwidth, limited by 16.0 GT/s "
        "PCIe x16 link at 0000:4c:01.0 (capable of 504.112 Gb/s with 32.0 GT/s PCIe x16 link)"]
    # a 400 Gb/s port behind a 252 Gb/s link: RDMA writes on it drop
    hcas = load_view(node.hw).hcas
    assert _perf.hca_gbps(hcas[2]) < 0.6 * _perf.hca_gbps(hcas[1])
    _cleared_is_healthy(healthy, node, monkeypatch)


def test_hca_pcie_gen_and_width_together(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch, faults=[{"kind": "pcie-gen", "hca": 0, "gen": 4},
                                               {"kind": "pcie-width", "hca": 0, "width": 8}])
    rc, out = node.run("dmesg")
    line = next(x for x in out.splitlines() if "0000:1a:00.0: " in x and "PCIe bandwidth" in x)
    assert line.split("] ", 1)[1] == (
        "mlx5_core 0000:1a:00.0: 126.024 Gb/s available PCIe bandwidth, limited by 16.0 GT/s "
        "PCIe x8 link at 0000:19:01.0 (capable of 504.112 Gb/s with 32.0 GT/s PCIe x16 link)")


def test_thermal_throttle(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="thermal-throttle", gpu=5)
    after = snapshot(node)
    diff = changed(healthy, after)
    assert {"smi-q", "smi-x"} <= set(diff) <= {"smi-q", "smi-x", "dcgmi"}
    assert _keys(diff["smi-q"]) == {"GPU Current Temp", "GPU T.Limit Temp", "Idle",
                                    "HW Slowdown", "HW Thermal Slowdown", "SW Thermal Slowdown",
                                    "Graphics", "SM"}
    gpus = parse_nvidia_smi_q("\n".join(after["smi-q"][1]))["gpus"]
    assert gpus[5]["temperature"]["gpu_current_temp"] == 92
    # past the H100's slowdown margin (-2 C), short of its shutdown margin (-8 C)
    assert -8 < gpus[5]["temperature"]["gpu_t_limit_temp"] <= -2
    assert sorted(gpus[5]["active_clocks_event_reasons"]) == [
        "hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown"]
    assert gpus[5]["clocks"]["sm"] == gpus[5]["clocks"]["graphics"] == 990
    rc, csv = node.run("nvidia_smi", "--query-gpu=temperature.gpu,clocks_event_reasons.active",
                       "--format=csv,noheader")
    assert csv.splitlines()[5] == "92, 0x0000000000000068"
    _cleared_is_healthy(healthy, node, monkeypatch)


def test_fabric_manager_down_at_boot(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="fabric-manager-down")
    after = snapshot(node)
    diff = changed(healthy, after)
    assert {"smi-q", "smi-x", "nccl"} <= set(diff) <= {"smi-q", "smi-x", "nccl", "dcgmi"}
    assert {" ".join(y.split()) for _, y in diff["smi-q"]} == {"State : In Progress",
                                                               "Status : N/A"}
    gpus = parse_nvidia_smi_q("\n".join(after["smi-q"][1]))["gpus"]
    assert [g["fabric"] for g in gpus] == [{"state": "In Progress", "status": None}] * 8
    rc, csv = node.run("nvidia_smi", "--query-gpu=fabric.state,fabric.status",
                       "--format=csv,noheader")
    assert csv.splitlines() == ["In Progress, N/A"] * 8
    rc, lines = after["nccl"]
    assert rc != 0 and "'system not yet initialized'" in lines[0]
    _cleared_is_healthy(healthy, node, monkeypatch)


def test_fabric_manager_dying_later_leaves_the_fabric_registered(healthy, tmp_path,
                                                                 monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="fabric-manager-down", when="later")
    assert changed(healthy, snapshot(node)) == {}  # only the daemon goes (test_hwsim_tools)


def test_peermem_unloaded_kernel_lines(healthy, tmp_path, monkeypatch):
    node = faulted(tmp_path, monkeypatch, kind="peermem-unloaded")
    after = snapshot(node)
    diff = changed(healthy, after)
    assert set(diff) == {"dmesg"}
    assert [y.split("] ", 1)[1] for _, y in diff["dmesg"]] == [
        "nvidia_peermem: disagrees about version of symbol ib_register_peer_memory_client",
        "nvidia_peermem: Unknown symbol ib_register_peer_memory_client (err -22)",
        "nvidia_peermem: disagrees about version of symbol ib_unregister_peer_memory_client",
        "nvidia_peermem: Unknown symbol ib_unregister_peer_memory_client (err -22)",
    ]
    assert parse_kernel_log("\n".join(after["dmesg"][1]))["xids"] == []
    _cleared_is_healthy(healthy, node, monkeypatch)


def test_kernel_log_rotate_drops_only_the_oldest_lines(healthy, tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch, faults=[{"kind": "xid", "gpu": 1, "code": 13, "at": 300},
                                               {"kind": "kernel-log-rotate", "drop": 40}])
    rc, out = node.run("dmesg")
    full = healthy["dmesg"][1]
    assert rc == 0 and out.splitlines()[:-1] == full[40:]  # same lines, same timestamps
    assert out.splitlines()[-1].startswith("[  300.000000] NVRM: Xid (PCI:0000:3b:00): 13,")
    monkeypatch.setenv("KILN_LAB_DIR", str(node.lab))
    # the buffer wraps further: the Xid goes too; a reader's cursor never sees it come back
    assert fault_command(["gpu-001", "kernel-log-rotate", f"drop={len(full) + 1}"]) == 0
    assert node.run("dmesg") == (0, "")
    assert fault_command(["gpu-001", "--clear", "kernel-log-rotate"]) == 0
    assert node.run("dmesg")[1].splitlines()[:-1] == full


@pytest.mark.parametrize("kind", ["fabric-manager-down", "peermem-unloaded"])
def test_service_node_refuses_a_board_fault(tmp_path, kind):
    from kiln.lab.hwsim.lab_hooks import prepare_node_hardware

    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"faults": [{"node": "svc-01", "kind": kind}]}))
    with pytest.raises(FaultError, match="node svc-01 has no"):
        prepare_node_hardware(tmp_path / "lab", "svc-01", 9, "service", path)


def test_fault_list_names_every_kind(capsys):
    assert fault_command(["--list"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ")}
    assert set(KINDS) <= listed


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
    ({"node": "gpu-001", "kind": "pcie-gen", "gen": 3},
     "name exactly one of fields 'gpu' and 'hca'"),
    ({"node": "gpu-001", "kind": "pcie-gen", "hca": 1, "gen": 5},
     "field 'gen': 5 is not a PCIe generation 1-4"),
    ({"node": "gpu-001", "kind": "thermal-throttle", "gpu": 1, "temp": 130},
     "field 'temp': 130 is not degrees C, 70-100"),
    ({"node": "gpu-001", "kind": "thermal-throttle"}, "field 'gpu': required"),
    ({"node": "gpu-001", "kind": "ecc-correctable-storm", "gpu": 1, "sm_clock": 1500},
     "field 'sm_clock': 1500 is not MHz, 100-990"),
    ({"node": "gpu-001", "kind": "ecc-correctable-storm", "gpu": 1, "count": 0},
     "field 'count': 0 is not a count >= 1"),
    ({"node": "gpu-001", "kind": "gpu-lost", "gpu": 8}, "field 'gpu': 8 is not a GPU index"),
    ({"node": "gpu-001", "kind": "fabric-manager-down", "when": "never"},
     "field 'when': 'never' is not boot or later"),
    ({"node": "gpu-001", "kind": "peermem-unloaded", "module": "x"}, "field 'module': unknown"),
    ({"node": "gpu-001", "kind": "kernel-log-rotate", "drop": 0},
     "field 'drop': 0 is not a number of lines >= 1"),
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


def test_tool_hang_stops_only_that_tool(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    node = faulted(tmp_path, monkeypatch, kind="tool-hang", tool="dcgmi")
    env = {**os.environ, "KILN_HW_DIR": str(node.hw),
           "KILN_HW_FLASH_DIR": str(node.hw / "flash"),
           "KILN_HWSIM_DRIVER_VERSION_FILE": str(node.driver_file)}

    def tool(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", f"import sys; from kiln.lab.hwsim.tools "
                               f"import {module}; sys.exit({module}.main())", *argv],
                              env=env, capture_output=True, text=True, timeout=2)

    with pytest.raises(subprocess.TimeoutExpired):
        tool("dcgmi", "diag", "-r", "1", "-j")
    assert tool("nvidia_smi", "-L").returncode == 0  # the other tools still answer
