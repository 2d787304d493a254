"""The audit in words and in JSON: only what differs, one line per group, and what fixes it.

    DRIFT firmware bios: pinned 1.6.2, found 1.5.0 on gpu-004 (FirmwareInventory/BIOS),
          since 2026-12-07 18:50 UTC
          fix: pyinfra -y inventory/prod.py deploy/firmware.py --limit gpu-004

`since` comes from the ledger (kiln.core.ledger.drift_since): the first audit that saw the
same value there, or "first seen now".
"""

from __future__ import annotations

import time
from typing import Any

from kiln.core.ledger import DriftSeen
from kiln.roles.audit.fleet import Drift, FleetAudit, Inconsistency
from kiln.roles.audit.observe import Fix

# At most this many node names in a line; the JSON report has them all.
SHOWN = 8


def names(nodes: list[str] | tuple[str, ...], shown: int = SHOWN) -> str:
    nodes = sorted(nodes)
    if len(nodes) <= shown:
        return ", ".join(nodes)
    return ", ".join(nodes[:shown]) + f" and {len(nodes) - shown} more"


def _limit(nodes: list[str]) -> str:
    if len(nodes) > 2 * SHOWN:
        return f"--limit NODE for each of the {len(nodes)} nodes (the JSON report lists them)"
    return " ".join(f"--limit {node}" for node in sorted(nodes))


def fix_text(fix: Fix, nodes: list[str], inventory: str, sku: str | None = None) -> str:
    limit = _limit(nodes)
    if fix == Fix.BRINGUP:
        return f"pyinfra -y {inventory} deploy/bringup.py {limit}"
    if fix == Fix.FIRMWARE:
        return f"pyinfra -y {inventory} deploy/firmware.py {limit}"
    if fix == Fix.VENDOR:
        return ("the vendor's firmware bundle: kiln reports this component, it does not "
                "flash it (manifest update: none)")
    if fix == Fix.BIOS:
        return "set the attribute through the node's BMC (no kiln stage sets BIOS attributes)"
    if fix == Fix.HARDWARE:
        return (f"a technician, at the part named; then pyinfra -y {inventory} "
                f"deploy/reprovision.py {limit}")
    manifest = f"firmware/{sku}.yaml" if sku else "the SKU's manifest"
    return f"pin the value in {manifest}, or bring the odd nodes in line with the rest"


def _when(at: float | None) -> str:
    if at is None:
        return "first seen now"
    return "since " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def _places(drift: Drift) -> str:
    wheres = sorted({w for places in drift.places.values() for w in places if w})
    if not wheres:
        return ""
    shown = ", ".join(wheres[:4]) + (f" and {len(wheres) - 4} more" if len(wheres) > 4 else "")
    return f" ({shown})"


def seen_of(fleet: FleetAudit) -> list[DriftSeen]:
    """Every drift and inconsistent value of every node, as the ledger keeps them."""
    seen = [DriftSeen(node, drift.item, where, drift.expected, drift.found)
            for drift in fleet.drifts for node, wheres in drift.places.items()
            for where in wheres]
    for odd in fleet.inconsistencies:
        for value, nodes in odd.split[1:]:
            seen += [DriftSeen(node, odd.item, where, "", value) for node in nodes
                     for where in odd.wheres]
    return seen


def _first_seen(since: dict[DriftSeen, float], keys: list[DriftSeen]) -> float | None:
    known = [since[key] for key in keys if key in since]
    return min(known) if len(known) == len(keys) and known else None


def _drift_lines(drift: Drift, since: dict[DriftSeen, float], inventory: str) -> list[str]:
    keys = [DriftSeen(node, drift.item, where, drift.expected, drift.found)
            for node, wheres in drift.places.items() for where in wheres]
    nodes = drift.nodes
    count = f"{len(nodes)} nodes: " if len(nodes) > 1 else ""
    return [f"DRIFT {drift.item}: pinned {drift.expected}, found {drift.found} on {count}"
            f"{names(nodes)}{_places(drift)}, {_when(_first_seen(since, keys))}",
            f"      fix: {fix_text(drift.fix, nodes, inventory)}"]


def _split(odd: Inconsistency) -> str:
    parts = []
    for i, (value, nodes) in enumerate(odd.split):
        who = "" if i == 0 else f" ({names(nodes)})"
        parts.append(f"{len(nodes)} node{'s' if len(nodes) > 1 else ''} "
                     f"{'have' if len(nodes) > 1 else 'has'} {value}{who}")
    return ", ".join(parts)


def _odd_lines(odd: Inconsistency, since: dict[DriftSeen, float], inventory: str
               ) -> list[str]:
    keys = [DriftSeen(node, odd.item, where, "", value) for value, nodes in odd.split[1:]
            for node in nodes for where in odd.wheres]
    where = [w for w in odd.wheres if w]
    at = (f" on {', '.join(where[:4])}{' and more' if len(where) > 4 else ''}"
          if where else "")
    return [f"INCONSISTENT {odd.item}{at} (sku {odd.sku}, pinned nowhere): {_split(odd)}, "
            f"{_when(_first_seen(since, keys))}",
            f"      fix: {fix_text(Fix.PIN, odd.minority, inventory, odd.sku)}"]


def report_lines(fleet: FleetAudit, since: dict[DriftSeen, float], inventory: str,
                 ) -> list[str]:
    """The audit as a person reads it: a head line, then one group per line (and its fix)."""
    values = sum(len(audit.values) for audit in fleet.audits)
    nodes = fleet.nodes
    if fleet.clean:
        head = (f"audit: clean: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, "
                f"{values} values read, nothing drifts")
    else:
        at_fault = fleet.nodes_at_fault()
        head = (f"audit: {len(at_fault)} of {len(nodes)} nodes differ: "
                f"{len(fleet.drifts)} drift(s), {len(fleet.inconsistencies)} "
                f"inconsistenc{'y' if len(fleet.inconsistencies) == 1 else 'ies'}, "
                f"{len(fleet.unread) + len(fleet.not_read)} unread ({values} values read)")
    lines = [head]
    for drift in fleet.drifts:
        lines += _drift_lines(drift, since, inventory)
    for odd in fleet.inconsistencies:
        lines += _odd_lines(odd, since, inventory)
    for node, why in fleet.not_read.items():
        lines.append(f"NOT READ {node}: {why}")
    for what, on in fleet.unread.items():
        lines.append(f"UNREAD {what} on {names(on)}")
    for what, on in fleet.unsupported.items():
        lines.append(f"NOT OFFERED {what} on {names(on)} (not checked)")
    return lines


def _iso(at: float | None) -> str | None:
    return None if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def report_json(fleet: FleetAudit, since: dict[DriftSeen, float], at: float,
                audit_id: int | None) -> dict[str, Any]:
    """The audit as data; a drift's `since` per node is null when this audit saw it first."""
    drifts = []
    for drift in fleet.drifts:
        entry = drift.as_dict()
        entry["since"] = {
            node: _iso(_first_seen(since, [DriftSeen(node, drift.item, where, drift.expected,
                                                     drift.found) for where in wheres]))
            for node, wheres in drift.places.items()}
        drifts.append(entry)
    return {
        "audit": audit_id,
        "at": _iso(at),
        "clean": fleet.clean,
        "nodes": fleet.nodes,
        "values_read": sum(len(audit.values) for audit in fleet.audits),
        "drifts": drifts,
        "inconsistent": [odd.as_dict() for odd in fleet.inconsistencies],
        "not_read": fleet.not_read,
        "unread": [{"what": what, "nodes": list(nodes)} for what, nodes in fleet.unread.items()],
        "not_offered": [{"what": what, "nodes": list(nodes)}
                        for what, nodes in fleet.unsupported.items()],
        "at_fault": fleet.nodes_at_fault(),
    }
