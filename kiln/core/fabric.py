"""The fabric's declared state in group data: who manages the subnet, and the tenant PKeys.

    kiln_fabric_manager = "ufm"          # or "opensm": no UFM, opensm on a service node
    kiln_ufm_pkeys = [
        {"pkey": "0x0a12", "name": "tenant_acme", "membership": "full",
         "members": {"svc-001": "limited"}, "ip_over_ib": True},
    ]

One declaration serves both fabric managers: kiln.roles.ufm makes UFM's partition hold it,
and renders opensm's partitions.conf from it. A PKey names no GUIDs: which ports belong is
the caller's (the gate's pooled nodes, their HCA port GUIDs from the infiniband facts);
the declaration says with which membership, by default (`membership`) and per node
(`members`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from kiln.core.models import Strict

Membership = Literal["full", "limited"]
FabricManager = Literal["ufm", "opensm"]
MANAGEMENT_PKEY = 0x7FFF
# opensm's partition names are tokens of its partitions.conf: no delimiters, no blanks.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PKEY = re.compile(r"^0x[0-9a-fA-F]{1,4}$")


def normalise_guid(guid: str) -> str:
    """A port GUID as UFM writes it: 16 lower-case hex digits, no 0x, no separators."""
    text = guid.strip().lower().removeprefix("0x").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{1,16}", text):
        raise ValueError(f"{guid!r} is not a port GUID (up to 16 hex digits)")
    return text.rjust(16, "0")


class PKeyDeclaration(Strict):
    """One tenant partition."""

    pkey: str  # "0x0a12": 15 bits, 0x1 .. 0x7ffe (0x7fff is the management partition)
    name: str
    membership: Membership = "full"  # every member's, unless `members` says otherwise
    members: dict[str, Membership] = Field(default_factory=dict)  # node name -> membership
    ip_over_ib: bool = True
    index0: bool = False

    @field_validator("pkey")
    @classmethod
    def _pkey(cls, value: str) -> str:
        if not _PKEY.fullmatch(value):
            raise ValueError(f"{value!r} is not a PKey like '0x0a12'")
        number = int(value, 16)
        if not 0 < number < MANAGEMENT_PKEY:
            raise ValueError(f"{value} is outside 0x1 .. 0x7ffe (0x7fff is the management "
                             "partition, which kiln does not change)")
        return f"0x{number:04x}"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: use letters, digits, '_', '.', '-' (at most 64)")
        return value

    @property
    def value(self) -> int:
        return int(self.pkey, 16)

    def membership_of(self, node: str) -> Membership:
        return self.members.get(node, self.membership)

    def resolve(self, ports: dict[str, list[str]]) -> dict[str, Membership]:
        """Port GUID -> membership, for the given node -> port GUIDs."""
        return {normalise_guid(guid): self.membership_of(node)
                for node, guids in ports.items() for guid in guids}


def unique_pkeys(declarations: list[PKeyDeclaration]) -> list[str]:
    """Problems: a PKey or a name declared twice."""
    problems = []
    seen: dict[int, str] = {}
    for d in declarations:
        if d.value in seen:
            problems.append(f"PKey {d.pkey} is declared twice ({seen[d.value]}, {d.name})")
        seen[d.value] = d.name
    return problems
