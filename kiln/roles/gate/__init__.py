"""Gate: pool the nodes that passed, quarantine the rest.

    gate()   the last stage of bring-up and reprovisioning, on every GPU node

pyinfra drops a node from the run at its first failure, so a node that reaches the gate
has passed every stage of this run: provisioning, the pinned stack, firmware, the fabric,
health (WARN passes and was reported) and burn-in. The gate walks it through the ledger's
lifecycle (deployed -> configured -> burning-in -> pooled, each move explicit and recorded
with this run) and adds it to the pool. A node already pooled, and a member of the pool,
is left alone: a second run changes nothing.

A node that failed a stage never reaches the gate. The deploy calls `gate_failures()` while
it is planned, which registers a pyinfra callback (`operation_host_error`, called only while
a run executes, never in a preview). For each node that fails, the callback moves the node
to quarantined in the ledger and drains it from the pool. The reason names the stage that
failed and what was printed in red for the node during that operation: kiln's message, or
the failed command's output.

The pool is the backend group data `kiln_pool` names (kiln.roles.pool: the file pool,
Slurm or Kubernetes). The gate changes only what kiln set there: a node someone else
drained passes the gate (the ledger says pooled: kiln found nothing wrong) but stays out of
the pool, and the run says whose reason keeps it out. Where group data names a tenant PKey
(`kiln_gate_pkey`, kiln.roles.gate.pkey), a pooled node's HCA ports join it and a node kept
out leaves it.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.api.state import BaseStateCallback, State

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.ledger import TRANSITIONS, Ledger, NodeState, recorded_state
from kiln.core.outcomes import fail, fail_host
from kiln.core.runlock import callback_once
from kiln.roles.gate.pkey import gate_pkey, membership_is, set_membership
from kiln.roles.pool import REASON_PREFIX, HeldByAnother, Membership, Pool, pool_for

logger = logging.getLogger("pyinfra")
S = NodeState
MAX_LINES = 8  # of a failure's output, in a reason: apt's last lines say what broke
# The states the gate moves a node through towards the pool: forward only.
_FORWARD = frozenset({S.ENROLLED, S.DEPLOYED, S.CONFIGURED, S.BURNING_IN, S.POOLED})
_WHY = {
    S.DEPLOYED: "found deployed, with an OS, by the gate",
    S.CONFIGURED: "passed every stage before burn-in in this run (stack, firmware, fabric, "
                  "health)",
    S.BURNING_IN: "burn-in ran in this run",
    S.POOLED: "passed health and burn-in in this run: pooled by the gate",
}


def path_to_pool(start: NodeState | None) -> list[NodeState]:
    """The states a node moves through from `start` to pooled, each move one the ledger
    allows (shortest, forward only); [] when it is pooled already. None: not enrolled."""
    if start == S.POOLED:
        return []
    first = start or S.ENROLLED
    seen = {first: [first] if start is None else []}
    queue = deque([first])
    while queue:
        state = queue.popleft()
        for following in sorted(TRANSITIONS[state] & _FORWARD):
            if following not in seen:
                seen[following] = [*seen[state], following]
                queue.append(following)
    if S.POOLED not in seen:
        raise ValueError(f"no way from {start} to pooled in the ledger's transitions")
    return seen[S.POOLED]


def _admit(state: State, host: Any,  # noqa: ARG001 - pyinfra passes state, host
            node: str, ledger: str) -> bool:
    book = Ledger(ledger)
    try:
        try:
            moves = path_to_pool(book.state(node))
        except ValueError as exc:
            return fail_host(host, f"gate: {node}: {exc}; not pooled")
        for to in moves:
            if to == S.ENROLLED:
                book.enroll(node)
            else:
                book.transition(node, to, _WHY[to])
    finally:
        book.close()
    try:
        pool = pool_for(host)
        added = pool.add(node)
    except HeldByAnother as exc:
        host.log_styled(f"gate: {node} passed, but stays out: {exc}", fg="yellow",
                        log_func=logger.warning)
        return _follow_pool(host, node, member=False)
    except KilnError as exc:
        return fail_host(host, f"gate: {node} passed, but could not be pooled: {exc}")
    host.log(f"gate: {node} pooled" + (" (ledger: " + " -> ".join(moves) + ")" if moves
                                        else f" (back in the {pool.where})" if added else ""),
              log_func=logger.info)
    return _follow_pool(host, node, member=True)


def _follow_pool(host: Any, node: str, member: bool) -> bool:
    """The tenant PKey (kiln_gate_pkey) follows: the node's ports in it when it is pooled,
    out of it when it is not."""
    try:
        declared = gate_pkey(host)
        changed = set_membership(host, declared, node, member) if declared else ""
    except KilnError as exc:
        return fail_host(host, f"gate: {node}: tenant PKey: {exc}")
    if changed:
        host.log(f"gate: {node}: UFM {changed}", log_func=logger.info)
    return True


@operation()
def pooled():  # noqa: ANN201 - pyinfra operation generator
    """This node, having passed every stage of this run, is pooled (ledger and pool)."""
    ctx = node_context(host)
    node = ctx.node or host.name
    ledger = ctx.ledger_path
    recorded = recorded_state(ledger, node)
    try:
        pool = pool_for(host)
        entry = pool.entry(node)
        declared = gate_pkey(host)
        in_pkey = declared is None or membership_is(
            host, declared, node, member=entry.membership == Membership.POOLED)
    except KilnError as exc:
        yield fail(f"gate: {node}: the pool or the tenant PKey cannot be read: {exc}")
        return
    if recorded == S.POOLED and entry.membership == Membership.POOLED and in_pkey:
        host.noop(f"{node} is in the pool, and passed this run")
        return
    if recorded == S.POOLED and entry.membership == Membership.HELD and in_pkey:
        host.noop(f"{node} passed this run; the {pool.where} holds it out by another's "
                  f"drain ({entry.reason!r}): kiln leaves it")
        return
    yield FunctionCommand(_admit, (node, str(ledger)), {})


def quarantine(node: str, ledger: Path | str, pool: Pool, reason: str) -> bool:
    """Take `node` out: quarantined in the ledger (enrolled first if it is not there yet)
    and drained in the pool with `reason` (a drain by someone else stays as it is).
    Whether anything changed."""
    book = Ledger(ledger)
    try:
        book.enroll(node)
        moved = book.transition(node, S.QUARANTINED, reason) is not None
    finally:
        book.close()
    drained = pool.drain(node, reason) if pool.entry(node).membership != Membership.UNKNOWN \
        else False
    return moved or drained


def failure_reason(node: str, operations: Iterable[str], messages: Iterable[str]) -> str:
    """The quarantine reason: the stage that failed (the deploy part of pyinfra's operation
    name) and every line printed in red for the node (kiln's messages, a failed command's
    output; at most the last MAX_LINES), without the node's name repeated."""
    stages = sorted({name.split(" | ")[0] for name in operations}) or ["an operation"]
    said = [line.strip().replace(f"node {node}: ", "")
            for message in messages for line in message.splitlines() if line.strip()]
    said = said[-MAX_LINES:]
    return REASON_PREFIX + f"{', '.join(stages)} failed" + (": " + " / ".join(said)
                                                            if said else "")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HOST_LINE = re.compile(r"^\s*\[(?P<host>[^\]]+)\] (?P<text>.*)$", re.DOTALL)
# pyinfra's own summary of a failed operation: it says nothing a technician can act on.
_PYINFRA_SUMMARY = re.compile(r"^Error: executed \d+ commands?$")


class ErrorLines(logging.Handler):
    """What pyinfra printed in red for each host during its current operation: kiln's
    failure messages and a failed command's output, as the person running it saw them."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _ANSI.sub("", record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot be formatted says nothing
            return
        found = _HOST_LINE.match(text)
        if found and not _PYINFRA_SUMMARY.match(found["text"].strip()):
            self.lines.setdefault(found["host"], []).append(found["text"])


class QuarantineFailedNodes(BaseStateCallback):
    """Quarantines each node that fails an operation of a run that gates (one per run)."""

    def __init__(self) -> None:
        self.errors = ErrorLines()
        logging.getLogger("pyinfra").addHandler(self.errors)

    def operation_host_start(self, state: State, host_: Any, op_hash: Any) -> None:  # noqa: ARG002
        self.errors.lines.pop(host_.name, None)

    def operation_host_error(self, state: State, host_: Any, op_hash: Any,
                             retry_attempt: int = 0, max_retries: int = 0) -> None:
        if retry_attempt < max_retries:
            return  # pyinfra tries it again
        if "gpu" not in host_.groups:
            return
        ctx = node_context(host_)
        node = ctx.node or host_.name
        reason = failure_reason(node, state.get_op_meta(op_hash).names,
                                self.errors.lines.pop(host_.name, []))
        try:
            quarantine(node, ctx.ledger_path, pool_for(host_), reason)
            declared = gate_pkey(host_)
            if declared is not None:
                set_membership(host_, declared, node, member=False)
        except Exception as exc:  # noqa: BLE001 - the run goes on; the record says why not
            host_.log_styled(f"gate: could not quarantine {node}: {exc}", fg="red",
                             log_func=logger.error)
            return
        host_.log_styled(f"gate: {node} quarantined ({reason})", fg="red",
                         log_func=logger.error)


@deploy("Gate: pool the nodes that passed, quarantine the rest")
def gate() -> None:
    pooled(name="Pooled: passed every stage of this run")


def gate_failures() -> None:
    """Quarantine every GPU node that fails an operation of this run (call it when the
    deploy is planned, before its first operation)."""
    callback_once(QuarantineFailedNodes, QuarantineFailedNodes)
