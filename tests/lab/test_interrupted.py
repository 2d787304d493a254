"""The controller killed with SIGKILL mid-install, on two deployed lab GPU nodes: the rerun
converges with no manual step, and the failure stays on its node (issue: reliability).

gpu-001's NVIDIA packages are purged first, so the run installs them. A watcher on the node
freezes (SIGSTOP) the first dpkg that has written its journal, and the test kills pyinfra
with SIGKILL: the node is left as a controller that died mid-install leaves it, with the old
run's apt-get and dpkg still there and holding dpkg's lock. gpu-002 is in the same runs and
only has to stay converged.

- The next run records the killed run as interrupted. On gpu-001 it waits a bounded time
  for dpkg's lock and then fails, naming the holder. gpu-002 converges in the same run.
- Once the old processes are gone (killed here, as they die on a real node), a plain rerun
  finishes dpkg's interrupted work, installs the rest, and gpu-001 converges.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from lab_data import data_args, lab_stage_data

from kiln.core.ledger import Ledger

pytestmark = pytest.mark.lab

DEPLOY = "tests/lab/interrupted_deploy.py"
FAULTED, BYSTANDER = "gpu-001", "gpu-002"
PURGE = ('P=$(dpkg-query -W -f "${Package}\\n" | grep -E "^(nvidia|libnvidia|cuda|libnccl|'
         'nccl|datacenter-gpu)"); apt-mark unhold $P >/dev/null; '
         'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $P >/dev/null')
# Freezes dpkg once it has written a journal entry: the moment a killed run leaves behind.
FREEZE = ('rm -f /tmp/kiln-test-frozen; nohup sh -c "while ! ls /var/lib/dpkg/updates/0* '
          '>/dev/null 2>&1; do sleep 0.002; done; pkill -STOP -x dpkg; '
          'pgrep -x dpkg > /tmp/kiln-test-frozen" >/dev/null 2>&1 &')


@pytest.fixture(scope="module")
def runs(lab, labtools, tmp_path_factory):
    ledger = tmp_path_factory.mktemp("interrupted") / "kiln.db"
    args = [str(labtools.bin / "pyinfra"), "-y", "inventory/lab.py", DEPLOY,
            "--limit", FAULTED, "--limit", BYSTANDER,
            *data_args({**lab_stage_data(lab), "kiln_ledger": str(ledger)})]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*args, *extra], cwd=labtools.root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)

    labtools.ssh(lab, FAULTED, PURGE)
    labtools.ssh(lab, FAULTED, FREEZE)
    killed = subprocess.Popen(args, cwd=labtools.root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not labtools.ssh(lab, FAULTED, "cat /tmp/kiln-test-frozen 2>/dev/null || true"):
        assert killed.poll() is None, "the run ended before its dpkg could be frozen"
        assert time.monotonic() < deadline, "no dpkg journal seen on the node in 300 s"
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    book = Ledger(ledger)
    try:
        left = (book.runs(), book.locked_nodes())
    finally:
        book.close()
    waited = run("--data", "kiln_dpkg_lock_wait=4")
    # The old run's processes end (on a real node they die with their session or finish).
    labtools.ssh(lab, FAULTED, "pkill -9 -x dpkg; pkill -9 -x apt-get; true")
    journal = labtools.ssh(lab, FAULTED, "ls /var/lib/dpkg/updates | grep -c '^[0-9]' || true")
    rerun = run()
    book = Ledger(ledger)
    try:
        recorded = [(r.id, r.result) for r in book.runs()]
    finally:
        book.close()
    return {"killed": killed, "left": left, "waited": waited, "journal": journal.strip(),
            "rerun": rerun, "recorded": recorded}


def test_the_killed_run_held_both_nodes_and_is_recorded_interrupted(runs):
    (killed_run,), locks = runs["left"]
    assert killed_run.result is None and killed_run.pid == runs["killed"].pid
    assert locks == {FAULTED: killed_run.id, BYSTANDER: killed_run.id}
    assert f"{killed_run.describe()} was interrupted" in runs["waited"].stdout
    assert runs["recorded"] == [(killed_run.id, "interrupted"), (killed_run.id + 1, "failed"),
                                (killed_run.id + 2, "succeeded")]


def test_a_dpkg_still_holding_the_lock_is_waited_for_then_named(runs):
    output = runs["waited"].stdout
    assert runs["waited"].returncode != 0
    assert f"[{FAULTED}] dpkg was interrupted (" in output, output[-6000:]
    assert (f"[{FAULTED}] dpkg was interrupted, and its lock is still held after 4 s by pid "
            in output), output[-6000:]
    assert "(apt-get " in output or "(/usr/bin/dpkg " in output, output[-6000:]
    # Contained: the other node of the same run converged.
    assert f"[{BYSTANDER}] Error" not in output, output[-6000:]


def test_a_plain_rerun_finishes_dpkg_and_converges(runs, lab, labtools):
    assert runs["journal"] != "0", "the killed dpkg left no journal: nothing was tested"
    output = runs["rerun"].stdout
    assert runs["rerun"].returncode == 0, output[-6000:]
    assert f"[{FAULTED}] dpkg was interrupted (" in output
    assert "dpkg was interrupted, you must manually run" not in output
    audit = labtools.ssh(lab, FAULTED, "dpkg --audit; ls /var/lib/dpkg/updates | grep '^[0-9]'"
                         " || true")
    assert audit.strip() == ""
    status = labtools.ssh(lab, FAULTED, "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n'"
                          " | grep -E ' (nvidia-driver|cuda-toolkit|libnccl2)'")
    held = labtools.ssh(lab, FAULTED, "apt-mark showhold").split()
    for line in status.strip().splitlines():
        abbrev, package = line.split()
        assert abbrev == "hi" and package in held, status
