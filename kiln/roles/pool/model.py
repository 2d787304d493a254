"""What every pool backend shares: a node's membership, kiln's reason rule, the interface."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from kiln.core.errors import KilnError

REASON_PREFIX = "kiln: "


class Membership(StrEnum):
    POOLED = "pooled"
    DRAINED = "drained by kiln"
    HELD = "held out by another"  # drained with a reason that is not kiln's
    UNKNOWN = "not known to the pool"


@dataclass(frozen=True)
class PoolEntry:
    node: str
    membership: Membership
    reason: str = ""
    # The backend's own words for the node's state (Slurm's "IDLE+DRAIN"), for reports.
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.node}: {self.membership}"
        if self.detail:
            text += f" ({self.detail})"
        return text + (f": {self.reason}" if self.reason else "")


def kiln_reason(reason: str, node: str = "") -> str:
    """`reason` marked as kiln's (REASON_PREFIX first); an empty reason is an error: a
    technician must be told why a node is out."""
    text = " ".join(reason.split())
    if not text or text == REASON_PREFIX.strip():
        raise KilnError(f"node {node or '?'}: draining needs a reason a human can act on")
    return text if text.startswith(REASON_PREFIX) else REASON_PREFIX + text


def is_kilns(reason: str) -> bool:
    return reason.startswith(REASON_PREFIX)


def membership_of(drained: bool, reason: str) -> Membership:
    """A known node's membership from whether it is drained and why."""
    if not drained:
        return Membership.POOLED
    return Membership.DRAINED if is_kilns(reason) else Membership.HELD


class HeldByAnother(KilnError):
    """kiln was asked to pool a node someone else drained: it never does."""


class Pool(Protocol):
    # What the pool is, for messages: "file pool state/pool.yaml", "slurm on svc-001".
    where: str

    def entry(self, node: str) -> PoolEntry: ...

    def add(self, node: str) -> bool: ...

    def drain(self, node: str, reason: str) -> bool: ...
