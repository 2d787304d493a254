"""Judging two-node all_reduce_perf runs (kiln.roles.burnin.judging): the failure classes in
their order of precedence, the SKU floor against the fleet-relative outlier rule, and what a
round of pairs says about the fleet as a whole."""

from __future__ import annotations

import pytest

from kiln.core.manifest import OutlierRule
from kiln.roles.burnin.judging import (
    MAD_SCALE,
    MIN_SPREAD_FRACTION,
    FailureClass,
    FleetStats,
    PairResult,
    RunOutcome,
    judge_pair_result,
    judge_round,
)

FLOOR = 340.0
RULE = OutlierRule(max_deviations=3.5, min_fleet_size=5)
NODES = ("gpu-001", "gpu-002")


def result(busbw=380.0, wrong=0, outcome=RunOutcome.OK, nodes=NODES, **kw) -> PairResult:
    return PairResult(nodes, busbw_gbps=busbw, wrong=wrong, outcome=outcome, **kw)


def stats(median=380.0, mad=2.0) -> FleetStats:
    return FleetStats(median, mad, 20, RULE.max_deviations)  # threshold 373


def pairs(values, first=0) -> list[PairResult]:
    """One result per value, each on its own pair of nodes."""
    return [PairResult((f"n{2 * i:03d}", f"n{2 * i + 1:03d}"), busbw_gbps=v)
            for i, v in enumerate(values, start=first)]


# ---- one run ---------------------------------------------------------------------------------

@pytest.mark.parametrize("run, expected", [
    # Each row also meets every class below it: the first in order must name it.
    (result(busbw=None, wrong=7, outcome=RunOutcome.LAUNCHER), FailureClass.LAUNCHER),
    (result(busbw=100.0, wrong=7, outcome=RunOutcome.TIMEOUT), FailureClass.WRONG_RESULTS),
    (result(busbw=100.0, outcome=RunOutcome.TIMEOUT), FailureClass.TIMEOUT),
    (result(busbw=100.0, outcome=RunOutcome.CRASH), FailureClass.CRASH),
    (result(busbw=None), FailureClass.CRASH),
    (result(busbw=300.0), FailureClass.BELOW_FLOOR),
    (result(busbw=360.0), FailureClass.OUTLIER),
    (result(busbw=376.0), None),
])
def test_failure_classes_in_order_of_precedence(run, expected):
    verdict = judge_pair_result(run, FLOOR, stats())
    assert verdict.failure == expected
    assert verdict.passed is (expected is None)
    assert verdict.nodes == NODES


def test_a_run_without_a_bandwidth_is_a_crash_and_says_why():
    verdict = judge_pair_result(result(busbw=None, detail="rank 3 exited"), FLOOR)
    assert verdict.failure == FailureClass.CRASH
    assert verdict.evidence["detail"].startswith("rank 3 exited; ")
    assert "without a bus bandwidth" in verdict.evidence["detail"]


def test_the_floor_holds_without_a_fleet_and_the_outlier_rule_needs_one():
    assert judge_pair_result(result(busbw=339.9), FLOOR).failure == FailureClass.BELOW_FLOOR
    # Far under the fleet but above the floor: only the fleet-relative rule can call it.
    assert judge_pair_result(result(busbw=341.0), FLOOR).passed
    assert judge_pair_result(result(busbw=341.0), FLOOR, stats()).failure == \
        FailureClass.OUTLIER


def test_a_fast_pair_is_never_an_outlier():
    assert judge_pair_result(result(busbw=450.0), FLOOR, stats()).passed


def test_the_evidence_carries_the_yardstick():
    verdict = judge_pair_result(result(busbw=360.0, duration_s=61.5), FLOOR, stats())
    assert verdict.evidence == {
        "nodes": list(NODES), "outcome": "ok", "busbw_gbps": 360.0, "floor_gbps": FLOOR,
        "wrong": 0, "duration_s": 61.5, "median_gbps": 380.0, "mad_gbps": 2.0,
        "outlier_below_gbps": 373.0}


@pytest.mark.parametrize("nodes", [("gpu-001",), ("gpu-001", "gpu-001")])
def test_a_pair_result_names_two_distinct_nodes(nodes):
    with pytest.raises(ValueError, match="two or more distinct nodes"):
        PairResult(nodes, busbw_gbps=380.0)


# ---- the fleet-relative yardstick ------------------------------------------------------------

def test_fleet_stats_are_the_median_and_the_scaled_mad():
    fleet = FleetStats.of([370.0, 374.0, 378.0, 380.0, 390.0], RULE)
    assert fleet.median_gbps == 378.0
    assert fleet.mad_gbps == pytest.approx(MAD_SCALE * 4.0)
    assert fleet.count == 5
    assert fleet.threshold_gbps == pytest.approx(378.0 - 3.5 * MAD_SCALE * 4.0)


def test_a_fleet_that_agrees_too_well_keeps_a_minimum_spread():
    # Nine identical results: MAD 0. Without MIN_SPREAD_FRACTION a pair 0.1% slower would
    # be an outlier; with it the threshold is 3.5 half-percents under the median.
    fleet = FleetStats.of([380.0] * 9, RULE)
    assert fleet.mad_gbps == 0.0
    assert fleet.threshold_gbps == pytest.approx(380.0 * (1 - 3.5 * MIN_SPREAD_FRACTION))
    assert judge_pair_result(result(busbw=379.6), FLOOR, fleet).passed
    assert judge_pair_result(result(busbw=373.0), FLOOR, fleet).failure == \
        FailureClass.OUTLIER


def test_too_small_a_fleet_has_no_stats_and_calls_no_outlier():
    assert FleetStats.of([380.0, 381.0, 379.0, 345.0], RULE) is None
    judgement = judge_round(pairs([380.0, 381.0, 379.0, 345.0]), FLOOR, RULE)
    assert judgement.stats is None
    assert all(v.passed for v in judgement.verdicts)


def test_the_stats_leave_out_runs_that_did_not_measure():
    runs = pairs([380.0, 381.0, 379.0, 382.0, 378.0]) + [
        PairResult(("x1", "x2"), busbw_gbps=10.0, wrong=3),
        PairResult(("x3", "x4"), busbw_gbps=10.0, outcome=RunOutcome.CRASH),
        PairResult(("x5", "x6"), outcome=RunOutcome.TIMEOUT)]
    judgement = judge_round(runs, FLOOR, RULE)
    assert judgement.stats is not None
    assert judgement.stats.count == 5
    assert judgement.stats.median_gbps == 380.0


# ---- a round ---------------------------------------------------------------------------------

def test_a_screening_round_judges_outliers_against_itself():
    judgement = judge_round(pairs([380.0, 381.0, 379.0, 382.0, 378.0, 350.0]), FLOOR, RULE)
    assert judgement.screening
    assert [v.failure for v in judgement.verdicts] == [None] * 5 + [FailureClass.OUTLIER]
    assert judgement.cluster_wide is None
    assert [v.nodes for v in judgement.failures] == [("n010", "n011")]


def test_more_than_half_of_a_screening_round_failing_is_cluster_wide():
    # Everything low: 6 of 10 pairs under the floor. No outlier: the median is low too.
    judgement = judge_round(pairs([300.0] * 6 + [345.0] * 4), FLOOR, RULE)
    finding = judgement.cluster_wide
    assert finding is not None
    assert (finding.failure, finding.failed, finding.judged) == (FailureClass.BELOW_FLOOR, 6, 10)
    assert dict(finding.counts) == {FailureClass.BELOW_FLOOR: 6}
    assert finding.median_gbps == 300.0
    assert "6 of 10 pairs failed" in finding.message
    assert "everything low" in finding.message
    assert "no node is quarantined" in finding.message


def test_exactly_half_failing_is_not_cluster_wide():
    judgement = judge_round(pairs([300.0] * 5 + [380.0] * 5), FLOOR, RULE)
    assert len(judgement.failures) == 5
    assert judgement.cluster_wide is None


def test_a_cluster_wide_finding_names_its_most_common_class():
    runs = ([PairResult((f"c{i}", f"d{i}"), outcome=RunOutcome.CRASH) for i in range(4)]
            + [PairResult((f"t{i}", f"u{i}"), outcome=RunOutcome.TIMEOUT) for i in range(2)]
            + pairs([380.0] * 4))
    finding = judge_round(runs, FLOOR, RULE).cluster_wide
    assert finding is not None
    assert finding.failure == FailureClass.CRASH
    assert list(finding.counts) == [FailureClass.CRASH, FailureClass.TIMEOUT]
    assert "everything low" not in finding.message


def test_a_round_too_small_for_a_fleet_is_never_cluster_wide():
    judgement = judge_round(pairs([300.0] * 4), FLOOR, RULE)
    assert len(judgement.failures) == 4
    assert judgement.cluster_wide is None


def test_a_follow_up_round_is_judged_against_the_reference_and_never_cluster_wide():
    reference = judge_round(pairs([378.0, 380.0, 382.0, 379.0, 381.0, 380.0]), FLOOR,
                            RULE).stats
    assert reference is not None and reference.threshold_gbps > 370.0
    # Suspects paired on purpose: most fail. Alone these values would make their own median
    # low and pass 371; against the screening round's fleet 371 is an outlier.
    follow_up = judge_round(pairs([300.0, 300.0, 300.0, 371.0, 380.0]), FLOOR, RULE,
                            reference)
    assert not follow_up.screening
    assert follow_up.stats is reference
    assert follow_up.cluster_wide is None
    assert [v.failure for v in follow_up.verdicts] == [
        FailureClass.BELOW_FLOOR] * 3 + [FailureClass.OUTLIER, None]
    alone = judge_round(pairs([300.0, 300.0, 300.0, 300.0, 300.0, 300.0, 300.0, 371.0, 380.0]),
                        FLOOR, RULE)
    assert alone.cluster_wide is not None


def test_in_a_small_fleet_only_a_round_where_no_pair_passed_is_cluster_wide():
    # 8 nodes, 3 of them bad in different pairs: 3 of 4 pairs fail. The pair that passed
    # gives the witnesses; the isolation, not a cluster-wide finding, decides.
    small = OutlierRule(max_deviations=3.5, min_fleet_size=3)
    assert judge_round(pairs([190.0, 190.0, 380.0, 190.0]), FLOOR, small).cluster_wide is None
    nobody = judge_round(pairs([190.0] * 4), FLOOR, small).cluster_wide
    assert nobody is not None and (nobody.failed, nobody.judged) == (4, 4)
    # From 8 pairs on, a majority is enough.
    assert judge_round(pairs([190.0] * 5 + [380.0] * 3), FLOOR, small).cluster_wide is not None
    assert judge_round(pairs([190.0] * 4 + [380.0] * 3), FLOOR, small).cluster_wide is None


def test_a_follow_up_round_without_a_reference_calls_no_outlier():
    judgement = judge_round(pairs([380.0] * 5 + [350.0] * 5), FLOOR, RULE, screening=False)
    assert judgement.stats is None
    assert judgement.cluster_wide is None
    assert not judgement.failures
