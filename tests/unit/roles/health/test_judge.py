"""One node's health read judged as a whole (kiln.roles.health.judge.evaluate): every check
runs; a section that timed out, was cut short or cannot be read makes its own checks
UNKNOWN and nothing else; a CRITICAL is never hidden by them. Inputs: the real H100
`nvidia-smi -q` capture and the real HGX H100 boot log (tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.core.checks import Combined, Status
from kiln.core.manifest import load_manifest
from kiln.core.paths import FIRMWARE_DIR
from kiln.roles.health import bootlog
from kiln.roles.health.judge import SelRead, evaluate
from kiln.roles.health.probe import SectionOutput

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
SMI = (FIXTURES / "nvidia-smi" / "q.h100x8.535.161.08.txt").read_text()
BOOT = (FIXTURES / "dmesg" / "boot.hgx-h100.550.90.07.decode-iso.log").read_text()


def section(name: str, text: str = "", rc: int | None = 0, timeout: int = 20) -> SectionOutput:
    return SectionOutput(name, rc, text, timeout)


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(FIRMWARE_DIR / "hgx-h100-sxm.yaml")


def judged(manifest, **overrides):
    sections = {
        "boot_id": section("boot_id", "3f1c9a52-0d55-4c47-9d43-7a1f0c2b8e11"),
        "nvidia_smi": section("nvidia_smi", SMI),
        "nvlink": section("nvlink", "started", rc=124),  # hung: timed out
        "fabricmanager": section("fabricmanager", "active"),
        "dmesg": section("dmesg", BOOT),
        "hca": section("hca", "### kiln ibstat\nthis is not ibstat"),  # unreadable
        "cpu": section("cpu", "processor\t: 0\nphysical id\t: 0\nmodel name\t: Xeon"),
        "memory": section("memory", "MemTotal:       2113396892 kB\n"),
        "swaps": section("swaps", "Filename\tType\tSize\tUsed\tPriority\n"),
        "nvme": section("nvme", ""),
        "df": section("df", "Filesystem 1-blocks Used Available Capacity Mounted on\n"
                            "/dev/sda1 1000000000000 1000 900000000000 1% /\n"),
        "time": section("time", "Leap status     : Normal\n"),
        "dcgm": section("dcgm", '{"version": "4.2.3", ', rc=None),  # cut short
    }
    sections.update(overrides)
    return evaluate("gpu-017", sections, manifest, kernel_cursor=None,
                    sel=SelRead(None, "BMC 10.0.0.17 (redfish): connection refused"),
                    sel_cursor=None, allowlist=bootlog.load_allowlist(),
                    critical_rules=bootlog.load_critical_rules())


def test_unreadable_sections_are_unknown_alone_and_never_hide_a_critical(manifest):
    evaluation = judged(manifest)
    by_check: dict[str, set[Status]] = {}
    for r in evaluation.results:
        by_check.setdefault(r.check, set()).add(r.status)
    assert by_check["gpu-nvlink"] == {Status.UNKNOWN}
    assert by_check["dcgm-diag"] == {Status.UNKNOWN}
    assert by_check["infiniband-hca"] == {Status.UNKNOWN}
    assert by_check["nvidia-peermem"] == {Status.UNKNOWN}
    assert by_check["bmc-sel"] == {Status.UNKNOWN}
    # The capture's real power brake is CRITICAL on every GPU, beside those UNKNOWNs.
    assert by_check["gpu-clocks"] == {Status.CRITICAL}
    assert by_check["gpu-memory"] == {Status.OK} and by_check["boot-log"] == {Status.OK}
    combined = Combined.of(evaluation.results)
    assert combined.status == Status.CRITICAL
    report = combined.report()
    assert "CRITICAL" in report[0] and any(line.startswith("could not tell: ") for line in report)
    nvlink = next(r for r in evaluation.results if r.check == "gpu-nvlink")
    assert "did not answer within 20 s" in nvlink.problems[0]
    dcgm = next(r for r in evaluation.results if r.check == "dcgm-diag")
    assert "cut short" in dcgm.problems[0]


def test_the_kernel_cursor_moves_only_when_events_were_judged(manifest):
    xid = ("[  512.250001] NVRM: Xid (PCI:0000:19:00): 48, pid='<unknown>', name=<unknown>, "
           "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer "
           "at partition 6, subpartition 0.\n")
    first = judged(manifest, dmesg=section("dmesg", "[    0.000000] Linux version 6.1.0\n" + xid))
    [gpu0] = [r for r in first.results if r.check == "kernel-xid" and r.subject.name == "0"]
    assert gpu0.status == Status.CRITICAL and "Xid 48" in gpu0.problems[0]
    cursor = first.cursors[("gpu-017", "kernel-log")]
    assert cursor == {"boot_id": "3f1c9a52-0d55-4c47-9d43-7a1f0c2b8e11", "position": 512.250001}
    again = evaluate("gpu-017", {"boot_id": section("boot_id", cursor["boot_id"]),
                                 "dmesg": section("dmesg", "[    0.000000] Linux\n" + xid)},
                     manifest, kernel_cursor=cursor, sel=None, sel_cursor=None,
                     allowlist=bootlog.load_allowlist(),
                     critical_rules=bootlog.load_critical_rules())
    assert not again.cursors
    assert all(r.status != Status.CRITICAL for r in again.results if r.check == "kernel-xid")
    # Another boot: the same line is new again.
    rebooted = evaluate("gpu-017", {"boot_id": section("boot_id", "another-boot"),
                                    "dmesg": section("dmesg", "[    0.000000] Linux\n" + xid)},
                        manifest, kernel_cursor=cursor, sel=None, sel_cursor=None,
                        allowlist=bootlog.load_allowlist(),
                        critical_rules=bootlog.load_critical_rules())
    assert any(r.status == Status.CRITICAL for r in rebooted.results if r.check == "kernel-xid")
