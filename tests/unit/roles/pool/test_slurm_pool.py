"""The Slurm pool backend against Slurm 22.05's real output (tests/fixtures/slurm, captured
in the lab from Debian's slurmctld): reading nodes, and the rule that kiln changes only what
it set. The runner here replays those captures as scontrol printed them (stdout, stderr,
exit status) and records the commands kiln would run; tests/lab/test_pool_slurm.py runs the
same backend against the lab's real slurmctld."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.core.errors import KilnError
from kiln.roles.pool import HeldByAnother, Membership, SlurmPool
from kiln.roles.pool.slurm import Reply, SlurmError, parse_nodes

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "slurm"


def capture(name: str) -> str:
    return (FIXTURES / name).read_text()


class Controller:
    """scontrol as the lab's slurmctld answered, from the captures of one state."""

    def __init__(self, state: str):
        self.nodes = {n.name: line for n, line in zip(
            parse_nodes(capture(f"scontrol-o-show-node.{state}.stdout")),
            capture(f"scontrol-o-show-node.{state}.stdout").splitlines(), strict=True)}
        self.ran: list[list[str]] = []
        self.down = False

    def __call__(self, argv: list[str]) -> Reply:
        self.ran.append(argv)
        if self.down:
            return Reply(False, "", capture("ctld-down.scontrol-o-show-node.stderr"))
        if argv[:4] == ["scontrol", "-o", "show", "node"]:
            name = argv[4]
            if name not in self.nodes:
                return Reply(False, capture("show-node-nosuch.stdout").replace("nosuch", name),
                             "")
            return Reply(True, self.nodes[name] + "\n", "")
        if argv[:2] == ["scontrol", "update"]:
            return Reply(True, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def updates(self) -> list[list[str]]:
        return [argv for argv in self.ran if argv[1] == "update"]


@pytest.mark.parametrize("state", ["idle", "drained-poweredoff", "drained-down"])
def test_every_node_of_a_real_capture_is_read(state):
    nodes = parse_nodes(capture(f"scontrol-o-show-node.{state}.stdout"))
    assert [n.name for n in nodes] == [f"gpu-00{i}" for i in range(1, 6)]
    # sinfo, from the same slurmctld at the same moment, agrees on who is drained and why.
    sinfo = {}
    for line in capture(f"sinfo-N-h-o-N-T-E.{state}.stdout").splitlines():
        name, state_word, reason = line.split("|", 2)
        sinfo[name] = (state_word.startswith("drain"), "" if reason == "none" else reason)
    assert {n.name: (n.drained, n.reason) for n in nodes} == sinfo


def test_the_reason_is_read_whole_with_who_set_it_and_when():
    nodes = {n.name: n for n in parse_nodes(capture("scontrol-o-show-node.drained-down.stdout"))}
    assert nodes["gpu-002"].state == "IDLE+DRAIN"
    assert nodes["gpu-002"].reason == "kiln: health failed: gpu 3 row-remap failure"
    assert (nodes["gpu-002"].reason_by, nodes["gpu-002"].reason_at) == (
        "root", "2026-12-07T21:52:06")
    assert nodes["gpu-004"].state == "DOWN+NOT_RESPONDING"
    assert nodes["gpu-004"].base_state == "DOWN" and "NOT_RESPONDING" in nodes["gpu-004"].flags
    assert (nodes["gpu-004"].reason, nodes["gpu-004"].reason_by) == ("Not responding", "slurm")
    assert not nodes["gpu-004"].drained and nodes["gpu-001"].reason == ""


def test_lines_that_are_not_nodes_are_not_read():
    text = "srun: warning: something\n" + capture("scontrol-o-show-node.idle.stdout")
    assert len(parse_nodes(text)) == 5


def test_membership_follows_the_drain_flag_and_whose_reason_it_is():
    pool = SlurmPool(Controller("drained-down"), where="slurm on svc-001")
    assert pool.entry("gpu-001").membership == Membership.POOLED
    kilns = pool.entry("gpu-002")
    assert kilns.membership == Membership.DRAINED
    assert kilns.reason == "kiln: health failed: gpu 3 row-remap failure"
    assert pool.entry("gpu-003").membership == Membership.HELD
    # Down but not drained (Slurm's own "Not responding"): not kiln's to judge here.
    assert pool.entry("gpu-004").membership == Membership.POOLED
    assert pool.entry("gpu-004").detail == "DOWN+NOT_RESPONDING"
    assert pool.entry("gpu-009").membership == Membership.UNKNOWN


def test_kiln_resumes_only_what_it_drained():
    controller = Controller("drained-poweredoff")
    pool = SlurmPool(controller, where="slurm on svc-001")
    assert pool.add("gpu-002") is True
    assert controller.updates() == [["scontrol", "update", "NodeName=gpu-002", "State=RESUME"]]
    assert pool.add("gpu-001") is False  # idle: RESUME would be Slurm's "Invalid node state"
    with pytest.raises(HeldByAnother, match=r"gpu-003 is drained by someone else \('hand: "
                                            r"DIMM swap', by root\)"):
        pool.add("gpu-003")
    with pytest.raises(SlurmError, match="Slurm does not know node gpu-009"):
        pool.add("gpu-009")
    assert len(controller.updates()) == 1


def test_kiln_drains_with_its_reason_and_never_over_another():
    controller = Controller("drained-poweredoff")
    pool = SlurmPool(controller, where="slurm on svc-001")
    assert pool.drain("gpu-001", "firmware update: bios -> 1.6.2") is True
    assert controller.updates()[-1] == ["scontrol", "update", "NodeName=gpu-001", "State=DRAIN",
                                        "Reason=kiln: firmware update: bios -> 1.6.2"]
    # The same kiln reason again: nothing to change.
    assert pool.drain("gpu-002", "kiln: health failed: gpu 3 row-remap failure") is False
    # Someone else's drain stays, reason and all.
    assert pool.drain("gpu-003", "health failed") is False
    assert len(controller.updates()) == 1
    with pytest.raises(KilnError, match="gpu-005: draining needs a reason"):
        pool.drain("gpu-005", "  ")


def test_a_node_name_in_slurm_can_differ_from_kilns():
    controller = Controller("idle")
    pool = SlurmPool(controller, names={"rack1-node2": "gpu-002"})
    assert pool.entry("rack1-node2").membership == Membership.POOLED
    pool.drain("rack1-node2", "reprovisioning")
    assert controller.updates() == [["scontrol", "update", "NodeName=gpu-002", "State=DRAIN",
                                     "Reason=kiln: reprovisioning"]]


def test_an_unreachable_slurmctld_is_an_error_naming_the_controller_and_command():
    controller = Controller("idle")
    controller.down = True
    pool = SlurmPool(controller, where="slurm on svc-001")
    with pytest.raises(SlurmError, match=r"slurm on svc-001: `scontrol -o show node gpu-001` "
                                         r"failed: slurm_load_node error: Unable to contact"):
        pool.entry("gpu-001")


def test_scontrol_run_where_kiln_runs_is_named_when_it_is_missing(monkeypatch, tmp_path):
    from kiln.roles.pool.slurm import controller_runner

    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol on this machine's PATH
    pool = SlurmPool(controller_runner(None, "@local"))
    with pytest.raises(SlurmError, match=r"Slurm pool \(scontrol on this machine\): `scontrol "
                                         r"-o show node gpu-001` failed: scontrol: not found"):
        pool.entry("gpu-001")


def test_a_controller_that_is_not_in_the_inventory_is_named():
    from types import SimpleNamespace

    from pyinfra.api import Config, Inventory, State

    from kiln.roles.pool.slurm import controller_runner

    state = State(Inventory(([("gpu-001", {})], {})), Config())
    with pytest.raises(KilnError, match="kiln_pool.controller: 'slurm-head' is not a host of "
                                        "this inventory"):
        controller_runner(SimpleNamespace(state=state), "slurm-head")
