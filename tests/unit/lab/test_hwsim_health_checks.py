"""The health checks on each simulated fault: the lab's tools (nvidia-smi -q, nvlink -s/-e,
dmesg, dcgmi) run on a simulated node with one fault, and kiln's judge
(kiln.roles.health.judge) names the check and the part. The sections the simulator has no
tool for (the HCA read, the host) are left out: their checks are UNKNOWN, as a read that
never came would make them, and never hide the fault's CRITICAL."""

from __future__ import annotations

import pytest
from test_hwsim_helpers import Node

from kiln.core.checks import Status
from kiln.core.manifest import load_manifest
from kiln.core.paths import FIRMWARE_DIR
from kiln.roles.health import bootlog
from kiln.roles.health.judge import evaluate
from kiln.roles.health.probe import SectionOutput


def read(node: Node) -> dict[str, SectionOutput]:
    def section(name: str, *runs: tuple[str, ...]) -> SectionOutput:
        texts, rc = [], 0
        for tool, *argv in runs:
            code, out = node.run(tool, *argv)
            texts.append(out.rstrip("\n"))
            rc = rc or code
        return SectionOutput(name, rc, "\n".join(texts), 20)

    return {
        "boot_id": SectionOutput("boot_id", 0, "5a0c2f3e-1b7d-4e55-9c1a-0d6b2e7f8a90", 20),
        "nvidia_smi": section("nvidia_smi", ("nvidia_smi", "-q")),
        "nvlink": section("nvlink", ("nvidia_smi", "nvlink", "-s"),
                          ("nvidia_smi", "nvlink", "-e")),
        "fabricmanager": SectionOutput("fabricmanager", 0, "active", 20),
        "dmesg": section("dmesg", ("dmesg",)),
        "dcgm": section("dcgm", ("dcgmi", "diag", "-r", "1", "-j")),
    }


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(FIRMWARE_DIR / "lab.yaml")


def judge(node: Node, manifest) -> dict[str, list]:
    evaluation = evaluate(node.name, read(node), manifest, kernel_cursor=None, sel=None,
                          sel_cursor=None, allowlist=bootlog.load_allowlist(),
                          critical_rules=bootlog.load_critical_rules())
    found: dict[str, list] = {}
    for result in evaluation.results:
        found.setdefault(result.check, []).append(result)
    return found


def critical(found: dict[str, list], check: str) -> list:
    return [r for r in found.get(check, []) if r.status == Status.CRITICAL]


def test_a_healthy_simulated_node_is_ok_where_it_can_be_read(tmp_path, monkeypatch, manifest):
    found = judge(Node(tmp_path, monkeypatch), manifest)
    for check in ("gpu-count", "gpu-versions", "gpu-config", "gpu-memory", "gpu-pcie",
                  "gpu-clocks", "gpu-nvlink", "gpu-fabric", "dcgm-diag", "kernel-xid",
                  "boot-log"):
        assert {r.status for r in found[check]} == {Status.OK}, check
    assert {r.status for r in found["host-time"]} == {Status.UNKNOWN}  # not read here


@pytest.mark.parametrize("fault, check, part, words", [
    ({"kind": "ecc-uncorrectable", "gpu": 2, "count": 4}, "gpu-memory", "GPU 2",
     "4 volatile uncorrectable"),
    ({"kind": "row-remap-pending", "gpu": 1}, "gpu-memory", "GPU 1", "row remap pending"),
    ({"kind": "row-remap-failed", "gpu": 4}, "gpu-memory", "GPU 4", "row remapping failed"),
    ({"kind": "ecc-correctable-storm", "gpu": 6}, "gpu-memory", "GPU 6", "straggler"),
    ({"kind": "ecc-correctable-storm", "gpu": 6}, "gpu-clocks", "GPU 6", "hw slowdown"),
    ({"kind": "thermal-throttle", "gpu": 3}, "gpu-clocks", "GPU 3", "thermal slowdown"),
    ({"kind": "nvlink-inactive", "gpu": 5, "link": 7}, "gpu-nvlink", "GPU 5",
     "NVLink(s) 7 inactive"),
    ({"kind": "nvlink-degraded", "gpu": 0}, "gpu-nvlink", "GPU 0", "replay errors"),
    ({"kind": "pcie-width", "gpu": 7, "width": 8}, "gpu-pcie", "GPU 7", "PCIe x8, not x16"),
    ({"kind": "pcie-gen", "gpu": 2, "gen": 3}, "gpu-pcie", "GPU 2", "PCIe Gen3, not Gen5"),
    ({"kind": "pcie-gen", "hca": 3, "gen": 4}, "boot-log", "HCA", "limited by 16.0 GT/s"),
    ({"kind": "firmware-version", "component": "gpu-vbios", "gpu": 1}, "gpu-versions",
     "GPU 1", "VBIOS 96.00.61.00.01"),
    ({"kind": "gpu-lost", "gpu": 6}, "gpu-count", "GPU 0000:CB:00.0", "fallen off the bus"),
    ({"kind": "xid", "gpu": 4, "code": 48}, "kernel-xid", "GPU 4", "Xid 48"),
    ({"kind": "xid", "gpu": 4, "code": 79}, "kernel-xid", "GPU 4", "Xid 79"),
    ({"kind": "sxid", "nvswitch": 1, "code": 20034, "fatal": True}, "kernel-xid",
     "NVSwitch nvidia-nvswitch1", "SXid 20034"),
    ({"kind": "boot-log-line", "line": "mce: [Hardware Error]: Machine check events logged"},
     "boot-log", None, "machine check"),
])
def test_each_fault_is_found_by_its_check_naming_its_part(tmp_path, monkeypatch, manifest,
                                                          fault, check, part, words):
    found = judge(Node(tmp_path, monkeypatch, faults=[fault]), manifest)
    hits = critical(found, check)
    assert hits, f"{check}: {[r.message for r in found.get(check, [])]}"
    named = [r for r in hits
             if part is None or f"{r.subject.part} {r.subject.name}".startswith(part)]
    assert named, [str(r.subject) for r in hits]
    assert any(words.lower() in r.message.lower() for r in named), [r.message for r in named]


def test_fabric_manager_down_at_boot_leaves_the_gpus_in_progress(tmp_path, monkeypatch,
                                                                 manifest):
    found = judge(Node(tmp_path, monkeypatch, faults=[{"kind": "fabric-manager-down",
                                                       "when": "boot"}]), manifest)
    stuck = critical(found, "gpu-fabric")
    assert len(stuck) == 8 and all("In Progress" in r.message for r in stuck)
