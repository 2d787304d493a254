"""The health operation: read the node once, judge every check, record what differs.

Reads happen in the operation's body (one SSH command per node, the BMC's event log beside
it), so a preview reads and judges without writing anything; the ledger (results and the
log cursors) is written only by the yielded command. A converged, healthy node whose
results the ledger already holds yields nothing: the run says "no change".

With `drain=True` (deploy/health.py on a running fleet) a pooled node that turns CRITICAL is
drained from the pool with kiln's reason, and its ledger state moves to quarantined: it
comes back only through the gate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gevent
from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import state as current_state

from kiln.core.checkrun import differs, mark_ran
from kiln.core.checks import Combined, Status
from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.ledger import Ledger, NodeState, read_cursor
from kiln.core.outcomes import fail, fail_host, preview
from kiln.roles.base.operations import node_readable
from kiln.roles.health import bootlog
from kiln.roles.health.judge import Evaluation, SelRead, evaluate
from kiln.roles.health.kernel import CURSOR as KERNEL_CURSOR
from kiln.roles.health.probe import HealthRead, script, sections, split_sections
from kiln.roles.health.sel import CURSOR as SEL_CURSOR
from kiln.roles.pool import REASON_PREFIX, Membership, pool_for

logger = logging.getLogger("pyinfra")

CHECK = "health"  # when it ran in this run (mark_ran), for the stages after it
HEALTH_REASON = REASON_PREFIX + "health: "


def df_paths(min_free: dict[str, float]) -> list[str]:
    return sorted(min_free) or ["/"]


def _read(target: Host, health: Any) -> str:
    """The health read's text: afresh through the host while the deploy runs (an earlier
    stage may have rebooted the node), the fact in a preview."""
    paths = df_paths(health.host.min_free_gib)
    if current_state.is_executing:
        status, output = target.run_shell_command(
            StringCommand(script(sections(health, paths))), _sudo=node_context(target).sudo)
        if not status:
            raise KilnError("the health read failed: "
                            + "\n".join(output.output_lines)[-400:])
        return "\n".join(output.stdout_lines)
    return target.get_fact(HealthRead, health=health, df_paths=paths)


def _sel(target: Host) -> SelRead | None:
    ctx = node_context(target)
    if not ctx.has_bmc:
        return None
    from kiln.roles.bmc.facts import event_log

    try:
        return SelRead(event_log(target))
    except Exception as exc:  # noqa: BLE001 - an unreadable BMC is UNKNOWN, not a crash
        return SelRead(None, str(exc).splitlines()[0][:300] if str(exc) else
                       type(exc).__name__)


def _settle(state: State, host: Host, evaluation: Evaluation, ledger: str, record: bool,
            title: str, drain: bool) -> bool:
    combined = Combined.of(evaluation.results)
    node = node_context(host).label
    if record:
        book = Ledger(ledger)
        try:
            book.record_results(list(combined.results), cursors=evaluation.cursors)
        finally:
            book.close()
    if combined.status == Status.CRITICAL and drain:
        _drain(host, node, ledger, combined)
    if not combined.passes:
        return fail_host(host, f"{title}: " + "\n".join(combined.report()))
    for line in combined.report():  # the WARNs
        host.log_styled(line, fg="yellow", log_func=logger.warning)
    return True


def _drain(host_: Host, node: str, ledger: str, combined: Combined) -> None:
    """A pooled node that turned CRITICAL leaves the pool with kiln's reason."""
    first = combined.having(Status.CRITICAL)[0]
    reason = HEALTH_REASON + first.message
    try:
        pool = pool_for(host_)
        if pool.entry(node).membership == Membership.POOLED:
            pool.drain(node, reason)
            host_.log(f"pool: drained {node} from the {pool.where} ({reason})",
                      log_func=logger.warning)
    except KilnError as exc:  # the node still fails: the run's report says it was not drained
        host_.log_styled(f"pool: could not drain {node}: {exc}", fg="red",
                         log_func=logger.error)
    book = Ledger(ledger)
    try:
        if book.state(node) == NodeState.POOLED:
            book.transition(node, NodeState.QUARANTINED, reason)
    finally:
        book.close()


@operation()
def node_health(drain: bool = False):  # noqa: ANN201
    """Every single-node health check (kiln.roles.health.judge) on this node."""
    if not node_readable():
        yield preview("the health checks")
        return
    try:
        ctx = node_context(host)
        manifest = ctx.manifest
        ledger = str(ctx.ledger_path)
        node = ctx.label
        # The BMC's event log (HTTP or ipmitool) is read while the SSH read runs.
        # The Host itself, not pyinfra's context proxy: the proxy is empty in another greenlet.
        sel_reader = gevent.spawn(_sel, host._get_module())
        text = _read(host, manifest.health)
        sel = sel_reader.get()
        allowlist = bootlog.load_allowlist(site=_site_allowlist(ctx))
        critical = bootlog.load_critical_rules()
        limits = {part.name: part.timeout_s for part in
                  sections(manifest.health, df_paths(manifest.health.host.min_free_gib))}
        # The read as printed, in a preview too (the fact keeps the text): split here, with
        # each section's limit, so a timed-out section names its limit either way.
        found = split_sections(text, limits)
    except KilnError as exc:  # ParseError too: output outside any section
        yield fail(f"node {node_context(host).label}: {exc}")
        return
    evaluation = evaluate(
        node, found, manifest,
        kernel_cursor=read_cursor(ledger, node, KERNEL_CURSOR), sel=sel,
        sel_cursor=read_cursor(ledger, node, SEL_CURSOR), allowlist=allowlist,
        critical_rules=critical)
    mark_ran(host, CHECK)
    combined = Combined.of(evaluation.results)
    record = differs(combined, ledger, node) or bool(evaluation.cursors)
    if combined.passes and not record:
        host.noop(f"health: {len(combined.results)} results, all OK"
                  + (f" ({len(combined.having(Status.WARN))} WARN)"
                     if combined.having(Status.WARN) else ""))
        return
    yield FunctionCommand(_settle, (evaluation, ledger, record, f"node {node}: health",
                                    drain), {})


def _site_allowlist(ctx: Any) -> Path:
    """The site's reviewed additions (group data kiln_bootlog_allowlist; by default
    inventory/bootlog-allowlist.txt, where `kiln dmesg learn` writes)."""
    value = ctx.get("kiln_bootlog_allowlist")
    return Path(value) if value else bootlog.DEFAULT_SITE_ALLOWLIST
