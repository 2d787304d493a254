"""Bring-up stage 1 on a new rack, end to end: MAAS simulator, real BMCs, real pyinfra.

Six nodes arrive New and powered off (five GPU nodes on Redfish, the service node on
IPMI). gpu-004 does not boot after imaging (fault `boot-fail`); gpu-005's BMC is dead
(its emulator is stopped). `pyinfra -y inventory/lab.py deploy/provision.py` must deploy
the other four, fail those two alone with the cause named, record it all in the ledger,
and a second run must change nothing. Reprovisioning one node gives it a fresh root
filesystem and touches no other node.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from kiln.core.manifest import load_manifest
from kiln.lab import services
from kiln.lab.inventory import lab_host_data
from kiln.lab.maas_sim.openapi_check import check_requests, read_requests
from kiln.lab.state import LabState
from kiln.roles.maas.settings import client_for_host, identity_for_host

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = ROOT / ".venv/bin/pyinfra"
BOOT_FAIL = "gpu-004"
DEAD_BMC = "gpu-005"
HEALTHY = ["gpu-001", "gpu-002", "gpu-003", "svc-001"]
IMAGE = load_manifest(ROOT / "kiln" / "firmware" / "lab.yaml").os


def pyinfra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYINFRA), "-y", "inventory/lab.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def rack(lab_shapes, tmp_path_factory) -> LabState:
    faults = tmp_path_factory.mktemp("faults") / "faults.yaml"
    faults.write_text(f"faults:\n  - {{node: {BOOT_FAIL}, kind: boot-fail, first_ok: 0}}\n")
    state = lab_shapes.new_rack(5, 1, faults)
    services.stop(Path(state.lab_dir), f"bmc-{DEAD_BMC}")
    yield state
    lab_shapes.forget()  # reimaged nodes and a dead BMC: not a shape to hand on


@pytest.fixture(scope="module")
def first_run(rack):
    return pyinfra("deploy/provision.py")


def ledger(state: LabState, node: str) -> list[tuple[str, str, str, float]]:
    with sqlite3.connect(Path(state.lab_dir) / "kiln.db") as db:
        return db.execute("SELECT from_state, to_state, reason, at FROM transitions "
                          "WHERE node = ? ORDER BY id", (node,)).fetchall()


def maas_requests(state: LabState) -> list:
    return read_requests(Path(state.lab_dir) / "maas" / "requests.jsonl")


def test_a_preview_lists_undeployed_nodes_as_will_be_imaged(rack):
    """Before anything is imaged: no SSH is attempted, and the plan says what will happen."""
    preview = subprocess.run([str(PYINFRA), "--dry", "inventory/lab.py", "deploy/bringup.py"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = preview.stdout + preview.stderr
    assert preview.returncode == 0, output[-3000:]
    for node in HEALTHY + [BOOT_FAIL]:
        assert f"[{node}] {node}: will be imaged (MAAS: New)" in output, output[-3000:]
    assert "6 (gpu-001, gpu-002, gpu-003, gpu-004, gpu-005, ...)" in output


def test_a_new_rack_is_deployed_and_reachable_over_ssh(rack, first_run, labtools):
    output = first_run.stdout + first_run.stderr
    assert first_run.returncode != 0  # two nodes failed, and the exit code says so
    for node in HEALTHY:
        assert f"[{node}] Success" in output, output[-3000:]
        assert labtools.ssh(rack, node, "hostname").strip() == node
        image = json.loads(labtools.ssh(rack, node, "cat /etc/kiln-lab/image.json"))
        assert image == {"osystem": IMAGE.osystem, "distro_series": IMAGE.distro_series,
                         "hwe_kernel": IMAGE.hwe_kernel}


def test_every_transition_is_in_the_ledger_with_its_time(rack, first_run):
    for node in HEALTHY:
        rows = ledger(rack, node)
        assert [row[1] for row in rows] == ["enrolled", "commissioning", "ready", "deploying",
                                           "deployed"]
        times = [row[3] for row in rows]
        assert times == sorted(times)


def test_a_node_that_does_not_boot_fails_alone_with_maas_saying_why(rack, first_run):
    output = first_run.stdout + first_run.stderr
    failure = [line for line in output.splitlines() if f"[{BOOT_FAIL}] provision:" in line]
    assert failure and "Failed deployment" in failure[0], output[-3000:]
    last = ledger(rack, BOOT_FAIL)[-1]
    assert last[1] == "quarantined" and "Failed deployment" in last[2]


def test_a_node_with_a_dead_bmc_fails_alone_naming_it(rack, first_run):
    output = first_run.stdout + first_run.stderr
    failure = [line for line in output.splitlines() if f"[{DEAD_BMC}] provision:" in line]
    bmc = rack.node(DEAD_BMC).bmc["address"]
    assert failure and bmc in failure[0], output[-3000:]
    assert ledger(rack, DEAD_BMC)[-1][1] == "quarantined"
    # MAAS was never asked to drive a BMC kiln could not reach: the machine is still New.
    data = lab_host_data(rack, rack.node(DEAD_BMC))
    machine = client_for_host(data).find(identity_for_host(data))
    assert machine.status_name == "New"


def test_a_second_run_changes_nothing_and_says_so(rack, first_run):
    before = len(maas_requests(rack))
    limits = [arg for node in HEALTHY for arg in ("--limit", node)]
    again = pyinfra("-v", "deploy/provision.py", *limits)  # -v: pyinfra prints no-op reasons
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "already Deployed with debian/bookworm" in output
    total = [line for line in output.splitlines() if "Grand total" in line]
    assert total and total[0].split()[-1] == str(len(HEALTHY)), total  # all "No Change"
    assert [r.method for r in maas_requests(rack)[before:]] == ["GET"] * (
        len(maas_requests(rack)) - before)


def test_every_request_kiln_sent_validates_against_maas_openapi(rack, first_run):
    recorded = maas_requests(rack)
    assert any(r.method == "POST" for r in recorded)
    assert check_requests(recorded) == []


def test_reprovision_gives_a_fresh_root_and_touches_no_other_node(rack, first_run, labtools):
    target, other = "gpu-001", "gpu-002"
    for node in (target, other):
        labtools.ssh(rack, node, "echo kiln > /root/marker")
    other_history = ledger(rack, other)
    result = pyinfra("deploy/reprovision.py", "--limit", target)
    output = result.stdout + result.stderr
    assert f"[{target}] Success" in output, output[-3000:]
    assert other not in output
    assert labtools.ssh(rack, target, "test -e /root/marker && echo there || echo gone"
                        ).strip() == "gone"
    assert labtools.ssh(rack, other, "cat /root/marker").strip() == "kiln"
    history = ledger(rack, target)
    states = [row[1] for row in history]
    start = len(states) - 1 - states[::-1].index("reprovisioning")
    assert states[start:start + 5] == [
        "reprovisioning", "commissioning", "ready", "deploying", "deployed"]
    # Then the rest of bring-up runs on the node alone: it is pooled, or quarantined by the
    # gate with the stage that stopped it (alone, burn-in has no partner for its pairs).
    after = history[start + 5:]
    assert [row[1] for row in after][-1:] in ([], ["pooled"], ["quarantined"]), after
    if after and after[-1][1] == "quarantined":
        assert after[-1][2].startswith("kiln: ") and " failed" in after[-1][2], after
    assert ledger(rack, other) == other_history
