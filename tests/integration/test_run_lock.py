"""One kiln run per node at a time (kiln.core.runlock), with real pyinfra runs on @local.

Each run is the pyinfra CLI on a deploy file that holds its nodes and runs `sleep`; the node
is named by kiln_node and the ledger is the test's. A second run while the first works is
refused naming the holder; a run killed with SIGKILL is recorded as interrupted by the next
run, which takes the node; a preview writes no ledger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.core.ledger import Ledger

BIN = Path(sys.executable).parent

INVENTORY = """\
import os
hosts = [("@local", {"kiln_node": "gpu-017", "kiln_ledger": os.environ["TEST_LEDGER"]})]
"""
DEPLOY = """\
import os
from pyinfra.operations import server
from kiln.core.runlock import hold_nodes_for_run

hold_nodes_for_run("deploy/test.py")
server.shell(name="work", commands=[f"sleep {os.environ['TEST_SLEEP']}"])
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "inventory.py").write_text(INVENTORY)
    (tmp_path / "deploy.py").write_text(DEPLOY)
    return tmp_path


def pyinfra(site: Path, *args: str, sleep: float = 0) -> subprocess.Popen:
    env = {**os.environ, "TEST_LEDGER": str(site / "state/kiln.db"), "TEST_SLEEP": str(sleep)}
    return subprocess.Popen([str(BIN / "pyinfra"), *args, "inventory.py", "deploy.py"],
                            cwd=site, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(run: subprocess.Popen) -> tuple[int, str]:
    output, _ = run.communicate(timeout=120)
    return run.returncode, output


def wait_for_lock(ledger_path: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ledger_path.exists():
            ledger = Ledger(ledger_path)
            try:
                locked = ledger.locked_nodes()
            finally:
                ledger.close()
            if "gpu-017" in locked:
                return locked["gpu-017"]
        time.sleep(0.1)
    raise AssertionError("the first run never held gpu-017")


def recorded_runs(site: Path) -> list[tuple[str, str | None]]:
    ledger = Ledger(site / "state/kiln.db")
    try:
        assert ledger.locked_nodes() == {}
        return [(run.deploy, run.result) for run in ledger.runs()]
    finally:
        ledger.close()


def test_a_second_run_on_a_held_node_is_refused_naming_the_holder(site: Path):
    first = pyinfra(site, "-y", sleep=30)
    try:
        run_id = wait_for_lock(site / "state/kiln.db")
        code, output = finished(pyinfra(site, "-y"))
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert code != 0
    assert f"gpu-017 is held by kiln run {run_id} (deploy/test.py, pid {first.pid} on " in output
    assert "held by another kiln run" in output
    # The first run, stopped with SIGTERM, records itself as interrupted on its way out.
    assert recorded_runs(site) == [("deploy/test.py", "interrupted"),
                                   ("deploy/test.py", "refused")]


def test_a_killed_run_is_recorded_interrupted_and_its_node_taken_by_the_next(site: Path):
    first = pyinfra(site, "-y", sleep=30)
    run_id = wait_for_lock(site / "state/kiln.db")
    first.kill()  # SIGKILL: no exit handler runs, the lock stays in the ledger
    first.communicate(timeout=60)
    code, output = finished(pyinfra(site, "-y"))
    assert code == 0, output
    assert f"run {run_id} (deploy/test.py, pid {first.pid} on " in output
    assert "was interrupted (its process is gone)" in output
    assert recorded_runs(site) == [("deploy/test.py", "interrupted"),
                                   ("deploy/test.py", "succeeded")]


def test_a_preview_writes_no_ledger(site: Path):
    code, output = finished(pyinfra(site, "--dry"))
    assert code == 0, output
    assert not (site / "state").exists()
