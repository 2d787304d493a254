"""The multi-node burn-in's rounds and per-node results (kiln.roles.burnin.multinode), driven
by a fake fleet: a function from a pair to the run it gives. The isolation's decisions are
kiln's own; only the running of mpirun is replaced (the lab test runs it for real)."""

from __future__ import annotations

import random
import shlex
from pathlib import Path

import pytest

from kiln.core.checks import Status
from kiln.core.manifest import HCATopology, load_manifest
from kiln.roles.burnin.judging import RunOutcome
from kiln.roles.burnin.multinode import (
    BURNIN_NCCL_MULTI,
    MpiNode,
    isolate,
    mpirun_command,
    node_results,
    pair_result,
    summary,
)
from kiln.roles.burnin.operations import compute_hcas, ib_write_bw_command
from kiln.roles.burnin.runs import NcclRun, RunClass

ROOT = Path(__file__).resolve().parents[4]
BURNIN = load_manifest(ROOT / "kiln" / "firmware" / "lab.yaml").burnin
SIZE = BURNIN.two_node_all_reduce.size_bytes
HEALTHY = 385.0


def ok(busbw: float = HEALTHY, wrong: int = 0) -> NcclRun:
    run_class = RunClass.WRONG_RESULTS if wrong else RunClass.OK
    return NcclRun(run_class, busbw, busbw / 1.875, wrong, SIZE, 30.0, "2.21.5", "ran")


def launcher_error(pair) -> NcclRun:
    return NcclRun(RunClass.LAUNCHER, None, None, None, None, 1.0, None,
                   f"mpirun: ssh to {pair[1]} refused", "ssh: connect refused")


class Fleet:
    """Which nodes are bad, and how: each pair's run follows from its two nodes."""

    def __init__(self, slow=(), wrong=(), bad_paths=(), unreachable=(), everything=None):
        self.slow, self.wrong, self.unreachable = set(slow), set(wrong), set(unreachable)
        self.bad_paths = {frozenset(p) for p in bad_paths}
        self.everything = everything
        self.rounds: list[list[tuple[str, str]]] = []

    def run_round(self, number, pairs):
        self.rounds.append(list(pairs))
        return {pair: self.run(pair) for pair in pairs}

    def run(self, pair) -> NcclRun:
        if self.unreachable & set(pair):
            return launcher_error(pair)
        if self.everything is not None:
            return ok(self.everything)
        if self.wrong & set(pair):
            return ok(wrong=4096)
        if self.slow & set(pair) or frozenset(pair) in self.bad_paths:
            return ok(HEALTHY / 2)
        return ok(HEALTHY + random.Random(repr(pair)).uniform(-2, 2))


NODES = [f"gpu-{i:03d}" for i in range(1, 17)]


def run(fleet: Fleet, nodes=NODES, seed: int = 7, topology=None):
    done = isolate(nodes, fleet.run_round, BURNIN, random.Random(seed), topology)
    return done, node_results(done, BURNIN)


def test_the_bad_nodes_are_named_with_their_class_and_every_partner_is_cleared():
    fleet = Fleet(slow={"gpu-004"}, wrong={"gpu-011"})
    done, results = run(fleet)
    assert set(results) == set(NODES)
    bad = {n: r for n, r in results.items() if r.status != Status.OK}
    assert set(bad) == {"gpu-004", "gpu-011"}
    assert bad["gpu-004"].status == Status.CRITICAL
    assert bad["gpu-004"].evidence["class"] == "below-floor"
    assert bad["gpu-011"].evidence["class"] == "wrong-results"
    assert bad["gpu-011"].remediation.action == "rma"
    assert all(r.check == BURNIN_NCCL_MULTI for r in results.values())
    # Each bad node failed with two partners that passed elsewhere: named in the problem.
    for node in ("gpu-004", "gpu-011"):
        failed = [r for r in bad[node].evidence["runs"] if r["verdict"] == "fail"]
        assert len({p for r in failed for p in r["partners"]}) >= 2
    # Every run is in each participant's evidence: round, partners, size, bandwidth, class.
    record = results["gpu-001"].evidence["runs"][0]
    assert record["round"] == 1 and record["size"] == SIZE and record["class"] == "ok"
    assert set(record) >= {"partners", "algbw_gbps", "busbw_gbps", "duration_s", "verdict"}
    assert len(fleet.rounds[0]) == 8  # round 1: every node in one disjoint pair
    assert done.report.rounds <= 3


def test_rounds_pair_each_node_once():
    fleet = Fleet(slow={"gpu-002", "gpu-009"})
    run(fleet)
    for pairs in fleet.rounds:
        nodes = [n for pair in pairs for n in pair]
        assert len(nodes) == len(set(nodes))


def test_a_bad_path_between_two_good_nodes_quarantines_neither():
    fleet = Fleet(bad_paths=[("gpu-001", "gpu-002")])
    # A seed whose first round pairs gpu-001 with gpu-002 (searched, not assumed).
    seed = next(s for s in range(500) if ("gpu-001", "gpu-002") in _first_round(s)
                or ("gpu-002", "gpu-001") in _first_round(s))
    _, results = run(fleet, seed=seed)
    assert {n for n, r in results.items() if r.status == Status.CRITICAL} == set()
    assert results["gpu-001"].status == results["gpu-002"].status == Status.WARN
    assert "fabric suspect: " in results["gpu-001"].problems[0]
    assert results["gpu-003"].status == Status.OK


def _first_round(seed: int) -> list[tuple[str, str]]:
    fleet = Fleet(everything=HEALTHY)
    isolate(NODES, fleet.run_round, BURNIN, random.Random(seed))
    return fleet.rounds[0]


def test_a_node_mpirun_cannot_reach_is_could_not_test_and_its_partners_are_not_blamed():
    _, results = run(Fleet(unreachable={"gpu-006"}))
    assert results["gpu-006"].status == Status.UNKNOWN
    assert results["gpu-006"].remediation.action == "retry"
    assert {n for n, r in results.items() if r.status != Status.OK} == {"gpu-006"}


def test_everything_low_holds_every_node_without_quarantining_any():
    _, results = run(Fleet(everything=200.0))
    assert {r.status for r in results.values()} == {Status.UNKNOWN}
    assert "cluster-wide" in results["gpu-001"].problems[0]
    assert results["gpu-001"].remediation.action == "reconfigure"


def test_a_node_alone_has_no_partner():
    _, results = run(Fleet(), nodes=["gpu-001"])
    assert results["gpu-001"].status == Status.UNKNOWN
    assert results["gpu-001"].problems == ("could not test: no partner to run with",)


def test_the_summary_names_the_bad_node():
    done, _ = run(Fleet(wrong={"gpu-003"}))
    lines = summary(done)
    assert lines[0].startswith(f"burn-in: {done.report.rounds} round(s), 15 good, 1 bad")
    assert "  bad: gpu-003 (wrong-results)" in lines


def test_pair_result_carries_the_class_to_the_judges():
    assert pair_result(("a", "b"), launcher_error(("a", "b"))).outcome == RunOutcome.LAUNCHER
    wrong = pair_result(("a", "b"), ok(wrong=12))
    assert wrong.outcome == RunOutcome.OK and wrong.wrong == 12
    timeout = NcclRun(RunClass.TIMEOUT, None, None, None, None, 60.0, None, "killed")
    assert pair_result(("a", "b"), timeout).outcome == RunOutcome.TIMEOUT


def test_the_mpirun_command_one_rank_per_gpu_on_the_pairs_rails():
    first = MpiNode("gpu-001", "gpu-001", ("mlx5_0", "mlx5_1", "mlx5_10"))
    second = MpiNode("gpu-002", "10.0.0.2", ("mlx5_0", "mlx5_1"))
    argv = shlex.split(mpirun_command(first, second, BURNIN,
                                      ["--mca", "btl_tcp_if_include", "eth0"]))
    assert argv[:3] == ["mpirun", "--allow-run-as-root", "--tag-output"]
    assert argv[argv.index("-np") + 1] == "16" and argv[argv.index("-N") + 1] == "8"
    assert argv[argv.index("--host") + 1] == "gpu-001:8,10.0.0.2:8"
    assert "NCCL_IB_HCA==mlx5_0,mlx5_1" in argv and "NCCL_ALGO=Ring" in argv
    assert "-i /root/.ssh/kiln_burnin" in argv[argv.index("plm_rsh_args") + 1]
    assert "btl_tcp_if_include" in argv
    assert argv[-9:] == ["all_reduce_perf", "-b", str(SIZE), "-e", str(SIZE), "-f", "2",
                         "-g", "1"]


def test_compute_hcas_leave_out_an_ethernet_nic():
    devices = [
        {"name": "mlx5_10", "hca_type": "MT4129", "ports": [{"link_layer": "InfiniBand"}]},
        {"name": "mlx5_2", "hca_type": "MT4129", "ports": [{"link_layer": "InfiniBand"}]},
        {"name": "mlx5_bond_0", "hca_type": "MT4125", "ports": [{"link_layer": "Ethernet"}]},
        {"name": "mlx5_3", "hca_type": "MT4129", "ports": []},
    ]
    topology = HCATopology(count=8, ca_type="MT4129", link_layer="InfiniBand")
    assert compute_hcas(devices, topology) == ["mlx5_2", "mlx5_10"]


def test_ib_write_bw_command_uses_one_port_per_hca_and_the_gpu_beside_it():
    command = ib_write_bw_command("mlx5_3", 3, BURNIN)
    assert "-d mlx5_3 -p 18518" in command and "--use_cuda=3" in command
    assert command.count("ib_write_bw ") == 2 and command.endswith("exit $rc")
    without = ib_write_bw_command("mlx5_3", 3, BURNIN.model_copy(update={"gpudirect": False}))
    assert "--use_cuda" not in without


@pytest.mark.parametrize("seed", range(5))
def test_no_healthy_node_is_ever_marked_bad(seed):
    fleet = Fleet(slow={"gpu-002"}, wrong={"gpu-013"})
    _, results = run(fleet, seed=seed)
    assert {n for n, r in results.items() if r.status != Status.OK} == {"gpu-002", "gpu-013"}


def test_the_commands_pyinfra_runs_take_its_state_and_host():
    # pyinfra passes (state, host) to a FunctionCommand's function only when its first
    # parameters are named so; otherwise it calls it with the arguments alone.
    from inspect import signature

    from kiln.roles.burnin.operations import _join_multi, _run_single

    for function in (_run_single, _join_multi):
        assert list(signature(function).parameters)[:2] == ["state", "host"]


def test_a_pooled_node_whose_last_burn_in_passed_is_left_alone(tmp_path):
    # A rerun of bring-up on a converged cluster must not load a serving node again.
    from kiln.core.checks import CheckResult, Subject
    from kiln.core.ledger import Ledger, NodeState
    from kiln.roles.burnin.operations import CHECKS, proven

    ledger = tmp_path / "kiln.db"
    book = Ledger(ledger)
    book.enroll("gpu-001")
    for state in (NodeState.DEPLOYING, NodeState.DEPLOYED, NodeState.CONFIGURED,
                  NodeState.BURNING_IN):
        book.transition("gpu-001", state, "test")
    passed = [CheckResult(check, Subject("gpu-001"), Status.OK) for check in CHECKS]
    book.record_results(passed)
    assert not proven(ledger, "gpu-001")  # burning in: not pooled yet
    book.transition("gpu-001", NodeState.POOLED, "test")
    assert proven(ledger, "gpu-001")
    book.record_results([CheckResult(CHECKS[-1], Subject("gpu-001"), Status.CRITICAL)])
    assert not proven(ledger, "gpu-001")  # its last multi-node result failed
    book.close()
    assert not proven(ledger, "gpu-002")  # never seen
