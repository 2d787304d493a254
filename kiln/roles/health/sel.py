"""The BMC's system event log, since the last check: the hardware events the OS never sees
(AC power lost, a machine check that reset the node, uncorrectable memory, a fatal PCIe
error, a corrupted BIOS image).

kiln reads the SEL through Redfish or IPMI (kiln.roles.bmc: `event_log`), both as
{id, created, severity, message}; IPMI's message is "sensor: event (direction)". A cursor in
the ledger (the last entry judged: its id and time) makes each entry judged once: a SEL
that still holds last month's AC loss does not fail the node today.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject

BMC_SEL = "bmc-sel"
CURSOR = "bmc-sel"


@dataclass(frozen=True)
class SelRule:
    name: str
    pattern: re.Pattern[str]
    status: Status
    remediation: Remediation
    why: str


def _rule(name: str, pattern: str, status: Status, action: Action, words: str,
          why: str) -> SelRule:
    return SelRule(name, re.compile(pattern, re.I), status, Remediation(action, words), why)


# First match wins. Patterns cover IPMI's sensor-type/event wording (IPMI 2.0 table 42-3, as
# ipmitool prints it) and the words Redfish BMCs put in LogEntry.Message.
RULES = (
    _rule("machine-check", r"machine check|\bIERR\b|\bMCERR\b|CATERR|processor.*(error|fault)",
          Status.CRITICAL, Action.RMA, "the CPU or its memory raised a machine check: read "
          "the BMC's crash dump, replace the part it names (CPU, DIMM, board)",
          "a machine check resets or hangs the node; recurring ones are hardware"),
    _rule("memory-uncorrectable", r"uncorrectable (ECC|memory|error)|\bUE\b.*memory|"
          r"memory.*uncorrect", Status.CRITICAL, Action.RMA, "replace the DIMM the BMC's "
          "event names (slot in the entry); run the memory test after",
          "uncorrectable host memory corrupts data silently; the DIMM must go"),
    _rule("pcie-fatal", r"PCI(e)? ?(SERR|PERR)|PCIe? (fatal|uncorrectable)|fatal.*PCIe?|"
          r"critical interrupt.*(bus|pci)", Status.CRITICAL, Action.RESEAT, "reseat the card "
          "in the slot the event names (GPU tray, HCA, NVMe); RMA it if the error returns",
          "a fatal PCIe error drops a device off the bus (a GPU, an HCA)"),
    _rule("bios-corruption", r"(BIOS|firmware|flash).*(corrupt|checksum|recover|invalid "
          r"image)|corrupt.*(BIOS|firmware)", Status.CRITICAL, Action.REFLASH, "reflash the "
          "BIOS with the manifest's version (deploy/firmware.py); RMA the board if it fails "
          "again", "a node running from a recovery or corrupt BIOS image is not the node "
          "kiln qualified"),
    _rule("ac-lost", r"AC (lost|power lost|failure)|power (supply|unit).*(lost|failure)|"
          r"input lost", Status.WARN, Action.CHECK_CABLE, "check the node's power feeds "
          "(PDU, PSU cords); replace a failing PSU", "an AC loss reboots a node without "
          "warning; the node itself may be fine, so it is reported, not failed"),
)


def judge_sel(node: str, entries: list[dict[str, Any]],
              cursor: dict[str, Any] | None) -> tuple[CheckResult, dict[str, Any] | None, bool]:
    """(the result, the cursor for the next run, whether it moved) for the SEL entries
    after `cursor` ({id, created} of the last entry judged)."""
    start = 0
    if cursor:
        for i, entry in enumerate(entries):
            if entry.get("id") == cursor.get("id") and entry.get("created") == cursor.get(
                    "created"):
                start = i + 1
        # The SEL was cleared (or wrapped) since: the entry is gone, judge those after its time
        if start == 0 and cursor.get("created"):
            start = next((i for i, e in enumerate(entries)
                          if (e.get("created") or "") > cursor["created"]), len(entries))
    new = entries[start:]
    next_cursor = ({"id": entries[-1].get("id"), "created": entries[-1].get("created")}
                   if entries else cursor)
    subject = Subject(node, "BMC", "SEL")
    hits = []
    for entry in new:
        message = entry.get("message") or ""
        for rule in RULES:
            if rule.pattern.search(message):
                hits.append((rule, entry))
                break
    evidence = {"new_entries": len(new), "judged": [
        {"id": e.get("id"), "created": e.get("created"), "severity": e.get("severity"),
         "message": e.get("message"), "rule": r.name} for r, e in hits]}
    if not hits:
        return CheckResult(BMC_SEL, subject, Status.OK, (), evidence), next_cursor, bool(new)
    status = Status.CRITICAL if any(r.status == Status.CRITICAL for r, _ in hits) \
        else Status.WARN
    first = next(r for r, _ in hits if r.status == status)
    problems = tuple(f"SEL {e.get('id')} at {e.get('created') or '?'}: {r.name}: "
                     f"{e.get('message')}" for r, e in hits)
    return (CheckResult(BMC_SEL, subject, status, problems, evidence, first.remediation),
            next_cursor, bool(new))
