"""The BMC event-log check: each entry judged once (a cursor: the last entry's id and time),
classified by what the entry says, in IPMI's words (as kiln's ipmitool reader gives them)
and in the words Redfish BMCs use."""

from __future__ import annotations

import pytest

from kiln.core.checks import Action, Status
from kiln.roles.health.sel import judge_sel


def entry(id_: str, message: str, created: str = "2026-12-07T06:00:00+00:00") -> dict:
    return {"id": id_, "created": created, "severity": "Critical", "message": message}


@pytest.mark.parametrize("message, status, rule", [
    ("Processor #0x01: IERR (Asserted)", Status.CRITICAL, "machine-check"),
    ("Processor CPU0 uncorrectable machine check exception.", Status.CRITICAL, "machine-check"),
    ("Memory #0x02: Uncorrectable ECC (Asserted); DIMM A1", Status.CRITICAL,
     "memory-uncorrectable"),
    ("Critical Interrupt #0x03: PCI SERR (Asserted)", Status.CRITICAL, "pcie-fatal"),
    ("Critical Interrupt #0x03: Bus Fatal Error (Asserted)", Status.CRITICAL, "pcie-fatal"),
    ("System Firmware Progress: BIOS corruption detected", Status.CRITICAL, "bios-corruption"),
    ("Power Unit #0x01: AC lost (Asserted)", Status.WARN, "ac-lost"),
])
def test_each_kind_of_entry(message, status, rule):
    result, _, moved = judge_sel("gpu-007", [entry("1", message)], None)
    assert moved and result.status == status
    assert result.evidence["judged"][0]["rule"] == rule
    assert result.subject.key == "BMC SEL"


def test_benign_entries_pass_and_each_entry_is_judged_once():
    log = [entry("1", "System Event #0x01: Timestamp Clock Sync (Asserted)"),
           entry("2", "Processor #0x01: IERR (Asserted)", "2026-12-07T06:05:00+00:00")]
    result, cursor, moved = judge_sel("gpu-007", log[:1], None)
    assert result.status == Status.OK and moved
    result, cursor, moved = judge_sel("gpu-007", log, cursor)
    assert result.status == Status.CRITICAL and result.remediation.action == Action.RMA
    assert result.evidence["new_entries"] == 1
    result, cursor2, moved = judge_sel("gpu-007", log, cursor)
    assert result.status == Status.OK and not moved and cursor2 == cursor


def test_a_cleared_log_judges_only_what_came_after_the_cursor():
    cursor = {"id": "9", "created": "2026-12-07T06:05:00+00:00"}
    log = [entry("1", "Processor #0x01: IERR (Asserted)", "2026-12-07T06:01:00+00:00"),
           entry("2", "Memory #0x02: Uncorrectable ECC (Asserted)", "2026-12-07T06:09:00+00:00")]
    result, _, _ = judge_sel("gpu-007", log, cursor)
    assert [j["id"] for j in result.evidence["judged"]] == ["2"]
