"""The fleet's audit: every node's drift grouped, and the values pinned nowhere compared.

Pure: node audits in (kiln.roles.audit.observe), groups out. One drift on 300 nodes is one
group (the item, what the manifest pins, what the nodes show, and where on which nodes). A
value pinned nowhere that differs across the nodes of one SKU is an inconsistency, with the
split ("510 nodes have X, 2 have Y"). What could not be read is grouped the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kiln.roles.audit.observe import Fix, NodeAudit


@dataclass(frozen=True)
class Drift:
    """One item that shows `found` where the manifest pins `expected`, on these nodes."""

    item: str
    expected: str
    found: str
    fix: Fix
    places: dict[str, tuple[str, ...]]  # node -> where on it ("" for the node itself)

    @property
    def nodes(self) -> list[str]:
        return sorted(self.places)

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "expected": self.expected, "found": self.found,
                "fix": str(self.fix),
                "nodes": {node: list(where) for node, where in sorted(self.places.items())}}


@dataclass(frozen=True)
class Inconsistency:
    """A value pinned nowhere that the nodes of one SKU disagree on."""

    sku: str
    item: str
    fix: Fix
    wheres: tuple[str, ...]
    split: tuple[tuple[str, tuple[str, ...]], ...]  # (value, nodes), most nodes first

    @property
    def minority(self) -> list[str]:
        return sorted(node for _, nodes in self.split[1:] for node in nodes)

    def as_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "item": self.item, "fix": str(self.fix),
                "where": list(self.wheres),
                "split": [{"value": value, "nodes": list(nodes)} for value, nodes in self.split]}


@dataclass
class FleetAudit:
    audits: list[NodeAudit]
    not_read: dict[str, str] = field(default_factory=dict)  # node -> why nothing was read
    drifts: list[Drift] = field(default_factory=list)
    inconsistencies: list[Inconsistency] = field(default_factory=list)
    unread: dict[str, tuple[str, ...]] = field(default_factory=dict)  # what -> nodes
    unsupported: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return sorted({a.node for a in self.audits} | set(self.not_read))

    @property
    def clean(self) -> bool:
        return not (self.drifts or self.inconsistencies or self.unread or self.not_read)

    def nodes_at_fault(self) -> dict[str, list[str]]:
        """node -> what is wrong with it, one short phrase each (for its own failure line)."""
        faults: dict[str, list[str]] = defaultdict(list)
        for drift in self.drifts:
            for node in drift.places:
                faults[node].append(drift.item)
        for inconsistency in self.inconsistencies:
            for node in inconsistency.minority:
                faults[node].append(f"{inconsistency.item} (inconsistent)")
        for what, nodes in self.unread.items():
            for node in nodes:
                faults[node].append(f"unread: {what}")
        for node, why in self.not_read.items():
            faults[node].append(f"not read: {why}")
        return {node: sorted(set(items)) for node, items in faults.items()}


def _drifts(audits: list[NodeAudit]) -> list[Drift]:
    groups: dict[tuple[str, str, str, Fix], dict[str, list[str]]] = defaultdict(
        lambda: defaultdict(list))
    for audit in audits:
        for value in audit.drifts:
            key = (value.item, value.expected or "", value.found, value.fix)
            groups[key][audit.node].append(value.where)
    return [Drift(item, expected, found, fix,
                  {node: tuple(sorted(set(w))) for node, w in sorted(places.items())})
            for (item, expected, found, fix), places in sorted(groups.items())]


def _inconsistencies(audits: list[NodeAudit]) -> list[Inconsistency]:
    by_sku: dict[str, list[NodeAudit]] = defaultdict(list)
    for audit in audits:
        by_sku[audit.sku].append(audit)
    found: list[Inconsistency] = []
    for sku, members in sorted(by_sku.items()):
        seen: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        fixes: dict[str, Fix] = {}
        for audit in members:
            for value in audit.values:
                if value.expected is None:
                    seen[(value.item, value.where)][value.found].add(audit.node)
                    fixes[value.item] = value.fix
        # The same split on several parts (every GPU of two nodes) is one inconsistency.
        merged: dict[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], list[str]] = (
            defaultdict(list))
        for (item, where), values in seen.items():
            if len(values) < 2:
                continue
            split = tuple(sorted(((value, tuple(sorted(nodes))) for value, nodes in
                                  values.items()), key=lambda pair: (-len(pair[1]), pair[0])))
            merged[(item, split)].append(where)
        for (item, split), wheres in sorted(merged.items()):
            found.append(Inconsistency(sku, item, fixes[item], tuple(sorted(wheres)), split))
    return found


def _grouped(lines: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {what: tuple(sorted(set(nodes))) for what, nodes in sorted(lines.items())}


def fleet_audit(audits: list[NodeAudit], not_read: dict[str, str] | None = None,
                ) -> FleetAudit:
    unread: dict[str, list[str]] = defaultdict(list)
    unsupported: dict[str, list[str]] = defaultdict(list)
    for audit in audits:
        for line in audit.unread:
            unread[line].append(audit.node)
        for line in audit.unsupported:
            unsupported[line].append(audit.node)
    return FleetAudit(
        audits=sorted(audits, key=lambda a: a.node),
        not_read=dict(sorted((not_read or {}).items())),
        drifts=_drifts(audits),
        inconsistencies=_inconsistencies(audits),
        unread=_grouped(unread),
        unsupported=_grouped(unsupported),
    )
