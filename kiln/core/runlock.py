"""One kiln run per node at a time, and every run on the record.

A deploy file calls `hold_nodes_for_run("deploy/bringup.py")`. Nothing happens while pyinfra
plans, so a preview writes nothing. When the first operation starts (pyinfra's
`operation_start` callback), the run is recorded in each ledger its nodes use, together with
the controller's host name and the pyinfra process. Each node is then locked for the run in
one transaction. A node that another unfinished run holds is refused before anything touches
it: pyinfra fails that host, the message names the holder, and every other node goes on.

When the process exits, the run is recorded as succeeded or failed (or interrupted, when it
stopped before its last operation), its locks are released, and its report is written beside
the ledger (kiln.core.runreport: reports/run-<id>.json and .md). A run killed outright (SIGKILL,
a controller that lost power) cannot do that. The next run on the same controller sees that
the process is gone, records the old run as interrupted and takes its nodes. The lock of a run
on another controller is honoured, because its process cannot be seen from here.

Nodes are held in pyinfra's default mode, the one kiln's deploys and documentation use.
`--serial` and `--no-wait` start operations host by host and never call `operation_start`:
a run in those modes is neither recorded nor holds its nodes.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.state import BaseStateCallback, State
from pyinfra.context import ctx_state

from kiln.core.context import node_context
from kiln.core.ledger import Ledger, Run, set_current_run
from kiln.core.runreport import write_run_report

logger = logging.getLogger("pyinfra")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


# /proc/<pid>/stat's start time has clock-tick precision, /proc/stat's boot time whole
# seconds: a process's start read this way may be up to a second late.
START_TOLERANCE_S = 1.5


def process_started_at(pid: int, proc: Path = Path("/proc")) -> float | None:
    """When process `pid` started (seconds since the epoch), from Linux's /proc; None when
    it cannot be told (no such process, no /proc)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        boot = next(float(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # Fields after the command name (which may hold spaces and parentheses): the 20th of
    # them is starttime, in clock ticks since boot (proc(5): field 22).
    fields = stat[stat.rindex(")") + 2:].split()
    try:
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


def run_alive(run: Run) -> bool:
    """Whether the process that started `run` is still running. A pid alone can lie: after
    the controller rebooted or ran long enough, another process may have its number. A
    process that started after the run did is not the run's."""
    if run.pid is None or not process_alive(run.pid):
        return False
    started = process_started_at(run.pid)
    return started is None or started <= run.started_at + START_TOLERANCE_S


class NodesHeldForRun(BaseStateCallback):
    """The pyinfra callback handler that records a run and holds its nodes (one per run)."""

    def __init__(self, deploy: str):
        self.deploy = deploy
        self.controller = socket.gethostname()
        self.runs: dict[Path, int] = {}  # ledger -> this run's id in it
        self.started = False
        self.ops_done = 0
        self.result: str | None = None  # set when the run is refused or terminated
        self.finished = False

    def operation_start(self, state: State, op_hash: Any) -> None:  # noqa: ARG002
        if self.started:
            return
        self.started = True
        atexit.register(self.finish, state)
        # A stopped controller (systemd, a cancelled CI job) gets SIGTERM, whose default
        # action skips atexit: record the run as interrupted first, then die of the signal.
        gevent.signal_handler(signal.SIGTERM, self._terminated, state)
        by_ledger: dict[Path, list[Any]] = defaultdict(list)
        for host in state.inventory.get_active_hosts():
            by_ledger[node_context(host).ledger_path].append(host)
        refused = set()
        for path, hosts in sorted(by_ledger.items()):
            ledger = Ledger(path)
            try:
                for run in ledger.close_dead_runs(self.controller, run_alive):
                    logger.warning(f"kiln: {run.describe()} was interrupted (its process is "
                                   f"gone); recorded as such in {path}, its nodes are free")
                run_id = ledger.start_run(self.deploy, self.controller, os.getpid())
                self.runs[path] = run_id
                set_current_run(path, run_id)
                names = {node_context(host).node: host for host in hosts}
                held = ledger.lock_nodes(run_id, sorted(names))
            finally:
                ledger.close()
            for node, holder in sorted(held.items()):
                elsewhere = "" if holder.controller == self.controller else (
                    f"; a run of another controller keeps its nodes until it records its end "
                    f"in {path}")
                names[node].log_styled(f"{node} is held by kiln {holder.describe()}: not run "
                                       f"here; rerun it once that run has ended{elsewhere}",
                                       fg="red", log_func=logger.error)
                refused.add(names[node])
        if refused and refused == set(state.inventory.get_active_hosts()):
            self.result = "refused"
            raise PyinfraError("every node of this run is held by another kiln run (above)")
        state.fail_hosts(refused)

    def operation_end(self, state: State, op_hash: Any) -> None:  # noqa: ARG002
        self.ops_done += 1

    def _terminated(self, state: State) -> None:
        self.result = "interrupted"
        self.finish(state)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def finish(self, state: State) -> None:
        if self.finished:
            return
        self.finished = True
        if self.result is not None:
            result = self.result
        elif self.ops_done < len(state.get_op_order()) and state.active_hosts:
            result = "interrupted"  # stopped with nodes still to run (Ctrl-C, an error)
        else:
            result = "failed" if state.failed_hosts else "succeeded"
        for path, run_id in self.runs.items():
            ledger = Ledger(path)
            try:
                ledger.finish_run(run_id, result)
            finally:
                ledger.close()
            try:
                report = write_run_report(path, run_id)
            except OSError as exc:  # the run's record is in the ledger; say why no report
                logger.warning(f"kiln: no report of run {run_id}: {exc}")
            else:
                if report is not None:
                    logger.info(f"kiln: run {run_id} ({result}): {report} and "
                                f"{report.with_suffix('.md')}")


def callback_once(kind: type[BaseStateCallback], make: Callable[[], BaseStateCallback]) -> None:
    """Add `make()` to this pyinfra run's callback handlers unless one of `kind` is there:
    pyinfra runs a deploy file once per host, and a run needs one handler."""
    state = ctx_state.get()
    if state is None or any(isinstance(handler, kind) for handler in state.callback_handlers):
        return
    state.add_callback_handler(make())


def hold_nodes_for_run(deploy: str) -> None:
    """Record this pyinfra run in the ledger and hold its nodes while it executes (a deploy
    file calls this while it is planned)."""
    callback_once(NodesHeldForRun, lambda: NodesHeldForRun(deploy))


__all__ = ["NodesHeldForRun", "Run", "callback_once", "hold_nodes_for_run", "process_alive",
           "process_started_at", "run_alive"]
