"""The multi-node burn-in: two-node `all_reduce_perf` under `mpirun`, round after round, until
the isolation (kiln.roles.burnin.isolation) has decided every node; then one result per node.

    mpirun_command(first, second, burnin, options) -> the shell command the pair's first
                                                      node runs
    pair_result(nodes, run) -> PairResult             a classified run, as the judges read it
    isolate(nodes, run_round, burnin, rng, topology)  the rounds -> Burnin (report + runs)
    node_results(burnin_run, burnin) -> {node: CheckResult}   "burnin-nccl-multi"

Running a round (SSH to each pair's first node, all pairs at once) is the operation's job
(kiln.roles.burnin.operations); everything here is pure, so the decisions are the ones the
benchmark (bench/burnin_isolation.py) measures, and unit tests drive them with a fake fleet.

One process per GPU (`-np 16 -N 8 … -g 1`): how NCCL jobs run on HGX nodes, and what makes
every GPU and every rail carry traffic. NCCL_ALGO=Ring: the tree and NVLS algorithms hide a
slow rail behind the others; the ring's busbw is what the SKU's two-node floor is set for.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.core.checks import Action, CheckResult, Remediation, Status, Subject
from kiln.core.manifest import Burnin
from kiln.roles.burnin.access import NODE_KEY
from kiln.roles.burnin.isolation import Isolation, IsolationReport, NodeFinding
from kiln.roles.burnin.judging import FailureClass, PairResult, RunOutcome
from kiln.roles.burnin.runs import NcclRun, RunClass

BURNIN_NCCL_MULTI = "burnin-nccl-multi"
GPUS_PER_NODE = 8

# mpirun reaches the partner over SSH with the burn-in key. Host keys are not pinned: nodes
# are reimaged routinely (a new host key each time), and the key only opens nodes that hold
# it already.
RSH_ARGS = (f"-i {NODE_KEY} -o BatchMode=yes -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10")

_OUTCOME = {
    RunClass.LAUNCHER: RunOutcome.LAUNCHER,
    RunClass.TIMEOUT: RunOutcome.TIMEOUT,
    RunClass.CRASH: RunOutcome.CRASH,
    # Output kiln could not read says nothing good about the pair: a failed run, with the
    # reason in its detail, so the pair is tested again with other partners.
    RunClass.COULD_NOT_TEST: RunOutcome.CRASH,
}


@dataclass(frozen=True)
class MpiNode:
    """A participant as mpirun names it, and the HCAs its ranks use."""

    name: str
    address: str  # what --host says (the node's name where DNS resolves it)
    hcas: tuple[str, ...] = ()


def mpirun_command(first: MpiNode, second: MpiNode, burnin: Burnin,
                   options: Sequence[str] = ()) -> str:
    """The pair's job, run on `first`: 8 ranks per node, one per GPU, at the SKU's size."""
    size = burnin.two_node_all_reduce.size_bytes
    hcas = sorted(set(first.hcas) & set(second.hcas)) or sorted(first.hcas)
    env = ["-x", "NCCL_ALGO=Ring"]
    if hcas:
        # '=' makes NCCL match the names exactly (mlx5_1 must not also select mlx5_10).
        env += ["-x", "NCCL_IB_HCA==" + ",".join(hcas)]
    argv = [
        "mpirun", "--allow-run-as-root", "--tag-output",
        "-np", str(2 * GPUS_PER_NODE), "-N", str(GPUS_PER_NODE),
        "--host", f"{first.address}:{GPUS_PER_NODE},{second.address}:{GPUS_PER_NODE}",
        "--mca", "plm_rsh_args", RSH_ARGS, *options, *env,
        "all_reduce_perf", "-b", str(size), "-e", str(size), "-f", "2", "-g", "1",
    ]
    return " ".join(shlex.quote(a) for a in argv)


def pair_result(nodes: tuple[str, str], run: NcclRun) -> PairResult:
    """A classified run as the pair judges read it (floors and outliers are theirs)."""
    outcome = _OUTCOME.get(run.run_class, RunOutcome.OK)
    return PairResult(nodes, busbw_gbps=run.busbw_gbps, wrong=run.wrong, outcome=outcome,
                      duration_s=run.duration_s,
                      detail=run.line or ("" if run.run_class == RunClass.OK else run.message))


@dataclass(frozen=True)
class PairRun:
    """One pair's run in one round, for the ledger and the report."""

    round: int
    nodes: tuple[str, str]
    run: NcclRun
    passed: bool
    failure: FailureClass | None

    def record(self, node: str) -> dict[str, Any]:
        return {"round": self.round, "partners": [n for n in self.nodes if n != node],
                "size": self.run.size, "algbw_gbps": self.run.algbw_gbps,
                "busbw_gbps": self.run.busbw_gbps, "duration_s": round(self.run.duration_s, 3),
                "verdict": "pass" if self.passed else "fail",
                "class": str(self.failure) if self.failure else "ok",
                **({"detail": self.run.message} if not self.passed else {})}


@dataclass
class MultiNodeBurnin:
    report: IsolationReport
    runs: list[PairRun] = field(default_factory=list)

    def runs_of(self, node: str) -> list[PairRun]:
        return [r for r in self.runs if node in r.nodes]


# Runs one round's pairs (all at once) and returns each pair's classified run.
RoundRunner = Callable[[int, list[tuple[str, str]]], Mapping[tuple[str, str], NcclRun]]


def isolate(nodes: Iterable[str], run_round: RoundRunner, burnin: Burnin,
            rng: random.Random, topology: Mapping[str, str] | None = None,
            log: Callable[[str], None] = lambda line: None) -> MultiNodeBurnin:
    """Every round the isolation plans, run and judged, until each node is decided."""
    isolation = Isolation(nodes, topology=topology)
    out = MultiNodeBurnin(isolation.report())
    floor = burnin.two_node_all_reduce.min_busbw_gbps
    while not isolation.done:
        pairs = isolation.plan_round(rng)
        if not pairs:
            break
        number = isolation.rounds + 1
        log(f"burn-in round {number}: {len(pairs)} pair(s): "
            + ", ".join(f"{a}+{b}" for a, b in pairs))
        runs = run_round(number, pairs)
        results = [pair_result(pair, runs[pair]) for pair in pairs]
        judgement = isolation.judge(results, floor, burnin.outliers)
        for pair, verdict in zip(pairs, judgement.verdicts, strict=True):
            out.runs.append(PairRun(number, pair, runs[pair], verdict.passed, verdict.failure))
        isolation.record_round(judgement)
    out.report = isolation.report()
    return out


_REMEDY = {
    FailureClass.WRONG_RESULTS: (Action.RMA, "a GPU computes wrong sums under load: run "
                                 "dcgmi diag -r 3 to name it, then replace it"),
    FailureClass.BELOW_FLOOR: (Action.CHECK_CABLE, "the node's bandwidth to good partners is "
                               "under the floor: read its rails (ibstat rate, ib_write_bw per "
                               "HCA) and NVLink (nvidia-smi nvlink -s); reseat or replace "
                               "what is slow"),
    FailureClass.OUTLIER: (Action.CHECK_CABLE, "far below the fleet with good partners: read "
                           "its rails and NVLink as for a run under the floor"),
    FailureClass.CRASH: (Action.REBOOT, "NCCL or CUDA failed with good partners: read the "
                         "node's dmesg for Xids, reboot, run burn-in again"),
    FailureClass.TIMEOUT: (Action.REBOOT, "the job hung with good partners: read dmesg for "
                           "Xids, reboot, run burn-in again"),
}


def _finding_result(finding: NodeFinding, runs: list[dict[str, Any]], what: str) -> CheckResult:
    action, text = _REMEDY.get(finding.failure, (Action.RETRY, "run burn-in again"))
    status = Status.UNKNOWN if finding.failure in (FailureClass.LAUNCHER,
                                                   FailureClass.COULD_NOT_TEST) else Status.CRITICAL
    if status == Status.UNKNOWN:
        action, text = Action.RETRY, ("mpirun could not start the job on this node twice: "
                                      "check its SSH (the burn-in key), slots and OpenMPI, "
                                      "then run burn-in again")
    failed = [r for r in runs if r["verdict"] == "fail"]
    partners = sorted({p for r in failed for p in r["partners"]})
    problem = (f"{what}: {finding.failure} with {len(partners)} partner(s) that passed with "
               f"others ({', '.join(partners)})")
    return CheckResult(BURNIN_NCCL_MULTI, Subject(finding.node), status, (problem,),
                       {"verdict": str(finding.state), "class": str(finding.failure),
                        "leaf": finding.leaf, "runs": runs}, Remediation(action, text))


def node_results(done: MultiNodeBurnin, burnin: Burnin) -> dict[str, CheckResult]:
    """One "burnin-nccl-multi" result per node: OK (passed or cleared; WARN where the node
    is one end of a fabric suspect), CRITICAL (bad or flaky, with its class), UNKNOWN (could
    not test, undecided, or a cluster-wide finding that holds every node)."""
    report = done.report
    floor = burnin.two_node_all_reduce.min_busbw_gbps
    results: dict[str, CheckResult] = {}

    def runs(node: str) -> list[dict[str, Any]]:
        return [r.record(node) for r in done.runs_of(node)]

    suspects: dict[str, list[str]] = {}
    for suspect in report.fabric_suspects:
        a, b = suspect.nodes[0], suspect.nodes[1]
        leaves = " and ".join(f"{n} (leaf {leaf or 'unknown'})"
                              for n, leaf in zip(suspect.nodes, suspect.leaves, strict=True))
        line = (f"fabric suspect: {a}+{b} failed ({suspect.failure}, round {suspect.round}) "
                f"while both passed with other partners: the path between {leaves}")
        for node in (a, b):
            suspects.setdefault(node, []).append(line)
    for node in report.good:
        measured = [r["busbw_gbps"] for r in runs(node) if r["verdict"] == "pass"
                    and r["busbw_gbps"] is not None]
        evidence = {"verdict": "good", "floor_gbps": floor, "runs": runs(node),
                    "size": burnin.two_node_all_reduce.size_bytes,
                    "min_busbw_gbps": min(measured) if measured else None}
        if node in suspects:
            results[node] = CheckResult(
                BURNIN_NCCL_MULTI, Subject(node), Status.WARN, tuple(suspects[node]), evidence,
                Remediation(Action.CHECK_SWITCH_PORT, "no node is quarantined for it: check "
                            "the links between these two leaves (UFM port counters)"))
        else:
            results[node] = CheckResult(BURNIN_NCCL_MULTI, Subject(node), Status.OK, (),
                                        evidence)
    for finding in report.bad:
        results[finding.node] = _finding_result(finding, runs(finding.node), "bad node")
    for finding in report.flaky:
        results[finding.node] = _finding_result(
            finding, runs(finding.node), "flaky: passed and failed with good partners")
    for finding in report.could_not_test:
        results[finding.node] = _finding_result(finding, runs(finding.node), "could not test")
    for node in (*report.unresolved, *report.untested):
        results[node] = CheckResult(
            BURNIN_NCCL_MULTI, Subject(node), Status.UNKNOWN,
            ("could not test: the isolation ended before this node was decided"
             if runs(node) else "could not test: no partner to run with",),
            {"verdict": "undecided", "runs": runs(node)},
            Remediation(Action.RETRY, "run burn-in again with more nodes (a node needs a "
                        "partner that passes)"))
    if report.cluster_wide is not None:
        finding = report.cluster_wide
        for node in list(results):
            if results[node].status != Status.CRITICAL:
                results[node] = CheckResult(
                    BURNIN_NCCL_MULTI, Subject(node), Status.UNKNOWN,
                    (f"could not test: {finding.message}",),
                    {"verdict": "cluster-wide", "runs": runs(node)},
                    Remediation(Action.RECONFIGURE, "fix the cluster-wide cause (NCCL "
                                "settings, the fabric, the launcher), then run burn-in again"))
    return results


def summary(done: MultiNodeBurnin) -> list[str]:
    """What the run prints once, for the whole fleet."""
    report = done.report
    lines = [f"burn-in: {report.rounds} round(s), {len(report.good)} good, "
             f"{len(report.bad)} bad, {len(report.flaky)} flaky, "
             f"{len(report.could_not_test)} could not test, "
             f"{len(report.fabric_suspects)} fabric suspect(s)"]
    lines += [f"  bad: {f.node} ({f.failure})" for f in report.bad]
    lines += [f"  flaky: {f.node} ({f.failure})" for f in report.flaky]
    lines += [f"  fabric suspect: {'+'.join(s.nodes)} ({s.failure}, round {s.round})"
              for s in report.fabric_suspects]
    if report.cluster_wide is not None:
        lines.append(f"  cluster-wide: {report.cluster_wide.message}")
    return lines

