"""One typed check result for every role that checks a node (fabric, health, burn-in).

    Status       OK, WARN, CRITICAL, UNKNOWN ("could not tell": a value not read, an API
                 that did not answer); worst-of orders them CRITICAL > UNKNOWN > WARN > OK
    Subject      what was checked: the node, the part (HCA mlx5_3, GPU 2, ...) with its
                 identifiers, and the far end of its link where there is one (switch name,
                 GUID, port): where a technician goes
    Remediation  what a technician does about it: an Action (reseat, RMA, reflash, reboot,
                 check the cable or the switch port, ...) and the words saying where
    CheckResult  check name, subject, status, what is wrong, the evidence (the values read)
                 and the remediation
    Combined     several results as one: the worst status, every CRITICAL named, and the
                 UNKNOWNs reported beside them, never instead of them

The ledger (kiln.core.ledger) records CheckResults; the gate reads them there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"

    @property
    def rank(self) -> int:
        """Worst-of order. UNKNOWN ranks above WARN (a value not read may hide anything)
        and below CRITICAL: what is known to be broken is never hidden by what could not
        be told."""
        return _RANK[self]

    @property
    def passes(self) -> bool:
        """Whether a node with this result may go on (a WARN is reported, not failed)."""
        return self in (Status.OK, Status.WARN)


_RANK = {Status.OK: 0, Status.WARN: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status | str]) -> Status:
    """The worst of `statuses` (CRITICAL > UNKNOWN > WARN > OK); OK for none."""
    return max((Status(s) for s in statuses), key=lambda s: s.rank, default=Status.OK)


class Action(StrEnum):
    """What a technician (or kiln's next run) does about a result that is not OK."""

    RESEAT = "reseat"                      # the card, the transceiver, the cable's ends
    RMA = "rma"                            # replace the part
    REFLASH = "reflash"                    # firmware
    REBOOT = "reboot"                      # or power cycle through the BMC
    CHECK_CABLE = "check-cable"            # reseat or replace the cable
    CHECK_SWITCH_PORT = "check-switch-port"
    RECONFIGURE = "reconfigure"            # a setting is wrong: fix it, run the stage again
    RETRY = "retry"                        # could not tell: make it readable, run again


@dataclass(frozen=True)
class Remediation:
    action: Action
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action}: {self.detail}" if self.detail else str(self.action)


@dataclass(frozen=True)
class Peer:
    """The far end of a part's link: a switch port, a GPU's NVSwitch port."""

    kind: str = "switch"
    name: str | None = None
    guid: str | None = None
    port: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.name or '?'} (GUID {self.guid or '?'}) port {self.port or '?'}"


@dataclass(frozen=True)
class Subject:
    """What a result is about: `node`, and the `part` of it ("HCA", "GPU", "PSU"; None for
    the node as a whole) named `name`, with identifiers (port GUID, serial) and its peer."""

    node: str
    part: str | None = None
    name: str | None = None
    ids: tuple[tuple[str, str], ...] = ()
    peer: Peer | None = None

    @property
    def key(self) -> str:
        """Stable within a node: what the ledger compares one run's result with."""
        return f"{self.part} {self.name}" if self.part else "node"

    def __str__(self) -> str:
        text = f"node {self.node}"
        if self.part:
            text += f": {self.part}" + (f" {self.name}" if self.name else "")
            if self.ids:
                text += " (" + ", ".join(f"{k} {v}" for k, v in self.ids) + ")"
        if self.peer is not None:
            text += f": {self.peer}"
        return text


@dataclass(frozen=True)
class CheckResult:
    check: str
    subject: Subject
    status: Status
    problems: tuple[str, ...] = ()  # what is wrong (or could not be told), in words
    evidence: Mapping[str, Any] = field(default_factory=dict)  # the values read
    remediation: Remediation | None = None

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def passes(self) -> bool:
        return self.status.passes

    @property
    def message(self) -> str:
        """One line a person acts on: where, what, what to do."""
        if self.ok:
            return f"{self.subject}: OK"
        text = f"{self.subject}: {self.status}: {'; '.join(self.problems) or self.status}"
        return text + (f" -> {self.remediation}" if self.remediation else "")

    def evidence_json(self) -> str:
        return json.dumps(dict(self.evidence), sort_keys=True, default=str)


@dataclass(frozen=True)
class Combined:
    """Several results (one check's per-part results, or several checks of a node) as one."""

    results: tuple[CheckResult, ...]

    @classmethod
    def of(cls, results: Iterable[CheckResult]) -> Combined:
        return cls(tuple(results))

    @property
    def status(self) -> Status:
        return worst(r.status for r in self.results)

    @property
    def passes(self) -> bool:
        return self.status.passes

    def having(self, status: Status) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == status)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """Every result that does not pass: CRITICALs first, then UNKNOWNs."""
        return self.having(Status.CRITICAL) + self.having(Status.UNKNOWN)

    def report(self) -> list[str]:
        """The lines to show: every CRITICAL, then the UNKNOWNs beside them ("could not
        tell"), then the WARNs."""
        lines = [r.message for r in self.having(Status.CRITICAL)]
        lines += [("could not tell: " if lines else "") + r.message
                  for r in self.having(Status.UNKNOWN)]
        lines += [r.message for r in self.having(Status.WARN)]
        return lines
