"""Judging two-node `all_reduce_perf` runs: a verdict for each pair, and what a round of
pairs says about the fleet as a whole.

    PairResult     what one run gave: its nodes, bus bandwidth (GB/s, out of place, at the
                   SKU's message size), the #wrong count, how the run ended (ok, or the
                   launcher's error, the deadline, a crash) and how long it took
    FleetStats     the fleet-relative yardstick: median busbw and scaled MAD of one round
    Verdict        pass, or a failure of one FailureClass, with the evidence
    RoundJudgement the verdicts of a round, the stats they were judged against, and a
                   cluster-wide finding where the round says the fleet, not its nodes, is wrong

    judge_pair_result(result, floor_gbps, stats=None) -> Verdict
    judge_round(results, floor_gbps, rule, reference=None) -> RoundJudgement

A result is tested for the failure classes in this order; the first that applies names it:

    LAUNCHER       mpirun or srun failed before the tool ran (no slots, ssh refused): not the
                   nodes' fault; isolation retries the nodes once, then says COULD_NOT_TEST
    WRONG_RESULTS  the #wrong column counted wrong values: the data is corrupt, which is the
                   finding even when the run also hung or crashed afterwards
    TIMEOUT        the run outlived its deadline and the whole job was killed
    CRASH          NCCL or CUDA error lines, or a run that ended without a bandwidth to judge
    BELOW_FLOOR    busbw under the SKU's absolute floor (manifest burnin.two_node_all_reduce)
    OUTLIER        busbw under median - k * scaled MAD of the fleet (manifest burnin.outliers)
    COULD_NOT_TEST never a verdict on one run: what isolation reports for a node whose runs
                   failed to launch twice

The fleet-relative rule. MAD is scaled by 1.4826 so that it estimates the standard deviation
of normally distributed results; a result more than `max_deviations` of those below the median
is an outlier (only the low side: a fast pair is not a problem). With fewer than
`min_fleet_size` measured results there is no fleet to compare with and no outlier is called.

"Everything low". A screening round (every node in one random pair) samples the whole fleet.
When more than half of its pairs fail (and there are at least `min_fleet_size` of them), the
round reports a ClusterFinding and the isolation quarantines nobody for it. Why half: with
nodes failing independently at a fraction p, a pair fails with probability 1 - (1 - p)^2,
which passes one half only at p > 29%. A fleet with that many independently broken nodes is
far less likely than one cause that hits every node (an NCCL setting, the fabric, the
launcher), and that needs a person, not hundreds of quarantines. For bandwidth this is the
same as "the median pair is below the floor". That reasoning needs a fleet: in a round of
fewer than MAJORITY_MIN_PAIRS pairs, three bad nodes of eight fail three pairs of four (a new
rack's bad batch), and the witnesses of the pairs that passed sort them out. There, only a
round in which no pair passed is cluster-wide (nobody is left to witness). Follow-up rounds
pair suspects on purpose, so a high failure rate there is expected: they are judged against
the screening round's stats (`reference`) and never read as cluster-wide.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiln.core.manifest import OutlierRule
from kiln.roles.burnin.runs import RunClass

# The fewest pairs whose majority failing reads as cluster-wide (see the module docstring):
# with 8 pairs, a majority takes at least 5 bad nodes of 16 (31%).
MAJORITY_MIN_PAIRS = 8
# MAD -> standard deviation for normally distributed results.
MAD_SCALE = 1.4826
# nccl-tests repeats a 2-node busbw at 8 GiB to within about half a percent run to run. A
# fleet that agrees more tightly than that (a scaled MAD near zero, common with few pairs or
# rounded values) must not make a pair 0.1% under the median an outlier.
MIN_SPREAD_FRACTION = 0.005


class RunOutcome(StrEnum):
    """How the run ended, as the code that ran it saw it."""

    OK = "ok"                      # the tool ran to its end (it may still have failed)
    LAUNCHER = "launcher-error"    # mpirun/srun error (kiln.core.parsing.LauncherError)
    TIMEOUT = "timeout"            # killed at the deadline
    CRASH = "crash"                # "Test NCCL failure", "NCCL WARN ...", a rank died


# One vocabulary for a run's class and a verdict's failure (kiln.roles.burnin.runs): a
# verdict's failure is never OK.
FailureClass = RunClass


@dataclass(frozen=True)
class PairResult:
    """One `all_reduce_perf` run across `nodes` (two; isolation plans pairs only)."""

    nodes: tuple[str, ...]
    busbw_gbps: float | None = None
    wrong: int | None = None
    outcome: RunOutcome = RunOutcome.OK
    duration_s: float | None = None
    detail: str = ""  # the launcher's or NCCL's own words, for the evidence

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes)
        if len(nodes) < 2 or len(set(nodes)) != len(nodes):
            raise ValueError(f"a pair result names two or more distinct nodes, not {nodes!r}")
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "outcome", RunOutcome(self.outcome))


@dataclass(frozen=True)
class FleetStats:
    """The yardstick of the fleet-relative rule: median and scaled MAD of `count` results."""

    median_gbps: float
    mad_gbps: float  # scaled: MAD * 1.4826
    count: int
    max_deviations: float

    @property
    def threshold_gbps(self) -> float:
        spread = max(self.mad_gbps, MIN_SPREAD_FRACTION * self.median_gbps)
        return self.median_gbps - self.max_deviations * spread

    @classmethod
    def of(cls, values: Iterable[float], rule: OutlierRule) -> FleetStats | None:
        """The stats of `values`, or None when there are fewer than rule.min_fleet_size."""
        if rule.method != "median-mad":
            raise ValueError(f"outlier method {rule.method!r} is not implemented")
        values = list(values)
        if len(values) < rule.min_fleet_size:
            return None
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        return cls(median, MAD_SCALE * mad, len(values), rule.max_deviations)


@dataclass(frozen=True)
class Verdict:
    result: PairResult
    failure: FailureClass | None  # None: passed
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.failure is None

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.result.nodes


@dataclass(frozen=True)
class ClusterFinding:
    """A screening round whose failures are the fleet's, not its nodes'."""

    failure: FailureClass  # the most common class among the failures
    failed: int
    judged: int
    counts: Mapping[FailureClass, int]
    median_gbps: float | None
    floor_gbps: float

    @property
    def message(self) -> str:
        classes = ", ".join(f"{cls} {n}" for cls, n in self.counts.items())
        median = (f"median busbw {self.median_gbps:.1f} GB/s against a floor of "
                  f"{self.floor_gbps:g}" if self.median_gbps is not None
                  else "no bandwidth measured")
        everything_low = " (everything low)" if self.failure in (
            FailureClass.BELOW_FLOOR, FailureClass.OUTLIER) else ""
        return (f"{self.failed} of {self.judged} pairs failed ({classes}); {median}: a "
                f"cluster-wide problem{everything_low} (an NCCL or fabric setting, the "
                "launcher), not one node in every pair; no node is quarantined for it")


@dataclass(frozen=True)
class RoundJudgement:
    verdicts: tuple[Verdict, ...]
    floor_gbps: float
    stats: FleetStats | None  # what the outlier rule used: this round's or the reference
    screening: bool           # judged as a screening round (its own stats, cluster-wide check)
    cluster_wide: ClusterFinding | None = None

    @property
    def failures(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.passed)


def _measured(result: PairResult) -> bool:
    """Whether a result's busbw belongs in the fleet statistics: a run that ended normally
    with correct data. A low one is kept: the median and MAD are what keep it from moving
    the yardstick."""
    return (result.outcome == RunOutcome.OK and result.busbw_gbps is not None
            and not result.wrong)


def judge_pair_result(result: PairResult, floor_gbps: float,
                      stats: FleetStats | None = None) -> Verdict:
    """The verdict on one run: the first failure class that applies, or a pass."""
    evidence: dict[str, Any] = {
        "nodes": list(result.nodes),
        "outcome": str(result.outcome),
        "busbw_gbps": result.busbw_gbps,
        "floor_gbps": floor_gbps,
    }
    if result.wrong is not None:
        evidence["wrong"] = result.wrong
    if result.duration_s is not None:
        evidence["duration_s"] = result.duration_s
    if result.detail:
        evidence["detail"] = result.detail
    if stats is not None:
        evidence.update(median_gbps=round(stats.median_gbps, 3),
                        mad_gbps=round(stats.mad_gbps, 3),
                        outlier_below_gbps=round(stats.threshold_gbps, 3))

    def verdict(failure: FailureClass | None) -> Verdict:
        return Verdict(result, failure, evidence)

    if result.outcome == RunOutcome.LAUNCHER:
        return verdict(FailureClass.LAUNCHER)
    if result.wrong:
        return verdict(FailureClass.WRONG_RESULTS)
    if result.outcome == RunOutcome.TIMEOUT:
        return verdict(FailureClass.TIMEOUT)
    if result.outcome == RunOutcome.CRASH:
        return verdict(FailureClass.CRASH)
    if result.busbw_gbps is None:
        evidence["detail"] = (result.detail + "; " if result.detail else "") + (
            "the run ended without a bus bandwidth at the judged size")
        return verdict(FailureClass.CRASH)
    if result.busbw_gbps < floor_gbps:
        return verdict(FailureClass.BELOW_FLOOR)
    if stats is not None and result.busbw_gbps < stats.threshold_gbps:
        return verdict(FailureClass.OUTLIER)
    return verdict(None)


def _cluster_wide(failed: int, judged: int, rule: OutlierRule) -> bool:
    if judged < rule.min_fleet_size:
        return False
    return failed == judged or (judged >= MAJORITY_MIN_PAIRS and 2 * failed > judged)


def judge_round(results: Iterable[PairResult], floor_gbps: float, rule: OutlierRule,
                reference: FleetStats | None = None, *,
                screening: bool | None = None) -> RoundJudgement:
    """Judge one round. Without `reference` it is a screening round: the outlier rule uses
    this round's own results, and a majority of failures is a ClusterFinding. With it (the
    screening round's stats, `Isolation.reference`) it is a follow-up round. `screening`
    overrides that: a follow-up round of a fleet too small for stats passes screening=False
    and no reference."""
    results = list(results)
    if screening is None:
        screening = reference is None
    stats = (FleetStats.of((r.busbw_gbps for r in results if _measured(r)), rule)  # type: ignore[misc]
             if screening else reference)
    verdicts = tuple(judge_pair_result(r, floor_gbps, stats) for r in results)
    finding = None
    failed = [v for v in verdicts if not v.passed]
    if screening and _cluster_wide(len(failed), len(verdicts), rule):
        counts = Counter(v.failure for v in failed)
        order = list(FailureClass)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], order.index(kv[0])))
        measured = [r.busbw_gbps for r in results if _measured(r)]
        finding = ClusterFinding(
            failure=ranked[0][0],  # type: ignore[arg-type]
            failed=len(failed),
            judged=len(verdicts),
            counts=dict(ranked),  # type: ignore[arg-type]
            median_gbps=statistics.median(measured) if measured else None,  # type: ignore[type-var]
            floor_gbps=floor_gbps,
        )
    return RoundJudgement(verdicts, floor_gbps, stats, screening, finding)
