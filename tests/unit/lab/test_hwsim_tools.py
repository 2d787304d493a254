"""The simulated tools against the real tools' output (tests/fixtures), both directions:
same structure as the real capture, and parsed by the same parser as the real capture."""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_hwsim_helpers import DRIVER, Node

from kiln.lab.firmware_blobs import blob_bytes
from kiln.lab.hwsim.lab_hooks import on_node_boot
from kiln.roles.burnin.parsers import parse_ib_write_bw, parse_nccl_tests
from kiln.roles.firmware.parsers import parse_mlxconfig, parse_mlxfwmanager
from kiln.roles.health.parsers import parse_dcgmi_diag, parse_kernel_log
from kiln.roles.infiniband.parsers import parse_ibstat
from kiln.roles.nvidia.parsers import parse_nvidia_smi_csv, parse_nvidia_smi_q, parse_nvlink

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@pytest.fixture
def node(tmp_path, monkeypatch):
    return Node(tmp_path, monkeypatch)


def _keys(text: str) -> list[str]:
    return [line.split(":")[0].rstrip() for line in text.splitlines()]


def test_nvidia_smi_q_has_the_real_sections_in_the_real_order(node):
    rc, out = node.run("nvidia_smi", "-q")
    real = (FIXTURES / "nvidia-smi" / "q.h100x8.535.161.08.txt").read_text()
    assert rc == 0
    assert _keys(out) == _keys(real)
    ours, theirs = parse_nvidia_smi_q(out), parse_nvidia_smi_q(real)
    assert ours["attached_gpus"] == theirs["attached_gpus"] == 8
    assert ours["driver_version"] == DRIVER
    assert sorted(ours["gpus"][0]) == sorted(theirs["gpus"][0])


def test_nvidia_smi_q_x_is_xml_with_the_same_values(node):
    rc, out = node.run("nvidia_smi", "-q", "-x")
    root = ET.fromstring(out.split("\n", 2)[2])  # past the XML declaration and DOCTYPE
    assert rc == 0 and root.tag == "nvidia_smi_log"
    gpus = root.findall("gpu")
    assert len(gpus) == 8 and gpus[0].get("id") == "00000000:19:00.0"
    text = parse_nvidia_smi_q(node.run("nvidia_smi", "-q")[1])
    assert [g.findtext("uuid") for g in gpus] == [g["uuid"] for g in text["gpus"]]
    assert gpus[3].findtext("ecc_errors/volatile/dram_uncorrectable") == "0"
    assert gpus[0].findtext("remapped_rows/remapped_row_pending") == "No"
    assert gpus[0].findtext("pci/pci_gpu_link_info/link_widths/current_link_width") == "16x"
    assert '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">' in out


def test_nvidia_smi_csv(node):
    fields = "index,name,uuid,serial,pci.bus_id,memory.total,power.draw,clocks.sm," \
             "ecc.errors.uncorrected.volatile.total,remapped_rows.pending,pcie.link.width.current"
    rc, out = node.run("nvidia_smi", f"--query-gpu={fields}", "--format=csv")
    assert rc == 0
    header = out.splitlines()[0]
    assert "memory.total [MiB]" in header and "power.draw [W]" in header
    rows = parse_nvidia_smi_csv(out)
    assert len(rows) == 8 and rows[2]["index"] == 2
    rc, bare = node.run("nvidia_smi", "--query-gpu=index,memory.total",
                        "--format=csv,noheader,nounits")
    assert bare.splitlines()[0] == "0, 81559"
    parsed = parse_nvidia_smi_csv(bare, ["index", "memory.total"])
    assert len(parsed) == 8


def test_nvidia_smi_unknown_field_is_the_real_error(node):
    rc, out = node.run("nvidia_smi", "--query-gpu=index,bogus", "--format=csv")
    assert rc != 0 and out == 'Field "bogus" is not a valid field to query.\n\n'


def test_nvidia_smi_nvlink_status_like_the_real_one(node):
    rc, out = node.run("nvidia_smi", "nvlink", "-s")
    real = (FIXTURES / "nvidia-smi" / "nvlink-status.a100.txt").read_text()
    line = re.compile(r"^(GPU \d+: .+ \(UUID: GPU-[0-9a-f-]+\)|         Link \d+: .+)$")
    assert all(line.match(x) for x in real.splitlines())
    assert all(line.match(x) for x in out.splitlines())
    parsed = parse_nvlink(out)
    assert len(parsed) == 8 and all(len(g["links"]) == 18 for g in parsed)
    assert parsed[0]["links"][0]["speed_gb_s"] == pytest.approx(26.562)
    errors = parse_nvlink(node.run("nvidia_smi", "nvlink", "-e")[1])
    assert len(errors) == 8


def test_driver_library_mismatch(node):
    node.driver_file.write_text("570.172.08\n")  # a newer driver installed, not yet rebooted
    rc, out = node.run("nvidia_smi", "-q")
    assert rc == 18
    assert out.startswith("Failed to initialize NVML: Driver/library version mismatch\n")
    on_node_boot(node.lab, node.name, node.rootfs)  # the reboot loads it
    rc, out = node.run("nvidia_smi", "--query-gpu=driver_version", "--format=csv,noheader")
    assert rc == 0 and out.splitlines() == ["570.172.08"] * 8


def test_no_driver_loaded(tmp_path, monkeypatch):
    node = Node(tmp_path, monkeypatch)
    node.driver_file.unlink()
    on_node_boot(node.lab, node.name, node.rootfs)
    rc, out = node.run("nvidia_smi")
    assert rc == 9 and "couldn't communicate with the NVIDIA driver" in out


def test_ibstat_has_the_real_keys(node):
    rc, out = node.run("ibstat")
    real = (FIXTURES / "ibstat" / "ibstat.h100.all-active.txt").read_text()
    assert rc == 0
    assert _keys(out)[:17] == _keys(real)[:17]  # one CA block, key for key
    ours, theirs = parse_ibstat(out), parse_ibstat(real)
    assert len(ours) == 8
    assert sorted(ours[0]) == sorted(theirs[0])
    assert sorted(ours[0]["ports"][0]) == sorted(theirs[0]["ports"][0])
    assert {p["ports"][0]["link_layer"] for p in ours} == {"InfiniBand"}


def test_ibstatus_and_ibv_devinfo(node):
    rc, out = node.run("ibstatus", "mlx5_3")
    assert rc == 0 and "\tstate:\t\t 4: ACTIVE" in out and "400 Gb/sec (4X NDR)" in out
    rc, out = node.run("ibv_devinfo", "-d", "mlx5_3")
    assert rc == 0 and out.startswith("hca_id:\tmlx5_3\n") and "PORT_ACTIVE (4)" in out


def test_all_reduce_perf_single_node(node):
    rc, out = node.run("all_reduce_perf", "-b", "8", "-e", "8G", "-f", "2", "-g", "8")
    real = (FIXTURES / "nccl-tests" / "all_reduce_perf.a100x8.single-node.gcm.txt").read_text()
    assert rc == 0
    header = [x for x in real.splitlines() if x.startswith("#  ") and "size" in x or "(B)" in x]
    for line in header:
        assert line in out.splitlines()
    ours = parse_nccl_tests(out)
    theirs = parse_nccl_tests(real)
    assert sorted(ours) == sorted(theirs)
    last = ours["rows"][-1]
    assert last["size"] == 8 * 2**30
    assert 450 <= last["out_of_place"]["busbw"] <= 480


def _mpi_job(nodes: dict[str, Node], per_node: int, ngpus: int) -> list[dict]:
    """The records the processes of an `mpirun -N per_node … -g ngpus` job allgather."""
    from kiln.lab.hwsim.tools.all_reduce_perf import process_record
    from kiln.lab.hwsim.view import load_view

    return [process_record(load_view(node.hw), host, 100 + i, ngpus)
            for host, node in nodes.items() for i in range(per_node)]


def _two_nodes(tmp_path, monkeypatch, faults: list[dict] | None = None) -> dict[str, Node]:
    return {"gpu-001": Node(tmp_path / "a", monkeypatch),
            "gpu-002": Node(tmp_path / "b", monkeypatch, faults=faults, name="gpu-002")}


def test_all_reduce_perf_one_rank_per_gpu_drives_every_gpu(tmp_path, monkeypatch):
    """`-N 8 -g 1` (one rank per GPU, how multi-node burn-in runs nccl-tests): each process
    takes the GPU of its local rank, so the rank lines name all 16 GPUs by their bus ids."""
    from kiln.lab.hwsim.tools.all_reduce_perf import IB_RING_BUSBW, outcome

    nodes = _two_nodes(tmp_path, monkeypatch)
    opts = {"b": "1G", "e": "1G", "f": "2", "g": "1", "n": "20", "w": "5", "c": "1", "t": "1",
            "i": "0", "G": "0", "a": "1"}
    result = outcome(opts, _mpi_job(nodes, 8, 1), 0, reports=True)
    parsed = parse_nccl_tests("\n".join(result.lines))
    assert result.status == 0 and parsed["params"]["ngpus"] == 1
    smi = parse_nvidia_smi_csv(nodes["gpu-002"].run(
        "nvidia_smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader")[1],
        ["index", "pci.bus_id"])
    buses = [f"0x{row['pci.bus_id'].split(':')[1].lower()}" for row in smi]
    assert [(r["host"], r["device"]) for r in parsed["ranks"]] == [
        (host, d) for host in nodes for d in range(8)]
    assert [r["bus_id"] for r in parsed["ranks"][8:]] == buses
    assert len({r["pid"] for r in parsed["ranks"]}) == 8  # pids repeat across the two hosts
    busbw = parsed["rows"][-1]["out_of_place"]["busbw"]
    assert 0.97 * IB_RING_BUSBW <= busbw <= 1.01 * IB_RING_BUSBW
    # Under mpirun each row comes out after the time the real tool measures it for:
    # 5 warmup + 20 timed out-of-place iterations, 20 in-place.
    row = parsed["rows"][-1]
    measured = (25 * row["out_of_place"]["time_us"] + 20 * row["in_place"]["time_us"]) * 1e-6
    pause = result.pauses[next(i for i, line in enumerate(result.lines)
                               if line.lstrip().startswith(str(1 << 30)))]
    assert pause == pytest.approx(measured, rel=1e-3)
    # The same job as one process per node driving 8 GPUs sees the same fabric.
    result = outcome({**opts, "g": "8"}, _mpi_job(nodes, 1, 8), 0, reports=True)
    assert parse_nccl_tests("\n".join(result.lines))["rows"][-1]["out_of_place"]["busbw"] == busbw


@pytest.mark.parametrize("per_node,ngpus", [(8, 1), (1, 8)])
def test_all_reduce_perf_a_fault_on_any_gpu_of_any_participant(tmp_path, monkeypatch, per_node,
                                                               ngpus):
    """A slow NVLink or a GPU computing wrong results on the second node's GPU 5 shows in
    the report rank 0 prints, and every process exits non-zero on wrong results."""
    from kiln.lab.hwsim.tools.all_reduce_perf import IB_RING_BUSBW, outcome

    opts = {"b": "1G", "e": "1G", "f": "2", "g": str(ngpus), "n": "20", "w": "5", "c": "1",
            "t": "1", "i": "0", "G": "0", "a": "1"}
    slow = _two_nodes(tmp_path / "slow", monkeypatch,
                      [{"kind": "nvlink-degraded", "gpu": 5, "factor": 0.5}])
    result = outcome(opts, _mpi_job(slow, per_node, ngpus), 0, reports=True)
    busbw = parse_nccl_tests("\n".join(result.lines))["rows"][-1]["out_of_place"]["busbw"]
    assert result.status == 0
    assert 0.97 * IB_RING_BUSBW * 0.5 <= busbw <= 1.01 * IB_RING_BUSBW * 0.5
    wrong = _two_nodes(tmp_path / "wrong", monkeypatch, [{"kind": "gpu-wrong-results", "gpu": 5}])
    records = _mpi_job(wrong, per_node, ngpus)
    result = outcome(opts, records, 0, reports=True)
    parsed = parse_nccl_tests("\n".join(result.lines))
    assert result.status == 1 and parsed["rows"][-1]["out_of_place"]["wrong"] > 0
    assert parsed["out_of_bounds_ok"] is False
    others = [outcome(opts, records, me, reports=False) for me in range(1, len(records))]
    assert all(other.status == 1 and other.lines == [] for other in others)


def test_all_reduce_perf_more_ranks_than_gpus_on_a_node(tmp_path, monkeypatch):
    """A ninth process on an 8-GPU node has no device: it prints CUDA's error, all exit 1."""
    from kiln.lab.hwsim.tools.all_reduce_perf import outcome

    nodes = _two_nodes(tmp_path, monkeypatch)
    records = _mpi_job(nodes, 9, 1)
    opts = {"b": "8", "e": "8", "f": "2", "g": "1", "n": "20", "w": "5", "c": "1", "t": "1",
            "i": "0", "G": "0", "a": "1"}
    results = [outcome(opts, records, me, reports=me == 0) for me in range(len(records))]
    assert {result.status for result in results} == {1}
    printed = [line for result in results for line in result.lines]
    assert printed == [
        "gpu-001: Test CUDA failure common.cu:1028 'invalid device ordinal'",
        " .. gpu-001 pid 108: Test failure common.cu:882",
        "gpu-002: Test CUDA failure common.cu:1028 'invalid device ordinal'",
        " .. gpu-002 pid 108: Test failure common.cu:882",
    ]


class _Job:
    """An MPI transport for run(): the other processes' records, gathered by the test."""

    launched = False  # in-process: no mpirun forwarding the output, so no pacing

    def __init__(self, rank: int, others: list[dict]) -> None:
        self.rank, self.others, self.barriers = rank, others, 0

    def allgather(self, record: dict) -> list[dict]:
        return self.others[:self.rank] + [record] + self.others[self.rank:]

    def barrier(self) -> None:
        self.barriers += 1


def test_all_reduce_perf_under_mpi_only_rank_0_prints(node, tmp_path, monkeypatch):
    """run() allgathers through the job's transport; rank 0 prints, every rank waits."""
    from kiln.lab.hwsim.tools import all_reduce_perf
    from kiln.lab.hwsim.view import load_view

    others = _mpi_job({"gpu-002": Node(tmp_path / "b", monkeypatch, name="gpu-002")}, 1, 8)
    monkeypatch.setenv("KILN_HWSIM_DRIVER_VERSION_FILE", str(node.driver_file))
    printed = {}
    for rank in (0, 1):
        job = _Job(rank, others)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = all_reduce_perf.run(load_view(node.hw), ["-b", "8", "-e", "1M", "-g", "8"], job)
        assert rc == 0 and job.barriers == 1
        printed[rank] = out.getvalue()
    assert printed[1] == ""
    hosts = [r["host"] for r in parse_nccl_tests(printed[0])["ranks"]]
    assert hosts[8:] == ["gpu-002"] * 8 and len(set(hosts)) == 2


def test_ib_write_bw_between_two_processes(node):
    results = {}

    def server():
        results["server"] = node.run("ib_write_bw", "-d", "mlx5_1", "--report_gbits",
                                     "-p", "18771")

    thread = threading.Thread(target=server)
    thread.start()
    time.sleep(0.2)
    rc, out = node.run("ib_write_bw", "-d", "mlx5_0", "--report_gbits", "-p", "18771",
                       "127.0.0.1")
    thread.join(10)
    assert rc == 0 and results["server"][0] == 0
    real = parse_ib_write_bw((FIXTURES / "perftest" / "ib_write_bw.ndr.report_gbits.txt")
                             .read_text())
    ours = parse_ib_write_bw(out)
    assert sorted(ours) == sorted(real)
    assert 370 <= ours["rows"][0]["bw_average_gbps"] <= 395


def test_mlxconfig_query_set_and_next_boot(node):
    rc, out = node.run("mlxconfig", "-d", "mlx5_0", "q")
    assert rc == 0
    before = parse_mlxconfig(out)[0]["config"]
    assert before["ADVANCED_PCI_SETTINGS"]["raw"] == "False(0)"
    rc, _ = node.run("mlxconfig", "-d", "mlx5_0", "-y", "set", "ADVANCED_PCI_SETTINGS=1")
    assert rc == 0
    extended = parse_mlxconfig(node.run("mlxconfig", "-d", "mlx5_0", "-e", "q")[1])[0]
    assert extended["config"]["ADVANCED_PCI_SETTINGS"]["current"] == "False(0)"
    assert extended["config"]["ADVANCED_PCI_SETTINGS"]["raw"] == "True(1)"  # next boot
    on_node_boot(node.lab, node.name, node.rootfs)
    after = parse_mlxconfig(node.run("mlxconfig", "-d", "mlx5_0", "-e", "q")[1])[0]
    assert after["config"]["ADVANCED_PCI_SETTINGS"]["current"] == "True(1)"
    other = parse_mlxconfig(node.run("mlxconfig", "-d", "mlx5_1", "q")[1])[0]
    assert other["config"]["ADVANCED_PCI_SETTINGS"]["raw"] == "False(0)"


def test_mlxfwmanager_update_applies_at_reset(node, tmp_path):
    blob = tmp_path / "lab-connectx7-28.39.1002.bin"
    blob.write_bytes(blob_bytes("connectx7", "28.39.1002"))
    rc, out = node.run("mlxfwmanager", "-u", "-i", str(blob), "-y")
    assert rc == 0 and "Restart needed for updates to take effect." in out
    real = parse_mlxfwmanager((FIXTURES / "mlxfwmanager" / "query.h100x8.update-required.txt")
                              .read_text())
    query = parse_mlxfwmanager(node.run("mlxfwmanager", "--query")[1])
    assert sorted(query[0]) == sorted(real[0])
    assert query[0]["versions"]["fw"]["current"] == "28.43.1014"  # still the old one
    assert "FW Version(Running):   28.43.1014" in node.run("flint", "-d", "mlx5_0", "q")[1]
    on_node_boot(node.lab, node.name, node.rootfs)
    query = parse_mlxfwmanager(node.run("mlxfwmanager", "--query")[1])
    assert {d["versions"]["fw"]["current"] for d in query} == {"28.39.1002"}
    assert "Firmware version: 28.39.1002" in node.run("ibstat", "mlx5_7")[1]


def test_mlxfwmanager_rejects_a_foreign_image(node, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 4096)
    rc, out = node.run("mlxfwmanager", "-u", "-i", str(junk), "-y")
    assert rc == 1 and "Invalid image" in out
    assert not list((node.hw / "flash").glob("*.bin"))


def test_dcgmi_diag_text_and_json(node):
    """DCGM 4.2.3's tests per level (test_hwsim_real_captures compares the shape with what
    is real); the table and the JSON say the same."""
    tests = {"1": ["software"],
             "2": ["software", "memory", "pcie"],
             "3": ["software", "memory", "diagnostic", "nvbandwidth", "pcie",
                   "memory_bandwidth", "targeted_stress", "targeted_power"],
             "4": ["software", "memory", "diagnostic", "nvbandwidth", "memtest", "pulse_test",
                   "pcie", "memory_bandwidth", "targeted_stress", "targeted_power"]}
    for level, names in tests.items():
        rc, out = node.run("dcgmi", "diag", "-r", level)
        rc_j, js = node.run("dcgmi", "diag", "-r", level, "-j")
        assert rc == rc_j == 0
        parsed, parsed_j = parse_dcgmi_diag(out), parse_dcgmi_diag(js)
        assert parsed["shape"] == parsed_j["shape"] == "dcgm4"
        assert parsed["driver_version"] == parsed_j["driver_version"] == DRIVER
        assert parsed["version"] == parsed_j["version"] == "4.2.3"
        # the table prints its categories in a fixed order, DCGM runs Hardware first
        assert sorted(t["name"] for t in parsed["tests"]) == sorted(names)
        assert [t["name"] for t in parsed_j["tests"]] == names
        for parsed_any in (parsed, parsed_j):
            assert parsed_any["overall"] == "Pass"
            assert all([r["gpu"] for r in t["results"]] == list(range(8))
                       for t in parsed_any["tests"])
    assert json.loads(js)["entity_groups"][0]["entities"][0]["device_id"] == "2330"
    # the same keys as a DCGM 3 read (the hand-written DCGM 3 fixture)
    real_json = parse_dcgmi_diag((FIXTURES / "dcgmi" / "diag-r3-j.h100x8.gpu3-fail.json")
                                 .read_text())
    assert sorted(parsed_j) == sorted(real_json)
    rc, out = node.run("dcgmi", "diag", "-r", "5")
    assert rc == 1 and "invalid run level" in out


def _dcgm4_findings(out: str) -> dict[tuple[str, int | None], tuple[int, int, int]]:
    """(test, GPU or None) -> (error_id, severity, category) of every warning in `-j` output."""
    found = {}
    for test in parse_dcgmi_diag(out)["tests"]:
        for w in test.get("warning_details", []):
            found[(test["name"], w["gpu"])] = (w["error_id"], w["severity"], w["category"])
    return found


def test_dcgmi_diag_reports_faults_as_dcgm4_does(tmp_path, monkeypatch):
    """Each fault as DCGM 4.2.3 reports that kind of failure: its test, error id (dcgmError_t),
    severity and category (dcgm_errors.c), and dcgmi's exit status."""
    node = Node(tmp_path / "a", monkeypatch, faults=[
        {"kind": "ecc-uncorrectable", "gpu": 2}, {"kind": "pcie-width", "gpu": 5},
        {"kind": "gpu-wrong-results", "gpu": 6}])
    rc, out = node.run("dcgmi", "diag", "-r", "3", "-j")
    assert rc == 205  # DCGM_ST_NVVS_ISOLATE_ERROR (-51): an ISOLATE error was reported
    assert _dcgm4_findings(out) == {
        ("memory", 2): (57, 2, 10),       # DCGM_FR_CUDA_DBE, ISOLATE, HARDWARE_MEMORY
        ("memory", 6): (58, 2, 10),       # DCGM_FR_MEMORY_MISMATCH
        ("diagnostic", 6): (52, 2, 10),   # DCGM_FR_FAULTY_MEMORY
        ("pcie", 5): (46, 5, 13),         # DCGM_FR_PCIE_WIDTH, CONFIG, HARDWARE_PCIE
    }
    parsed = parse_dcgmi_diag(out)
    assert parsed["failed_gpus"] == [2, 5, 6]
    memory = next(t for t in parsed["tests"] if t["name"] == "memory")
    assert memory["summary"]["info"] == ["A DBE occurred, CUDA error containment reported issue."]
    # the table says the same, warnings cut at 45 characters and joined back
    text = parse_dcgmi_diag(node.run("dcgmi", "diag", "-r", "3")[1])
    assert {(t["name"], w["gpu"], w["message"]) for t in text["tests"]
            for w in t.get("warning_details", [])} == {
        (t["name"], w["gpu"], w["message"]) for t in parsed["tests"]
        for w in t.get("warning_details", [])}
    assert "| Warning: GPU5             | GPU 5 is running at PCI link width 8X, which   |" \
        in node.run("dcgmi", "diag", "-r", "3")[1].splitlines()

    # a pending remap (uncorrectable rows) stops DCGM after the software test
    node = Node(tmp_path / "b", monkeypatch, faults=[{"kind": "row-remap-pending", "gpu": 1}])
    rc, out = node.run("dcgmi", "diag", "-r", "2", "-j")
    assert rc == 226  # DCGM_ST_NVVS_ERROR (-30): errors, none ISOLATE
    assert _dcgm4_findings(out) == {("software", 1): (84, 6, 10)}  # UNCORRECTABLE_ROW_REMAP, RESET
    parsed = parse_dcgmi_diag(out)
    assert [(t["name"], t["status"]) for t in parsed["tests"]] == [
        ("software", "Fail"), ("memory", "Skip"), ("pcie", "Skip")]
    node = Node(tmp_path / "c", monkeypatch, faults=[{"kind": "row-remap-failed", "gpu": 3}])
    rc, out = node.run("dcgmi", "diag", "-r", "1", "-j")
    assert rc == 205 and _dcgm4_findings(out) == {("software", 3): (80, 2, 10)}
    assert parse_dcgmi_diag(out)["tests"][0]["warning_details"][0]["message"].startswith(
        "Page Retirement/Row Remap: GPU 3 had uncorrectable memory errors and row remapping "
        "failed.")

    # flaky: a stress shortfall (TRIAGE) at -r 3, an error about no one GPU at -r 2
    node = Node(tmp_path / "d", monkeypatch, faults=[{"kind": "flaky", "p": 1.0}])
    rc, out = node.run("dcgmi", "diag", "-r", "3", "-j")
    assert rc == 226 and _dcgm4_findings(out) == {("targeted_stress", 0): (50, 4, 1)}
    rc, out = node.run("dcgmi", "diag", "-r", "2", "-j")
    assert rc == 226 and _dcgm4_findings(out) == {("pcie", None): (44, 4, 16)}
    assert parse_dcgmi_diag(out)["failed_gpus"] == []


def test_dmesg_is_a_kernel_log(node):
    rc, out = node.run("dmesg")
    assert rc == 0
    assert all(re.match(r"^\[ *\d+\.\d{6}\] ", line) for line in out.splitlines())
    assert any(f"NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}" in line
               for line in out.splitlines())
    parsed = parse_kernel_log(out)
    assert parsed["xids"] == [] and parsed["sxids"] == []
    real = parse_kernel_log((FIXTURES / "dmesg" / "dmesg-with-xid-119.log").read_text())
    assert real["xids"]


def test_nvidia_smi_list_gpus_names_each_gpu_with_its_uuid(node):
    rc, out = node.run("nvidia_smi", "-L")
    assert rc == 0
    smi = parse_nvidia_smi_q(node.run("nvidia_smi", "-q")[1])
    lines = out.splitlines()
    assert len(lines) == len(smi["gpus"]) == 8
    for i, (line, gpu) in enumerate(zip(lines, smi["gpus"], strict=True)):
        assert line == f"GPU {i}: {gpu['product_name']} (UUID: {gpu['uuid']})"


def _booted(node: Node) -> float:
    return json.loads((node.hw / "boot.json").read_text())["booted_at"]


def test_dmesg_time_formats_are_util_linux_s(node, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        booted = _booted(node)
        raw = node.run("dmesg")[1].splitlines()
        iso = node.run("dmesg", "--time-format", "iso")[1].splitlines()
        ctime = node.run("dmesg", "-T")[1].splitlines()
        assert len(raw) == len(iso) == len(ctime)
        # iso: no brackets, comma before the microseconds, the UTC offset (as the real
        # capture tests/fixtures/dmesg/*.decode-iso.log, less its --decode prefix)
        stamp, message = iso[5].split(" ", 1)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{6}\+00:00", stamp)
        assert message == raw[5].split("] ", 1)[1]
        seconds = float(raw[5][1:].split("]")[0])
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(booted + seconds))
        assert stamp.startswith(expected)
        # ctime: the day of month space-padded ("[Thu Apr  4 18:03:56 2024]")
        assert re.fullmatch(r"\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]",
                            ctime[5].split("] ")[0] + "]")
        assert node.run("dmesg", "--time-format=raw")[1].splitlines() == raw
        assert node.run("dmesg", "-t")[1].splitlines() == [x.split("] ", 1)[1] for x in raw]
        delta = node.run("dmesg", "-d")[1].splitlines()
        assert re.fullmatch(r"\[ *\d+\.\d{6} < *\d+\.\d{6}>\] .*", delta[5])
        rel = node.run("dmesg", "--time-format", "reltime")[1].splitlines()
        assert re.fullmatch(r"\[[A-Z][a-z]{2}[ \d]\d \d\d:\d\d\] .*", rel[0])
        assert re.fullmatch(r"\[  \+\d\.\d{6}\] .*", rel[1])
        # every format the health check may ask for parses
        for argv in ([], ["-T"], ["--time-format", "iso"], ["-x", "--time-format=iso"]):
            assert parse_kernel_log(node.run("dmesg", *argv)[1])["lines"] == len(raw)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_dmesg_decode_level_and_raw_priority(node):
    node_xid = Node(node.lab.parent / "xid", node.monkeypatch,
                    faults=[{"kind": "xid", "gpu": 0, "code": 13}])
    decoded = node_xid.run("dmesg", "-x")[1].splitlines()
    assert decoded[0].startswith("kern  :info  : [    0.000000] Linux version")
    assert decoded[-1].startswith("kern  :warn  : [  120.000000] NVRM: Xid (PCI:0000:19:00): 13")
    warn = node_xid.run("dmesg", "-l", "warn", "-t")[1].splitlines()
    assert warn and all(x.startswith(("NVRM:", "nvidia:")) for x in warn)
    assert node_xid.run("dmesg", "-r")[1].splitlines()[-1].startswith("<4>[  120.000000] NVRM")
    # `dmesg --decode --time-format=iso`, line for line the shape of the real capture's Xid
    real = next(x for x in (FIXTURES / "dmesg" / "xid13-xid43.decode-iso.log").read_text()
                .splitlines() if "NVRM: Xid" in x)
    ours = node_xid.run("dmesg", "--decode", "--time-format=iso")[1].splitlines()[-1]
    shape = re.compile(r"^kern  :warn  : \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{6}[+-]\d\d:\d\d "
                       r"NVRM: Xid \(PCI:0000:[0-9a-f]{2}:00\): 13, pid=")
    assert shape.match(real) and shape.match(ours)


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "dmesg: unrecognized option '--bogus'"),
    (["-Z"], "dmesg: invalid option -- 'Z'"),
    (["--time-format", "epoch"], "dmesg: unknown time format: epoch"),
    (["-l", "loud"], "dmesg: unknown level 'loud'"),
])
def test_dmesg_refuses_what_util_linux_refuses(node, argv, message):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc, out = node.run("dmesg", *argv)
    assert (rc, out) == (1, "")
    assert err.getvalue() == f"{message}\nTry 'dmesg --help' for more information.\n"


def test_dmesg_accepts_options_that_do_not_change_the_dump(node):
    plain = node.run("dmesg")
    for argv in (["-k"], ["-L"], ["--color=never"], ["-P", "--kernel"], ["-kL"], ["-w"],
                 ["--nopager", "--facility", "kern"]):
        assert node.run("dmesg", *argv) == plain, argv
    assert node.run("dmesg", "-u") == (0, "")  # no user-space lines in the kernel's buffer


def test_dmesg_indents_a_record_of_several_lines(tmp_path, monkeypatch):
    lost = Node(tmp_path, monkeypatch, faults=[{"kind": "gpu-lost", "gpu": 0}])
    # as the real captures print it (NVSentinel issue 155, raw; akash support 209, -T)
    raw = lost.run("dmesg")[1].splitlines()
    at = raw.index("[  120.000000] NVRM: A GPU crash dump has been created. If possible, "
                   "please run")
    assert raw[at + 1] == " " * 15 + ("NVRM: nvidia-bug-report.sh as root to collect this "
                                      "data before")
    ctime = lost.run("dmesg", "-T")[1].splitlines()
    assert ctime[at + 2] == " " * 27 + "NVRM: the NVIDIA kernel module is unloaded."


def _sim_daemon_env(node: Node, tmp_path: Path) -> Path:
    node.monkeypatch.setenv("KILN_HW_DIR", str(node.hw))
    node.monkeypatch.setenv("KILN_HWSIM_RUN_DIR", str(tmp_path / "run"))
    node.monkeypatch.setenv("KILN_HWSIM_MODULES_FILE", str(tmp_path / "proc-modules"))
    node.monkeypatch.setenv("KILN_HWSIM_SYS_MODULES", str(tmp_path / "sys-module"))
    return tmp_path / "proc-modules"


def test_fabric_manager_does_not_start_under_the_fault(tmp_path, monkeypatch):
    from kiln.lab.hwsim.tools import sim_daemon

    down = Node(tmp_path / "n", monkeypatch, faults=[{"kind": "fabric-manager-down"}])
    _sim_daemon_env(down, tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = sim_daemon.main(["nv-fabricmanager", "-c",
                              "/usr/share/nvidia/nvswitch/fabricmanager.cfg"])
    assert rc == 1
    assert err.getvalue() == (
        "request to query NVSwitch device information from NVSwitch driver failed with "
        "error:WARNING Nothing to do [NV_WARN_NOTHING_TO_DO]\n")
    assert not (tmp_path / "run" / "nv-fabricmanager.pid").exists()


def test_a_running_fabric_manager_exits_when_the_fault_comes(node, tmp_path):
    from kiln.lab.hwsim.lab_hooks import apply_fault, clear_faults
    from kiln.lab.hwsim.tools import sim_daemon

    _sim_daemon_env(node, tmp_path)
    assert sim_daemon.serve("nv-fabricmanager", 0.0, rounds=3) is None  # healthy: runs on
    results = {}
    err = io.StringIO()

    def fabric_manager():
        with contextlib.redirect_stderr(err):
            results["fm"] = sim_daemon.serve("nv-fabricmanager", 0.01, rounds=2000)
        results["persistenced"] = sim_daemon.serve("nvidia-persistenced", 0.0, rounds=3)

    thread = threading.Thread(target=fabric_manager)
    thread.start()
    time.sleep(0.05)
    apply_fault(node.lab, node.name, "fabric-manager-down", {"when": "later"})
    thread.join(20)
    assert results == {"fm": 1, "persistenced": None}  # only the fabric manager stops
    assert "fault fabric-manager-down" in err.getvalue()
    clear_faults(node.lab, node.name)
    assert sim_daemon.serve("nv-fabricmanager", 0.0, rounds=2) is None


def test_peermem_unloaded_unloads_and_refuses_modprobe(node, tmp_path):
    from kiln.lab.hwsim.lab_hooks import apply_fault, clear_faults
    from kiln.lab.hwsim.tools import kmod_install, sim_daemon

    modules = _sim_daemon_env(node, tmp_path)
    modules.write_text("ib_core 495616 1 mlx5_ib, Live 0x0000000000000000\n")
    inode = modules.stat().st_ino
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert kmod_install.main(["nvidia_peermem"]) == 0
    assert "nvidia_peermem" in modules.read_text()
    assert (tmp_path / "sys-module/nvidia_peermem/initstate").read_text() == "live\n"
    apply_fault(node.lab, node.name, "peermem-unloaded", {})
    # a simulated daemon in the node notices and unloads it, as rmmod would
    assert sim_daemon.serve("nvidia-persistenced", 0.0, rounds=1) is None
    assert modules.read_text() == "ib_core 495616 1 mlx5_ib, Live 0x0000000000000000\n"
    assert modules.stat().st_ino == inode  # rewritten in place: /proc/modules is a bind of it
    assert not (tmp_path / "sys-module/nvidia_peermem").exists()
    with contextlib.redirect_stderr(err):
        assert kmod_install.main(["nvidia-peermem"]) == 1
    assert err.getvalue() == ("modprobe: ERROR: could not insert 'nvidia_peermem': Invalid "
                              "argument\n")
    assert "nvidia_peermem" not in modules.read_text()
    clear_faults(node.lab, node.name)
    assert kmod_install.main(["nvidia_peermem"]) == 0  # loads again once the cause is gone
    assert sim_daemon.serve("nvidia-persistenced", 0.0, rounds=1) is None
    assert "nvidia_peermem" in modules.read_text()
