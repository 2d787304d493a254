"""The kernel log's Xid (GPU) and SXid (NVSwitch) events, judged once each.

An event is judged by the table in data (kiln.roles.health.xid: which Xids mean hardware,
a reset, or the application). A cursor per node, kept in the ledger, says up to where the
log was judged: (boot id, time of the last event judged). The next run judges only events
after it, so an Xid already reported does not drain the node again on every run, nor after
the ring buffer wraps or the log is rotated (the cursor is a time in the boot, not a line
number or a byte offset). A new boot (another boot id) starts afresh.

The boot-log check (kiln.roles.health.bootlog) judges the other lines of the current boot,
every run; Xid and SXid lines are this check's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject, worst
from kiln.roles.health.parsers import parse_kernel_log
from kiln.roles.health.xid import classify_sxid, classify_xid

KERNEL_XID = "kernel-xid"
CURSOR = "kernel-log"


@dataclass(frozen=True)
class LogCursor:
    boot_id: str
    position: float  # when the last judged event happened (seconds in the boot, or epoch)

    def as_json(self) -> dict[str, Any]:
        return {"boot_id": self.boot_id, "position": self.position}

    @classmethod
    def from_json(cls, value: Any) -> LogCursor | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(str(value["boot_id"]), float(value["position"]))
        except (KeyError, TypeError, ValueError):
            return None


def position(stamp: str) -> float:
    """A comparable time for a kernel log timestamp as parse_kernel_log keeps it: seconds
    since boot for dmesg's default and /dev/kmsg, epoch seconds for the wall-clock forms."""
    try:
        return float(stamp)
    except ValueError:
        pass
    iso = re.sub(r",", ".", stamp)
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%a %b %d %H:%M:%S %Y"):
        try:
            return datetime.strptime(iso if "T" in fmt else stamp, fmt).timestamp()
        except ValueError:
            continue
    try:  # journalctl -k: no year; the order within a year is what the cursor needs
        return datetime.strptime(stamp, "%b %d %H:%M:%S").replace(
            year=datetime.now().year).timestamp()
    except ValueError:
        return 0.0


def _bus(pci: str) -> str:
    """"00000000:9B:00.0" / "0000:9b:00" -> "9b:00" (what Xid lines and nvidia-smi share)."""
    parts = pci.lower().split(":")
    return ":".join(parts[-2:]).split(".")[0] if len(parts) >= 2 else pci.lower()


@dataclass(frozen=True)
class XidJudgement:
    results: list[CheckResult]
    cursor: LogCursor | None  # where the next run starts; None: no event at all yet
    moved: bool  # the cursor moved (new events were judged): record it


def judge_kernel_log(node: str, text: str, boot_id: str, cursor: LogCursor | None,
                     gpus: list[tuple[str, Subject]]) -> XidJudgement:
    """The Xid/SXid events after `cursor`: one result per GPU (`gpus`: (PCI address,
    subject) of each GPU nvidia-smi lists; OK when it had no new event), one per NVSwitch
    that logged one, and the node's own for Xids on a GPU nvidia-smi does not list."""
    log = parse_kernel_log(text)
    fresh = cursor is None or cursor.boot_id != boot_id
    since = None if fresh else cursor.position
    events = [("xid", e) for e in log["xids"]] + [("sxid", e) for e in log["sxids"]]
    new = [(kind, e) for kind, e in events if since is None or position(e["timestamp"]) > since]
    last = max((position(e["timestamp"]) for _, e in events), default=None)
    next_cursor = LogCursor(boot_id, last) if last is not None else cursor
    by_bus = {_bus(pci): subject for pci, subject in gpus}
    grouped: dict[tuple[str, str | None, str | None], list[tuple[Any, dict[str, Any]]]] = {}
    for kind, event in new:
        if kind == "xid":
            verdict = classify_xid(event["xid"], event["message"])
            subject = by_bus.get(_bus(event["pci"]))
            key = ("GPU", subject.name, None) if subject else ("GPU?", event["pci"], None)
        else:
            fatal = None if event.get("severity") is None else event["severity"] == "Fatal"
            verdict = classify_sxid(event["sxid"], fatal, event["message"])
            key = ("NVSwitch", event["device"], event["pci"])
        grouped.setdefault(key, []).append((verdict, event))
    results = []
    for _pci, subject in gpus:
        hits = grouped.pop(("GPU", subject.name, None), [])
        results.append(_judged(subject, hits, since))
    for (part, name, pci), hits in sorted(grouped.items(), key=lambda item: str(item[0])):
        if part == "GPU?":
            subject = Subject(node, "GPU", name, (("PCI", name),))
        else:
            subject = Subject(node, part, name, (("PCI", pci),) if pci else ())
        results.append(_judged(subject, hits, since))
    if not gpus and not results:
        results.append(CheckResult(KERNEL_XID, Subject(node), Status.OK,
                                   (), {"new_events": 0, "since": since}))
    return XidJudgement(results, next_cursor, bool(new))


def _when(stamp: str) -> str:
    """dmesg's seconds since boot read as such ("120.000000" -> "120.0 s after boot")."""
    try:
        return f"{float(stamp):.1f} s after boot"
    except ValueError:
        return stamp


def _judged(subject: Subject, hits: list[tuple[Any, dict[str, Any]]],
            since: float | None) -> CheckResult:
    if not hits:
        return CheckResult(KERNEL_XID, subject, Status.OK, (), {"new_events": 0, "since": since})
    status = worst(verdict.status for verdict, _ in hits)
    problems, evidence = [], []
    for verdict, event in hits:
        code = event.get("xid", event.get("sxid"))
        what = "Xid" if "xid" in event else "SXid"
        problems.append(f"{what} {code} at {_when(event['timestamp'])} ({verdict.cls}): "
                        f"{event['message'][:160]}")
        evidence.append({"code": code, "kind": what, "class": verdict.cls,
                         "timestamp": event["timestamp"], "message": event["message"],
                         "pid": event.get("pid"), "process": event.get("process"),
                         "status": str(verdict.status)})
    first = next(v for v, _ in hits if v.status == status)
    remediation = first.remediation if status != Status.OK else None
    if status == Status.OK:
        return CheckResult(KERNEL_XID, subject, Status.OK, (), {"events": evidence,
                                                                 "since": since})
    return CheckResult(KERNEL_XID, subject, status, tuple(problems),
                       {"events": evidence, "since": since},
                       remediation or Remediation(Action.RETRY, "read the kernel log"))
