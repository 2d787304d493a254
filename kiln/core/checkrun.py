"""Check operations that change nothing on a converged cluster, and record what they find.

A check reads in its operation body and builds typed results (kiln.core.checks). Then:

- everything passes and the ledger's last result for each subject is the same: nothing is
  yielded (a second run on a converged cluster shows no change);
- everything passes but the ledger says otherwise (first pass, a node fixed since): one
  command records the results;
- anything does not pass: one command records what differs and fails this node, naming
  every CRITICAL and, beside them, every UNKNOWN.

Reads happen in the body, the ledger is written only by the yielded command, so a preview
(--dry, no -y) writes nothing.

`mark_ran` / `ran_at` keep, for the run only (in memory, gone with the run's State), when a
check ran on a host: a later check that must look only after it (UFM's event window after
the node-side check) reads it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from pyinfra.api import FunctionCommand
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.context import state as current_state

from kiln.core.checks import Combined
from kiln.core.ledger import Ledger, last_results
from kiln.core.outcomes import fail_host

logger = logging.getLogger("pyinfra")


def differs(combined: Combined, ledger: str, node: str, check: str | None = None) -> bool:
    """Whether the ledger's last status for any subject of `combined` is not the one found
    now (a subject the ledger never saw differs). Subjects the ledger knows and this check
    no longer reports are left as they are. `check`: the name every result is recorded
    under; None: each result's own (several checks judged together)."""
    names = {check} if check else {r.check for r in combined.results}
    last = {name: last_results(ledger, node, name) for name in names}
    return any(last[check or r.check].get(r.subject.key) != r.status
               for r in combined.results)


def record_and_settle(host: Host, combined: Combined, ledger: str, title: str) -> bool:
    """Record every result of `combined`, then fail the node naming what did not pass, or
    log its WARNs: for checks whose every run is news (burn-in), not only what changed."""
    return _settle(None, host, combined, ledger, True, title)


def _settle(state: State | None, host: Host, combined: Combined, ledger: str, record: bool,
            title: str, cursors: dict[tuple[str, str], Any] | None = None) -> bool:
    if record and (combined.results or cursors):
        book = Ledger(ledger)
        try:
            book.record_results(list(combined.results), cursors=cursors)
        finally:
            book.close()
    if not combined.passes:
        return fail_host(host, f"{title}: " + "\n".join(combined.report()))
    for line in combined.report():  # the WARNs
        host.log_styled(line, fg="yellow", log_func=logger.warning)
    return True


def check_commands(combined: Combined, ledger: str, node: str, check: str | None,
                   title: str, cursors: dict[tuple[str, str], Any] | None = None,
                   ) -> list[FunctionCommand]:
    """What a check operation yields for `combined`: nothing (it passed, as the ledger
    already says: the caller shows its no-op line), or one command that
    records it and, when it does not pass, fails the node with `title` and the report.
    `cursors` ((node, name) -> value): where log checks stopped judging, recorded with the
    results when given (they moved: new log entries were judged)."""
    record = differs(combined, ledger, node, check) or bool(cursors)
    if combined.passes and not record:
        return []
    return [FunctionCommand(_settle, (combined, ledger, record, title, cursors), {})]


# -- when a check ran, in this run ----------------------------------------------------------

_RAN: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], float]] = weakref.WeakKeyDictionary()
_RAN_GUARD = threading.Lock()


def _this_run() -> Any:
    """The pyinfra State of the run under way (the object, not pyinfra's context proxy)."""
    return current_state._get_module()


def mark_ran(host: Any, check: str, at: float | None = None, run: Any = None) -> None:
    """Note that `check` ran on `host` in this run (`run`: the run's State, by default the
    one under way), now or `at`. A run that cannot be referenced weakly keeps no mark."""
    run = run if run is not None else _this_run()
    with _RAN_GUARD:
        try:
            marks = _RAN.setdefault(run, {})
        except TypeError:
            return
        marks[(host.name, check)] = time.time() if at is None else at


def ran_at(host: Any, check: str, run: Any = None) -> float | None:
    """When `check` last ran on `host` in this run; None when it did not."""
    run = run if run is not None else _this_run()
    with _RAN_GUARD:
        try:
            return _RAN.get(run, {}).get((host.name, check))
        except TypeError:
            return None
