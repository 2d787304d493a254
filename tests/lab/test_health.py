"""The health stage on the lab: the real pyinfra run of roles/health on 8 deployed GPU nodes
(after the stages it stands on: base, OFED, NVIDIA, the fabric), then one fault per kind,
injected at run time with `kiln lab fault`, found by `deploy/health.py`:

    gpu-001  healthy: every result OK
    gpu-002  correctable-ECC storm on GPU 2 (straggler, clocks cut); thermal throttle on GPU 5
    gpu-003  GPU 6 fallen off the bus
    gpu-004  GPU 1 and HCA mlx5_3 at PCIe Gen4; a boot-log line nobody reviewed
    gpu-005  fabric manager stopped; uncorrectable ECC on GPU 0 (pooled: drained)
    gpu-006  nvidia-peermem unloaded; NTP unreachable (time not synchronised)
    gpu-007  a machine check in the BMC's event log; a fatal SXid on NVSwitch 2
    gpu-008  Xid 94 on GPU 3; an uncorrectable EDAC line; dcgmi hangs

Each is found by the right check and named by its GPU, HCA, Xid, line or DIMM; a healthy
node is all OK; a hanging dcgmi is UNKNOWN within its timeout while the node's other checks
still report; an Xid already judged is not reported again, nor after the kernel log wraps;
a preview writes nothing; `kiln dmesg learn` turns the unknown line into a known one.

The stages (with burn-in, bring-up's next stage) run once for tests/lab/test_burnin.py and
this module (tests/lab/conftest.py, `gpu_stages`), this module right after that one, which
clears its faults when it ends.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from lab_data import lab_apt_data

pytestmark = pytest.mark.lab

FLEET = "deploy/health.py"
GPU_NODES = [f"gpu-00{i}" for i in range(1, 9)]
FAULTS = [
    ("gpu-002", "ecc-correctable-storm", "gpu=2"),
    ("gpu-002", "thermal-throttle", "gpu=5"),
    ("gpu-003", "gpu-lost", "gpu=6"),
    ("gpu-004", "pcie-gen", "gpu=1", "gen=4"),
    ("gpu-004", "pcie-gen", "hca=3", "gen=4"),
    ("gpu-004", "boot-log-line", "line=kiln-lab: a line nobody reviewed yet (model 0x1234)"),
    ("gpu-005", "fabric-manager-down", "when=later"),
    ("gpu-005", "ecc-uncorrectable", "gpu=0", "count=2"),
    ("gpu-006", "peermem-unloaded"),
    ("gpu-006", "time-unsynced"),
    ("gpu-007", "bmc-event", "kind=machine-check"),
    ("gpu-007", "sxid", "nvswitch=2", "code=12028", "link=5", "fatal=true"),
    ("gpu-008", "xid", "gpu=3", "code=94"),
    ("gpu-008", "boot-log-line", "line=EDAC MC0: 1 UE memory read error on "
     "CPU_SrcID#0_MC#0_Chan#0_DIMM#0 (channel:0 slot:0 page:0x1a2b3c offset:0x0 grain:32 "
     "syndrome:0x0)"),
    ("gpu-008", "tool-hang", "tool=dcgmi"),
]


class Health:
    def __init__(self, state, labtools, allowlist: Path):
        self.state, self.labtools = state, labtools
        self.ledger = Path(state.lab_dir) / "kiln.db"
        self.pool = Path(state.lab_dir) / "pool.yaml"
        self.allowlist = allowlist  # the one the stages' health stage was given

    def pyinfra(self, deploy: str, *args: str, apply: bool = True
                ) -> subprocess.CompletedProcess[str]:
        command = [str(self.labtools.bin / "pyinfra"), *(["-y"] if apply else ["--dry"]),
                   "inventory/lab.py", deploy, *lab_apt_data(self.state),
                   "--data", f"kiln_bootlog_allowlist={self.allowlist}", *args]
        return subprocess.run(command, cwd=self.labtools.root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)

    def kiln(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.labtools.bin / "kiln"), *args], cwd=self.labtools.root,
                              capture_output=True, text=True, timeout=120)

    def results(self, node: str) -> list[dict]:
        """`kiln health NODE --json`: the ledger's last result per check and part."""
        out = self.kiln("health", node, "--ledger", str(self.ledger), "--json")
        assert out.returncode in (0, 2), out.stderr
        return json.loads(out.stdout)

    def failing(self, node: str) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for row in self.results(node):
            if row["status"] != "OK":
                found.setdefault(row["check"], []).append(row)
        return found

    def rows(self) -> int:
        # Closed here, not left to the garbage collector: an open connection in this process
        # loses its locks when the credential scan closes the files it read (POSIX locks are
        # per process), and then a read after the next run finds the ledger "malformed".
        with closing(sqlite3.connect(self.ledger)) as db:
            return db.execute("SELECT COUNT(*) FROM checks").fetchone()[0]


def wait_for_time_sync(health: Health) -> None:
    """Every node's chrony synchronised again before a run that judges time on all of them.
    Once in CI (2026-12-07) all eight nodes read "Not synchronised" for a while right after
    the stages had found them synchronised: the lab's NTP under the suite's load, cause not
    yet found. Waits at most about 45 s; a node still unsynchronised fails the run as before."""
    for node in GPU_NODES:
        health.labtools.ssh(health.state, node, "chronyc waitsync 45 0 0 1 >/dev/null 2>&1",
                            check=False)


@pytest.fixture(scope="module")
def health(lab_shapes, labtools, gpu_stages):
    state = lab_shapes.deployed()
    yield Health(state, labtools, gpu_stages.allowlist)
    # Faults, a learnt allowlist and a drained pool stay behind: the next module starts afresh.
    lab_shapes.forget()


@pytest.fixture(scope="module")
def stages(health, gpu_stages):
    """Bring-up's stages up to health (and burn-in) on every GPU node, shared with
    test_burnin: all healthy."""
    health.seconds = gpu_stages.seconds
    return gpu_stages.result


@pytest.fixture(scope="module")
def faulted(health, stages):
    """Every fault injected; gpu-001 and gpu-005 in the pool; deploy/health.py run."""
    assert stages.returncode == 0, stages.stdout[-6000:]
    wait_for_time_sync(health)
    for node, kind, *fields in FAULTS:
        out = health.kiln("lab", "fault", node, kind, *fields)
        assert out.returncode == 0, out.stdout + out.stderr
    # chrony keeps its source until it restarts (as after a reboot): restart it now.
    health.labtools.ssh(health.state, "gpu-006", "service chrony restart")
    health.pool.write_text(yaml.safe_dump({"members": ["gpu-001", "gpu-005"], "drained": {}}))
    started = time.monotonic()
    result = health.pyinfra(FLEET)
    health.fleet_seconds = time.monotonic() - started
    return result


def test_the_stages_end_with_every_node_healthy_and_a_rerun_changes_nothing(health, stages):
    assert stages.returncode == 0, stages.stdout[-6000:]
    for node in GPU_NODES:
        assert health.failing(node) == {}, node
    wait_for_time_sync(health)
    again = health.pyinfra(FLEET)
    assert again.returncode == 0, again.stdout[-4000:]
    line = next(x for x in again.stdout.splitlines() if "every single-node check" in x
                and x.strip().endswith("8"))
    assert line.split()[-4:] == ["8", "-", "-", "8"]  # hosts, success, error, no change


def test_a_healthy_node_is_all_ok_with_every_check_there(health, faulted):
    rows = health.results("gpu-001")
    assert {r["status"] for r in rows} == {"OK"}
    checks = {r["check"] for r in rows}
    assert checks >= {"gpu-count", "gpu-versions", "gpu-config", "gpu-memory", "gpu-pcie",
                      "gpu-clocks", "gpu-nvlink", "gpu-fabric", "dcgm-diag", "kernel-xid",
                      "boot-log", "bmc-sel", "infiniband-hca", "nvidia-peermem", "host-cpu",
                      "host-memory", "host-disks", "host-swap", "host-time"}
    assert sum(1 for r in rows if r["check"] == "gpu-memory") == 8
    assert "gpu-001" in yaml.safe_load(health.pool.read_text())["members"]


def test_each_fault_fails_its_node_only(faulted):
    for node in GPU_NODES[1:]:
        assert f"[{node}] node {node}: health:" in faulted.stdout, node
    assert "[gpu-001] node gpu-001: health:" not in faulted.stdout
    assert faulted.returncode != 0


def part(rows: list[dict], name: str) -> list[dict]:
    return [r for r in rows if r["subject"].split(": ", 1)[-1].startswith(name)]


def test_the_correctable_storm_and_the_thermal_throttle_name_their_gpus(health, faulted):
    bad = health.failing("gpu-002")
    [memory] = bad["gpu-memory"]
    assert memory["status"] == "CRITICAL" and "GPU 2 (PCI 00000000:4C:00.0" in memory["subject"]
    assert "25000 correctable ECC errors" in memory["detail"] and "straggler" in memory["detail"]
    clocks = {r["subject"].split(" (")[0].split(": ")[-1]: r for r in bad["gpu-clocks"]}
    assert set(clocks) == {"GPU 2", "GPU 5"}
    assert "hw thermal slowdown active" in clocks["GPU 5"]["detail"]
    assert "GPU at 92 C" in clocks["GPU 5"]["detail"]
    assert "hw slowdown active" in clocks["GPU 2"]["detail"]
    # The storm's Xid 92 is reported, not failed (kiln's table: correctable errors)
    [xid] = bad["kernel-xid"]
    assert xid["status"] == "WARN" and "Xid 92" in xid["detail"] and "GPU 2" in xid["subject"]


def test_a_gpu_fallen_off_the_bus_is_named_by_its_pci_address(health, faulted):
    bad = health.failing("gpu-003")
    lost = [r for r in bad["gpu-count"] if "0000:CB:00.0" in r["subject"]]
    assert lost and lost[0]["status"] == "CRITICAL" and "fallen off the bus" in lost[0]["detail"]
    assert any("Xid 79" in r["detail"] for r in bad["kernel-xid"])
    # The other GPU checks could not tell (nvidia-smi -q stops at the lost GPU): UNKNOWN,
    # reported beside the CRITICAL, never instead of it.
    assert {r["status"] for r in bad["gpu-memory"]} == {"UNKNOWN"}


def test_a_lower_pcie_generation_names_the_gpu_and_the_hca(health, faulted):
    bad = health.failing("gpu-004")
    [gpu] = bad["gpu-pcie"]
    assert "GPU 1 (PCI 00000000:3B:00.0" in gpu["subject"]
    assert "PCIe Gen4, not Gen5" in gpu["detail"]
    [hca] = bad["infiniband-hca"]
    assert "HCA mlx5_3" in hca["subject"] and "PCIe Gen4 (16.0 GT/s PCIe), not Gen5" in \
        hca["detail"]
    # the kernel said so too, in the boot log: always critical
    assert any("limited by 16.0 GT/s PCIe x16" in r["detail"] for r in bad["boot-log"]
               if r["status"] == "CRITICAL")
    unknown = [r for r in bad["boot-log"] if r["status"] == "WARN"]
    assert unknown and "a line nobody reviewed yet" in unknown[0]["detail"]


def test_fabric_manager_and_uncorrectable_ecc_and_the_pooled_node_is_drained(health, faulted):
    bad = health.failing("gpu-005")
    assert any("nvidia-fabricmanager is failed" in r["detail"] for r in bad["gpu-fabric"])
    [memory] = bad["gpu-memory"]
    assert "GPU 0 " in memory["subject"] and "2 volatile uncorrectable ECC" in memory["detail"]
    # dcgmi diag -r 1 (the health level) runs no memory test: the counters caught it
    assert "dcgm-diag" not in bad
    pool = yaml.safe_load(health.pool.read_text())
    assert pool["members"] == ["gpu-001"]
    assert pool["drained"]["gpu-005"]["reason"].startswith("kiln: health: node gpu-005")


def test_peermem_unloaded_and_time_not_synchronised(health, faulted):
    bad = health.failing("gpu-006")
    assert "nvidia_peermem is not loaded" in bad["nvidia-peermem"][0]["detail"]
    [clock] = bad["host-time"]
    assert clock["status"] == "CRITICAL" and "Not synchronised" in clock["detail"]


def test_a_machine_check_in_the_bmc_log_and_a_fatal_sxid(health, faulted):
    bad = health.failing("gpu-007")
    [sel] = bad["bmc-sel"]
    assert sel["status"] == "CRITICAL" and "machine-check" in sel["detail"]
    [sxid] = bad["kernel-xid"]
    assert "NVSwitch nvidia-nvswitch2" in sxid["subject"] and "SXid 12028" in sxid["detail"]


def test_a_hanging_dcgmi_is_unknown_within_its_timeout_and_the_rest_still_report(health,
                                                                                  faulted):
    bad = health.failing("gpu-008")
    [dcgm] = bad["dcgm-diag"]
    assert dcgm["status"] == "UNKNOWN" and "did not answer within 20 s" in dcgm["detail"]
    [edac] = [r for r in bad["boot-log"] if r["status"] == "CRITICAL"]
    assert "DIMM CPU_SrcID#0_MC#0_Chan#0_DIMM#0" in edac["subject"]
    [xid] = bad["kernel-xid"]
    assert "GPU 3 " in xid["subject"] and "Xid 94" in xid["detail"]
    # The whole fleet waited only for the one hang (the read runs on all nodes at once).
    assert health.fleet_seconds < 20 + 60


def test_an_xid_is_judged_once_even_after_the_log_wraps(health, faulted):
    # dcgmi answers again (its hang was the test above), so these runs do not wait for it
    out = health.kiln("lab", "fault", "gpu-008", "--clear", "tool-hang")
    assert out.returncode == 0, out.stdout + out.stderr
    again = health.pyinfra(FLEET, "--limit", "gpu-008")
    assert "Xid 94" not in again.stdout
    assert not any(r["status"] != "OK" for r in health.results("gpu-008")
                   if r["check"] == "kernel-xid")
    out = health.kiln("lab", "fault", "gpu-008", "kernel-log-rotate", "drop=40")
    assert out.returncode == 0, out.stderr
    out = health.kiln("lab", "fault", "gpu-008", "xid", "gpu=5", "code=48")
    assert out.returncode == 0, out.stderr
    wrapped = health.pyinfra(FLEET, "--limit", "gpu-008")
    assert "Xid 94" not in wrapped.stdout and "Xid 48" in wrapped.stdout
    [xid] = [r for r in health.results("gpu-008")
             if r["check"] == "kernel-xid" and r["status"] != "OK"]
    assert "GPU 5 " in xid["subject"] and xid["status"] == "CRITICAL"


def test_a_preview_reads_and_judges_but_writes_nothing(health, faulted):
    before = health.rows()
    pool = health.pool.read_text()
    preview = health.pyinfra(FLEET, "--limit", "gpu-002", apply=False)
    assert health.rows() == before and health.pool.read_text() == pool
    # It read and judged (the faulty node's results would be recorded: a change to show).
    assert preview.returncode == 0 and "Traceback" not in preview.stdout, preview.stdout[-3000:]
    assert "gpu-002" in preview.stdout


def test_dmesg_learn_accepts_the_unknown_line(health, faulted):
    learnt = health.kiln("dmesg", "learn", "gpu-004", "--ledger", str(health.ledger),
                         "--allowlist", str(health.allowlist), "--accept-all", "--yes")
    assert learnt.returncode == 0, learnt.stdout + learnt.stderr
    assert "a line nobody reviewed yet" in health.allowlist.read_text()
    health.pyinfra(FLEET, "--limit", "gpu-004")
    log = [r for r in health.results("gpu-004") if r["check"] == "boot-log"]
    assert not any(r["status"] == "WARN" for r in log)
    assert any(r["status"] == "CRITICAL" for r in log)  # the PCIe line stays critical
