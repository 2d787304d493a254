"""The tenant partition follows the pool: a pooled node's HCA ports are members of the PKey
group data `kiln_gate_pkey` names (one of kiln_ufm_pkeys, by value or name), a node the
gate keeps out is not.

The gate changes one node's ports at a time, as it pools or quarantines that node: each
node's own GUIDs are added to or removed from the partition, and no other member is
touched, so nodes gated in parallel never undo each other, and a node failing early in the
run cannot stop the others' membership. Which ports are a node's is UFM's answer: the
host ports whose system name is the node's (the node description its HCAs report).
A PKey member kiln never gated (a node outside the inventory) stays.
"""

from __future__ import annotations

from typing import Any

from gevent.lock import BoundedSemaphore

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.fabric import PKeyDeclaration, normalise_guid
from kiln.roles.ufm.client import UFMClient
from kiln.roles.ufm.operations import PKeyPlan, apply_pkey, plan_pkey
from kiln.roles.ufm.settings import client_for, pkey_declaration
from kiln.roles.ufm.view import fabric_view

GATE_PKEY = "kiln_gate_pkey"
# One change to a partition at a time from this controller: the first node's creates it.
_PARTITION_LOCK = BoundedSemaphore(1)


def gate_pkey(target: Any) -> PKeyDeclaration | None:
    """The PKey the gate keeps equal to the pool (group data kiln_gate_pkey); None: none."""
    ctx = node_context(target)
    value = ctx.get(GATE_PKEY)
    if value in (None, ""):
        return None
    return pkey_declaration(ctx, str(value))


def node_port_guids(target: Any, node: str) -> list[str]:
    """The node's HCA port GUIDs, as UFM knows them (host ports of the node's system), from
    the run's shared view of UFM (one read of the ports for every node of an operation)."""
    return sorted(normalise_guid(guid) for guid, port in fabric_view(target).host_ports().items()
                  if port.system_name == node)


def node_plan(client: UFMClient, declared: PKeyDeclaration, node: str, guids: list[str],
              member: bool) -> PKeyPlan:
    """What makes `node`'s ports (`guids`) members of the partition (member) or not,
    leaving every other member as it is."""
    if member and not guids:
        raise KilnError(f"PKey {declared.pkey}: UFM knows no HCA port of {node} (no host "
                        "port with that system name): its ports cannot join the partition")
    current = client.partition(declared.pkey)
    if current is None and not member:
        return PKeyPlan(declared)  # nothing to leave
    have = current.members() if current is not None else {}
    wanted = {g: m for g, m in have.items() if g not in guids}
    if member:
        wanted.update(declared.resolve({node: guids}))
    return plan_pkey(declared, current, wanted)


def set_membership(target: Any, declared: PKeyDeclaration, node: str, member: bool) -> str:
    """Make it so (read, plan and change under one lock); what changed, "" when nothing."""
    guids = node_port_guids(target, node)
    client = client_for(target)
    try:
        with _PARTITION_LOCK:
            plan = node_plan(client, declared, node, guids, member)
            if plan.empty:
                return ""
            apply_pkey(client, plan)
            return plan.describe()
    finally:
        client.close()


def membership_is(target: Any, declared: PKeyDeclaration, node: str, member: bool) -> bool:
    """Whether `node`'s ports already are (member) or are not in the partition: a read."""
    guids = node_port_guids(target, node)
    client = client_for(target)
    try:
        return node_plan(client, declared, node, guids, member).empty
    finally:
        client.close()
