"""Whether an unfinished run's process still runs: its pid, and when that process started
(a pid reused by a later process is not the run's)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kiln.core.ledger import Run
from kiln.core.runlock import process_started_at, run_alive


def run_of(pid: int | None, started_at: float) -> Run:
    return Run(id=1, deploy="deploy/bringup.py", controller="ctl", pid=pid,
               started_at=started_at, finished_at=None, result=None)


def test_the_start_of_a_process_is_read_from_proc():
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = process_started_at(child.pid)
        assert started is not None
        # Clock ticks and a boot time in whole seconds: within a second and a half.
        assert before - 1.5 <= started <= time.time() + 1.5
        assert process_started_at(os.getpid()) <= started
    finally:
        child.kill()
        child.wait()
    assert process_started_at(child.pid) is None  # gone


def test_a_run_whose_process_runs_is_alive():
    assert run_alive(run_of(os.getpid(), time.time()))


def test_a_pid_taken_by_a_later_process_is_not_the_run_s():
    # The run started an hour ago; the process now holding its pid started just now.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not run_alive(run_of(child.pid, time.time() - 3600))
        assert run_alive(run_of(child.pid, time.time()))
    finally:
        child.kill()
        child.wait()


def test_a_run_without_a_process_or_whose_process_is_gone_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not run_alive(run_of(child.pid, time.time()))
    assert not run_alive(run_of(None, time.time()))


def test_a_command_name_with_spaces_and_parentheses_is_read_past(tmp_path):
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n")
    fields = ["S"] + ["0"] * 18 + ["250"] + ["0"] * 30  # starttime: 250 ticks after boot
    (proc / "4242" / "stat").write_text("4242 (a (b) c) " + " ".join(fields) + "\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert process_started_at(4242, proc) == 1700000000 + 250 / ticks
    assert process_started_at(4243, proc) is None
