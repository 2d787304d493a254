"""The gate with the Slurm pool backend, against the lab's real Slurm (Debian's slurmctld on
svc-001, slurmd on the GPU nodes): what kiln drains and resumes, read back with `sinfo` and
`scontrol` on the controller; and the tenant PKey (kiln_gate_pkey) following the pool, read
back from the lab's UFM simulator.

A stand-in stage fails on gpu-002 (tests/lab/gate_deploy.py); gpu-003 was drained by hand
with another reason before the run. Four nodes, and this module's own ledger, so the rest of
the lab's tests see neither.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import requests

from kiln.lab import slurm as lab_slurm
from kiln.lab.credentials import read_lab_secrets
from kiln.lab.ufm_sim import URL as UFM_URL
from kiln.roles.pool.slurm import parse_nodes

DEPLOY = "tests/lab/gate_deploy.py"
NODES = ("gpu-001", "gpu-002", "gpu-003", "gpu-004")
FAILING = "gpu-002"
HELD = "gpu-003"
HAND_REASON = "hand: DIMM swap, ticket 4711"
# Its own partition: tests/lab/test_fabric.py's 0x0a12 is left as that module leaves it.
PKEY = {"pkey": "0x0b34", "name": "pool-tenant"}


class SlurmGate:
    def __init__(self, lab, labtools, work: Path):
        self.lab, self.tools = lab, labtools
        self.controller = lab_slurm.controller(lab.nodes)
        self.ledger = work / "kiln.db"

    def run(self, failing: list[str]) -> subprocess.CompletedProcess[str]:
        data = {"kiln_pool": {"backend": "slurm", "controller": self.controller},
                "kiln_ledger": str(self.ledger), "test_failing_nodes": failing,
                "kiln_ufm_pkeys": [PKEY], "kiln_gate_pkey": PKEY["name"]}
        # -v: the noop lines (what the gate left alone) are printed
        args = [str(self.tools.bin / "pyinfra"), "-y", "-v", "inventory/lab.py", DEPLOY]
        for node in NODES:  # only these nodes: the controller is reached outside the run
            args += ["--limit", node]
        for key, value in data.items():
            args += ["--data", f"{key}={json.dumps(value)}"]
        return subprocess.run(args, cwd=self.tools.root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)

    def scontrol(self, command: str) -> str:
        return self.tools.ssh(self.lab, self.controller, command)

    def nodes(self) -> dict:
        return {n.name: n for n in parse_nodes(self.scontrol("scontrol -o show node"))}

    def pkey_members(self) -> dict[str, str]:
        creds = read_lab_secrets(Path(self.lab.lab_dir))["ufm"]
        answer = requests.get(f"{UFM_URL}ufmRest/resources/pkeys/{PKEY['pkey']}",
                              params={"guids_data": "true"}, verify=self.lab.tls_ca,
                              auth=(creds["username"], creds["password"]), timeout=30)
        if answer.status_code == 404:
            return {}
        answer.raise_for_status()
        return {e["guid"].lower().removeprefix("0x"): e["membership"]
                for e in answer.json().get("guids", [])}

    def port_guids(self, *nodes: str) -> set[str]:
        found = set()
        for node in nodes:
            profile = json.loads((Path(self.lab.lab_dir) / "hw" / node / "profile.json")
                                 .read_text())
            found |= {hca["ports"][0]["port_guid"].lower().removeprefix("0x")
                      for hca in profile["hcas"]}
        return found

    def sinfo(self) -> dict[str, tuple[str, str]]:
        rows = self.scontrol("sinfo -N -h -o '%N|%T|%E'").splitlines()
        return {name: (state, reason) for name, state, reason in
                (row.split("|", 2) for row in rows)}


@pytest.fixture(scope="module")
def gate(lab, labtools, tmp_path_factory):
    slurm_gate = SlurmGate(lab, labtools, tmp_path_factory.mktemp("slurm-gate"))
    lab_slurm.wait_registered(lab, list(NODES), timeout=120)
    slurm_gate.scontrol(f"scontrol update NodeName={HELD} State=DRAIN "
                        f"Reason='{HAND_REASON}'")
    yield slurm_gate
    # Hand the lab on as it came: every node idle, none drained.
    for name, node in slurm_gate.nodes().items():
        if node.drained:
            slurm_gate.scontrol(f"scontrol update NodeName={name} State=RESUME")


@pytest.fixture(scope="module")
def first(gate):
    return gate.run([FAILING])


def test_the_failed_node_is_drained_with_kilns_reason_and_the_rest_stay_idle(gate, first):
    assert first.returncode != 0, first.stdout  # a node failed: the run says so
    sinfo = gate.sinfo()
    assert sinfo["gpu-001"] == ("idle", "none") and sinfo["gpu-004"] == ("idle", "none")
    state, reason = sinfo[FAILING]
    assert state == "drained"
    assert reason.startswith("kiln: Health (stand-in) failed: ")
    assert "GPU 3 (0000:1b:00.0): row-remap failure" in reason and "replace the GPU" in reason
    # Nodes outside the run are not touched.
    assert sinfo["gpu-005"] == ("idle", "none")


def test_the_tenant_pkey_holds_exactly_the_pooled_nodes_ports(gate, first):
    members = gate.pkey_members()
    assert set(members) == gate.port_guids("gpu-001", "gpu-004")
    assert set(members.values()) == {"full"}


def test_a_node_drained_by_hand_stays_drained_with_its_reason(gate, first):
    assert gate.sinfo()[HELD] == ("drained", HAND_REASON)
    assert gate.nodes()[HELD].reason_by == "root"
    said = re.sub(r"\x1b\[[0-9;]*m", "", first.stdout)
    assert f"gate: {HELD} passed, but stays out: Slurm pool on {gate.controller}: {HELD} is " \
           f"drained by someone else ('{HAND_REASON}'" in said, said


def test_a_second_run_changes_nothing_in_slurm(gate, first):
    before, members_before = gate.nodes(), gate.pkey_members()
    again = gate.run([FAILING])
    assert again.returncode != 0
    after = gate.nodes()
    # The same drains, set at the same moment: kiln wrote nothing the second time.
    assert {n: (x.state, x.reason, x.reason_at) for n, x in after.items()} == \
           {n: (x.state, x.reason, x.reason_at) for n, x in before.items()}
    assert gate.pkey_members() == members_before
    said = re.sub(r"\x1b\[[0-9;]*m", "", again.stdout)
    for node in ("gpu-001", "gpu-004"):
        assert f"[{node}] noop: {node} is in the pool, and passed this run" in said, said
    assert f"[{HELD}] noop: {HELD} passed this run; the Slurm pool on {gate.controller} holds it " \
           "out" in said, said


def test_a_node_whose_fault_is_cleared_is_resumed_by_the_gate(gate, first):
    cleared = gate.run([])
    assert cleared.returncode == 0, cleared.stdout
    # Slurm marks a resumed node not responding ("idle*") until its slurmd answers the ping
    # slurmctld sends it at once: idle within seconds.
    lab_slurm.wait_registered(gate.lab, [FAILING], timeout=60)
    sinfo = gate.sinfo()
    assert sinfo[FAILING] == ("idle", "none")
    assert sinfo[HELD] == ("drained", HAND_REASON)
    assert set(gate.pkey_members()) == gate.port_guids("gpu-001", "gpu-002", "gpu-004")
