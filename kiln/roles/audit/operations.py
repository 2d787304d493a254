"""The audit's two operations: read every node, then judge it with the fleet.

`node_read` reads the node in one SSH command (kiln.roles.audit.read) while its BMC's
firmware inventory and BIOS attributes are read on the controller beside it, and compares
each value with the manifest (kiln.roles.audit.observe). It never yields a command: nothing
on a node changes, with or without -y. The reads happen in a preview too, so a plain
`pyinfra INVENTORY deploy/audit.py` prints the fleet's audit as soon as the last node is read.

`node_judged` runs once every node was read (pyinfra runs an operation on every host before
the next starts): the first node to get there groups the fleet's audit (kiln.roles.audit.fleet),
prints it, records it in the ledger (the audit and each drift with the time it was first
seen) and writes `<state>/reports/audit-<id>.json`. Each node that differs then fails, so
pyinfra's exit code is 0 only when nothing drifts. A preview records nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import weakref
from collections import defaultdict
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gevent
from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import ctx_state

from kiln.core.context import node_context
from kiln.core.ledger import Ledger, drift_since
from kiln.core.outcomes import fail
from kiln.core.sections import script, split_sections
from kiln.roles.audit.fleet import FleetAudit, fleet_audit
from kiln.roles.audit.observe import BmcRead, NodeAudit, audit_node
from kiln.roles.audit.read import sections
from kiln.roles.audit.report import report_json, report_lines, seen_of
from kiln.roles.bmc.errors import BMCError, BMCUnsupported
from kiln.roles.bmc.facts import bmc_for

logger = logging.getLogger("pyinfra")


class AuditRun:
    """What one pyinfra run's audit has read: per phase (the preview, the run), each node's
    audit or why it could not be read."""

    def __init__(self) -> None:
        self.audits: dict[bool, dict[str, NodeAudit]] = {False: {}, True: {}}
        self.not_read: dict[bool, dict[str, str]] = {False: {}, True: {}}
        self.hosts: dict[str, Host] = {}
        self.fleet: FleetAudit | None = None

    def read_count(self, executing: bool) -> int:
        return len(self.audits[executing]) + len(self.not_read[executing])

    def fleet_of(self, executing: bool) -> FleetAudit:
        return fleet_audit(list(self.audits[executing].values()), self.not_read[executing])


_RUNS: weakref.WeakKeyDictionary[State, AuditRun] = weakref.WeakKeyDictionary()


def _run_of(state: State) -> AuditRun:
    return _RUNS.setdefault(state, AuditRun())


def audited(target: Host) -> bool:
    """The nodes the audit reads: GPU nodes, whose SKU manifest pins their whole stack."""
    return "gpu" in target.groups


def inventory_argument() -> str:
    """The inventory this pyinfra run was given (for the fix commands the report prints)."""
    for arg in sys.argv[1:]:
        if not arg.startswith("-") and arg.endswith((".py", ".yaml", ".yml")) \
                and "deploy/" not in arg and Path(arg).is_file():
            return arg
    return "INVENTORY"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _bmc_read(target: Host) -> BmcRead:
    """The BMC's firmware inventory and BIOS attributes, or why each is not there."""
    if not node_context(target).has_bmc:
        return BmcRead(unsupported=("BMC reads: no BMC in the inventory",))
    firmware: list[dict[str, Any]] | None = None
    bios: dict[str, Any] | None = None
    errors: list[str] = []
    unsupported: list[str] = []
    try:
        with closing(bmc_for(target)) as bmc:
            try:
                firmware = [asdict(component) for component in bmc.firmware_inventory()]
            except BMCUnsupported as exc:
                unsupported.append(f"the BMC's firmware inventory: {_first_line(exc)}")
            except BMCError as exc:
                errors.append(f"the BMC's firmware inventory: {_first_line(exc)}")
            try:
                bios = dict(bmc.bios_attributes())
            except BMCUnsupported as exc:
                unsupported.append(f"BIOS attributes: {_first_line(exc)}")
            except BMCError as exc:
                errors.append(f"BIOS attributes: {_first_line(exc)}")
    except BMCError as exc:
        errors.append(f"the BMC: {_first_line(exc)}")
    return BmcRead(firmware, bios, tuple(errors), tuple(unsupported))


def _ssh_read(target: Host, manifest: Any) -> str:
    status, output = target.run_shell_command(StringCommand(script(sections(manifest))),
                                              _sudo=node_context(target).sudo)
    if not status:
        raise OSError("the audit read failed: " + "\n".join(output.output_lines)[-300:])
    return "\n".join(output.stdout_lines)


def read_node(target: Host) -> NodeAudit:
    ctx = node_context(target)
    manifest = ctx.manifest
    # The BMC answers while the node's read runs (one greenlet each).
    bmc = gevent.spawn(_bmc_read, target)
    try:
        text = _ssh_read(target, manifest)
    finally:
        answered = bmc.get()
    limits = {part.name: part.timeout_s for part in sections(manifest)}
    return audit_node(ctx.label, manifest, split_sections(text, limits), answered)


def _say(lines: list[str], clean: bool) -> None:
    for line in lines:
        (logger.info if clean else logger.warning)(line)


@operation()
def node_read():  # noqa: ANN201 - pyinfra operation generator
    """Read this node once (one SSH command, its BMC beside it) and compare with the manifest."""
    state = ctx_state.get()
    run = _run_of(state)
    executing = state.is_executing
    target = host._get_module()  # the Host itself: the context proxy is empty elsewhere
    label = node_context(target).label
    run.hosts[label] = target
    try:
        audit = read_node(target)
    except Exception as exc:  # noqa: BLE001 - any failure to read is this node's, reported
        run.not_read[executing][label] = _first_line(exc)
        host.log_styled(f"audit: {label} not read: {_first_line(exc)}", fg="red",
                        log_func=logger.error)
    else:
        run.audits[executing][label] = audit
        host.noop(f"audit: {len(audit.values)} values read, {len(audit.drifts)} differ from "
                  "the manifest")
    expected = [h for h in state.inventory.get_active_hosts() if audited(h)]
    if not executing and run.read_count(False) == len(expected):
        fleet = run.fleet_of(False)
        ledgers = {node_context(h).ledger_path for h in expected}
        since = {key: at for path in ledgers for key, at in drift_since(path).items()}
        _say(report_lines(fleet, since, inventory_argument()), fleet.clean)
        logger.info("audit: a preview; recorded nowhere (with -y the audit is recorded in "
                    "the ledger and its JSON report written; no node changes either way)")
    yield from ()


def _record(state: State, host: Host, fleet: FleetAudit,  # noqa: ARG001 - pyinfra passes
            ledgers: dict[str, list[str]], inventory: str) -> bool:  # them by these names
    """Print the fleet's audit, record it in each ledger its nodes use, write its report."""
    at = time.time()
    since: dict[Any, float] = {}
    for path in ledgers:
        since.update(drift_since(path))
    _say(report_lines(fleet, since, inventory), fleet.clean)
    seen = seen_of(fleet)
    summary = ("clean" if fleet.clean else
               f"{len(fleet.nodes_at_fault())} of {len(fleet.nodes)} nodes differ")
    for path, nodes in sorted(ledgers.items()):
        book = Ledger(path)
        try:
            audit_id = book.record_audit(nodes, [s for s in seen if s.node in nodes], summary,
                                         controller=socket.gethostname(), at=at)
        finally:
            book.close()
        since = drift_since(path)
        report = report_json(fleet, since, at, audit_id)
        directory = Path(path).parent / "reports"
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"audit-{audit_id}.json"
        scratch = target.with_suffix(".json.tmp")
        scratch.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(scratch, target)  # a reader never sees half a report
        logger.info(f"audit {audit_id} recorded in {path}; report: {target}")
    return True


@operation()
def node_judged():  # noqa: ANN201 - pyinfra operation generator
    """Once every node is read: the fleet's audit (printed and recorded once per run), and
    this node fails when it differs."""
    state = ctx_state.get()
    if not state.is_executing:
        host.noop("audit: judged with the whole fleet once every node is read")
        return
    run = _run_of(state)
    first = run.fleet is None
    if first:
        run.fleet = run.fleet_of(True)
        ledgers: dict[str, list[str]] = defaultdict(list)
        for label, target in run.hosts.items():
            if label in run.audits[True] or label in run.not_read[True]:
                ledgers[str(node_context(target).ledger_path)].append(label)
        yield FunctionCommand(_record, (run.fleet, dict(ledgers), inventory_argument()), {})
    label = node_context(host).label
    faults = run.fleet.nodes_at_fault().get(label)
    if faults:
        shown = ", ".join(faults[:4]) + (f" and {len(faults) - 4} more" if len(faults) > 4
                                         else "")
        yield fail(f"audit: {label} differs: {shown}")
    elif not first:
        host.noop("audit: nothing differs")
