"""pyinfra operations of the ufm role, run on the controller.

    fabric_healthy(hca_ports=[("mlx5_0", "0x946d..."), ...], since=... | after=check)
        the node's rails as UFM sees them (kiln.roles.ufm.checks): nothing when they are
        OK and the ledger says so already; else records what differs in the ledger and
        fails the node, naming HCA, switch and port, when a rail is not OK.
    pkey_members(pkey="0x0a12", ports={"gpu-001": [guid, ...], ...})
        UFM's partition holds exactly these ports, with the declared memberships.

Reads happen in the operation body, writes only in the yielded FunctionCommand, so `--dry`
and the change preview write nothing (not UFM, not the ledger).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import FunctionCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

from kiln.core.checkrun import check_commands, ran_at
from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.fabric import PKeyDeclaration, normalise_guid
from kiln.core.ledger import last_passed
from kiln.core.outcomes import fail, fail_host, preview
from kiln.roles.ufm.checks import CHECK_NAME, Expected, check_node
from kiln.roles.ufm.client import UFMClient
from kiln.roles.ufm.resources import Partition
from kiln.roles.ufm.settings import client_for, pkey_declaration
from kiln.roles.ufm.view import fabric_view

logger = logging.getLogger("pyinfra")


# -- the node's rails, from UFM -------------------------------------------------------------


def events_since(ledger: str, node: str, not_before: float | None) -> float | None:
    """Where the event search starts: the later of the node's last pass of this check in
    the ledger and `not_before` (when this run's own resets were over); None when neither
    is known (no event search)."""
    known = [t for t in (last_passed(ledger, node, CHECK_NAME), not_before) if t is not None]
    return max(known) if known else None


Ports = Iterable[tuple[str, str]] | Callable[[], Iterable[tuple[str, str]] | None]


@operation()
def fabric_healthy(hca_ports: Ports,  # noqa: ANN201 - pyinfra generator
                   since: float | None = None, after: str | None = None,
                   stage_start: float | None = None):
    """Every (HCA name, port GUID) of this node is known to UFM, its switch port up at the
    manifest's rate, not unhealthy, with no link-down/symbol-error/BER event since `since`.

    `hca_ports`: the pairs, or a function giving them when the operation runs (the node's
    HCAs read then; None: the node cannot be read yet, the preview says what will be
    checked). Without `since` the window starts at the later of the node's last pass in
    the ledger and the moment check `after` ran on this host in this run (else
    `stage_start`); with none of them, events are not searched.

    Yields nothing when every rail is OK and the ledger already says so; records what
    differs; fails the node naming HCA, switch and port otherwise."""
    try:
        ctx = node_context(host)
        ports = hca_ports() if callable(hca_ports) else hca_ports
        if ports is None:
            yield preview("the rails' check in UFM")
            return
        expected = Expected(ctx.manifest.topology.hca.port_rate_gbps)
        ledger = str(ctx.ledger_path)
        if since is None:
            marked = ran_at(host, after) if after else None
            since = events_since(ledger, ctx.label,
                                 marked if marked is not None else stage_start)
        view = fabric_view(host)
        report = check_node(view, ctx.label, list(ports), expected, since)
    except KilnError as exc:
        yield fail(str(exc))
        return
    commands = check_commands(report.combined, ledger, ctx.label, CHECK_NAME, title="UFM")
    if not commands:
        host.noop(f"UFM: {report.summary()}")
    yield from commands


# -- partition keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class PKeyPlan:
    """What makes UFM's partition hold exactly the wanted ports."""

    declared: PKeyDeclaration
    create: bool = False
    add: dict[str, str] = field(default_factory=dict)  # guid -> membership (new or changed)
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.add or self.remove)

    def describe(self) -> str:
        parts = []
        if self.create:
            parts.append(f"create {self.declared.pkey} ({self.declared.name})")
        if self.add:
            counts = {m: sum(1 for v in self.add.values() if v == m) for m in ("full", "limited")}
            parts.append("add/set " + ", ".join(f"{n} {m}" for m, n in counts.items() if n))
        if self.remove:
            parts.append(f"remove {len(self.remove)}")
        return f"PKey {self.declared.pkey}: " + "; ".join(parts)


def plan_pkey(declared: PKeyDeclaration, current: Partition | None,
              wanted: Mapping[str, str]) -> PKeyPlan:
    have = current.members() if current is not None else {}
    wanted = {normalise_guid(g): m for g, m in wanted.items()}
    add = {g: m for g, m in wanted.items() if have.get(g) != m}
    remove = tuple(sorted(g for g in have if g not in wanted))
    return PKeyPlan(declared, create=current is None, add=add, remove=remove)


def apply_pkey(client: UFMClient, plan: PKeyPlan) -> None:
    d = plan.declared
    if plan.create:
        client.create_partition(d.pkey, d.name, index0=d.index0, ip_over_ib=d.ip_over_ib)
    if plan.remove:
        client.remove_guids(d.pkey, plan.remove)
    if plan.add:
        client.add_guids(d.pkey, plan.add, index0=d.index0, ip_over_ib=d.ip_over_ib)


def _apply(state: State, host: Host, plan: PKeyPlan) -> bool:
    try:
        client = client_for(host)
        try:
            apply_pkey(client, plan)
        finally:
            client.close()
    except KilnError as exc:
        return fail_host(host, str(exc))
    host.log(f"UFM: {plan.describe()}", log_func=logger.info)
    return True


@operation()
def pkey_members(pkey: str,  # noqa: ANN201 - pyinfra operation generator
                 ports: Mapping[str, Iterable[str]] | None = None,
                 members: Mapping[str, str] | None = None):
    """The declared PKey (kiln_ufm_pkeys, by value or name) holds exactly `ports` (node ->
    its HCA port GUIDs; each node's membership as declared) or `members` (GUID ->
    membership), adding and removing only what differs. Run it on one host: the PKey is
    the cluster's."""
    try:
        ctx = node_context(host)
        declared = pkey_declaration(ctx, pkey)
        wanted = dict(members or {})
        wanted.update(declared.resolve({n: list(g) for n, g in (ports or {}).items()}))
        client = client_for(host)
        try:
            current = client.partition(declared.pkey)
        finally:
            client.close()
        plan = plan_pkey(declared, current, wanted)
    except (KilnError, ValueError) as exc:
        yield fail(str(exc))
        return
    if plan.empty:
        host.noop(f"PKey {declared.pkey} holds exactly the {len(wanted)} port(s) asked for")
        return
    yield FunctionCommand(_apply, (plan,), {})
