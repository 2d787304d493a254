"""Finding the bad node among many (kiln.roles.burnin.isolation), driven by a deterministic
fake fleet: a function from a pair to the PairResult its run gives, and a seeded rng. The
tests pick their bad nodes, paths and flakes from the pairs the isolation plans, so each
scenario is the one named, whatever the seed."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from kiln.core.manifest import OutlierRule
from kiln.roles.burnin.isolation import (
    FINAL,
    GOOD,
    TRANSITIONS,
    IllegalTransition,
    Isolation,
    IsolationReport,
    NodeState,
    transition,
)
from kiln.roles.burnin.judging import FailureClass, PairResult, RunOutcome, judge_round

S = NodeState
FLOOR = 340.0
RULE = OutlierRule(max_deviations=3.5, min_fleet_size=5)


def names(count: int) -> list[str]:
    return [f"gpu-{i:03d}" for i in range(1, count + 1)]


@dataclass
class FakeFleet:
    """What a run of two nodes gives. Healthy: 378-382 GB/s (a spread the outlier rule sees,
    nothing it calls). A bad node halves it (below the floor) in every run; a bad path
    fails its pair; a flaky node fails (a crash) in the runs its list says, one entry per run
    it is in, and is healthy once the list is spent; a launcher node's runs never start."""

    bad: set[str] = field(default_factory=set)
    bad_paths: set[frozenset[str]] = field(default_factory=set)
    flaky: dict[str, list[bool]] = field(default_factory=dict)
    launcher: dict[str, int] = field(default_factory=dict)  # node -> launches that fail
    busbw: float | None = None  # every run at this busbw: a cluster-wide problem
    runs: Counter[str] = field(default_factory=Counter)

    def _flakes(self, node: str) -> bool:
        pending = self.flaky.get(node)
        return bool(pending) and pending.pop(0)

    def __call__(self, a: str, b: str) -> PairResult:
        self.runs.update((a, b))
        if any(self.launcher.get(n, 0) for n in (a, b)):
            for n in (a, b):
                if self.launcher.get(n, 0):
                    self.launcher[n] -= 1
            return PairResult((a, b), outcome=RunOutcome.LAUNCHER, detail="ssh refused")
        flaked = [self._flakes(n) for n in (a, b)]
        if any(flaked):
            return PairResult((a, b), outcome=RunOutcome.CRASH, detail="NCCL WARN")
        if self.busbw is not None:
            return PairResult((a, b), busbw_gbps=self.busbw, wrong=0)
        healthy = 378.0 + (int(a[-3:]) + int(b[-3:])) % 5
        if a in self.bad or b in self.bad:
            return PairResult((a, b), busbw_gbps=healthy / 2, wrong=0)
        if frozenset((a, b)) in self.bad_paths:
            return PairResult((a, b), busbw_gbps=250.0, wrong=0)
        return PairResult((a, b), busbw_gbps=healthy, wrong=0)


def record(iso: Isolation, fleet: FakeFleet, pairs: list[tuple[str, str]]) -> None:
    iso.record_round(iso.judge([fleet(a, b) for a, b in pairs], FLOOR, RULE))


def step(iso: Isolation, fleet: FakeFleet, rng: random.Random) -> list[tuple[str, str]]:
    pairs = iso.plan_round(rng)
    record(iso, fleet, pairs)
    return pairs


def finish(iso: Isolation, fleet: FakeFleet, rng: random.Random) -> IsolationReport:
    while not iso.done:
        step(iso, fleet, rng)
    return iso.report()


def partner_in(pairs: list[tuple[str, str]], node: str) -> str:
    return next(b if a == node else a for a, b in pairs if node in (a, b))


# ---- the scenarios ---------------------------------------------------------------------------

def test_one_bad_node_among_16_is_quarantined_and_its_partner_cleared_in_two_rounds():
    iso, rng = Isolation(names(16)), random.Random(1)
    first = iso.plan_round(rng)
    bad, partner = first[0]
    fleet = FakeFleet(bad={bad})
    record(iso, fleet, first)
    assert iso.state(bad) == iso.state(partner) == S.SUSPECT
    assert [n for n, s in iso.states.items() if s == S.PASSED] == sorted(
        set(names(16)) - {bad, partner})

    second = step(iso, fleet, rng)
    # Each suspect with its own witness, a node that passed; never each other again.
    assert len(second) == 2
    for suspect in (bad, partner):
        witness = partner_in(second, suspect)
        assert witness not in (bad, partner)
    assert iso.done
    report = iso.report()
    assert report.rounds == 2
    assert report.tested_per_round == (16, 4)
    assert report.quarantined == (bad,)
    assert [(f.node, f.state, f.failure) for f in report.bad] == [
        (bad, S.BAD, FailureClass.BELOW_FLOOR)]
    assert iso.state(partner) == S.CLEARED
    assert report.good == tuple(sorted(set(names(16)) - {bad}))
    assert report.fabric_suspects == report.flaky == report.could_not_test == ()
    assert report.unresolved == report.untested == ()
    assert report.cluster_wide is None


def test_two_bad_nodes_paired_together_take_a_third_round():
    iso, rng = Isolation(names(16)), random.Random(2)
    first = iso.plan_round(rng)
    fleet = FakeFleet(bad=set(first[0]))
    record(iso, fleet, first)
    step(iso, fleet, rng)
    # One witness each so far: their round-1 partner never passed.
    assert {iso.state(n) for n in first[0]} == {S.SUSPECT}
    assert not iso.done
    report = finish(iso, fleet, rng)
    assert report.rounds == 3
    assert report.tested_per_round == (16, 4, 4)
    assert report.quarantined == tuple(sorted(first[0]))
    for finding in report.bad:
        witnessed = [e for e in finding.evidence if e["witness"]]
        assert len(witnessed) == 2
        assert len({e["partners"][0] for e in witnessed}) == 2
    assert len(report.good) == 14


def test_a_bad_path_between_two_good_nodes_is_a_fabric_suspect_and_quarantines_nobody():
    iso, rng = Isolation(names(16)), random.Random(3)
    first = iso.plan_round(rng)
    fleet = FakeFleet(bad_paths={frozenset(first[0])})
    record(iso, fleet, first)
    report = finish(iso, fleet, rng)
    assert report.rounds == 2
    assert report.quarantined == ()
    assert {iso.state(n) for n in first[0]} == {S.CLEARED}
    [suspect] = report.fabric_suspects
    assert suspect.nodes == first[0]
    assert (suspect.round, suspect.failure) == (1, FailureClass.BELOW_FLOOR)
    assert suspect.evidence["busbw_gbps"] == 250.0
    assert len(report.good) == 16


def flaky_beside_bad(retest_fails: bool) -> tuple[Isolation, FakeFleet, str, str, list]:
    """A flaky node paired with a bad one in round 1, failing again with its round-2
    witness and passing with its round-3 one: its results disagree and it is retested."""
    iso, rng = Isolation(names(16)), random.Random(4)
    first = iso.plan_round(rng)
    flaky, bad = first[0]
    fleet = FakeFleet(bad={bad}, flaky={flaky: [True, True, False, retest_fails]})
    record(iso, fleet, first)
    second = step(iso, fleet, rng)
    assert iso.state(flaky) == iso.state(bad) == S.SUSPECT  # one witness each
    step(iso, fleet, rng)
    assert iso.state(bad) == S.BAD  # a second witness
    assert iso.state(flaky) == S.SUSPECT and not iso.done  # mixed: retest
    fourth = step(iso, fleet, rng)
    assert [p for p in fourth if flaky in p]  # the retest, with a new witness
    assert iso.done
    return iso, fleet, flaky, bad, second


def test_a_flaky_node_is_retested_and_quarantined_as_flaky():
    iso, fleet, flaky, bad, _ = flaky_beside_bad(retest_fails=True)
    report = iso.report()
    assert report.rounds == 4
    assert report.quarantined == tuple(sorted((flaky, bad)))
    [finding] = report.flaky
    assert (finding.node, finding.state, finding.failure) == (flaky, S.FLAKY, FailureClass.CRASH)
    assert [(e["round"], e["witness"]) for e in finding.evidence] == [
        (1, False), (2, True), (4, True)]
    assert finding.evidence[0]["partners"] == [bad]
    assert fleet.runs[flaky] == 4


def test_a_mixed_node_that_passes_its_retest_is_cleared_and_the_failed_pair_reported():
    iso, _, flaky, bad, second = flaky_beside_bad(retest_fails=False)
    report = iso.report()
    assert report.quarantined == (bad,)
    assert iso.state(flaky) == S.CLEARED
    witness = partner_in(second, flaky)
    [suspect] = report.fabric_suspects
    assert set(suspect.nodes) == {flaky, witness}
    assert (suspect.round, suspect.failure) == (2, FailureClass.CRASH)


def test_a_good_node_beside_a_bad_one_survives_a_witness_that_flakes():
    # Why two witnesses: the good partner's round-2 witness is flaky and fails the run.
    iso, rng = Isolation(names(16)), random.Random(5)
    first = iso.plan_round(rng)
    bad, good = first[0]
    fleet = FakeFleet(bad={bad})
    record(iso, fleet, first)
    second = iso.plan_round(rng)
    fleet.flaky[partner_in(second, good)] = [True]
    record(iso, fleet, second)
    assert iso.state(good) == S.SUSPECT
    report = finish(iso, fleet, rng)
    assert report.quarantined == (bad,)
    assert iso.state(good) == S.CLEARED
    assert report.rounds == 4  # a new witness, then the retest its mixed results call for
    assert [set(f.nodes) for f in report.fabric_suspects] == [
        {good, partner_in(second, good)}]


def test_the_odd_node_out_waits_for_round_2_and_runs_with_a_node_that_passed():
    iso, rng = Isolation(names(17)), random.Random(6)
    fleet = FakeFleet()
    first = step(iso, fleet, rng)
    assert len(first) == 8
    [odd] = set(names(17)) - {n for p in first for n in p}
    assert iso.state(odd) == S.UNTESTED and not iso.done
    [second] = step(iso, fleet, rng)
    assert odd in second
    assert iso.state(partner_in([second], odd)) == S.PASSED
    report = iso.report()
    assert report.rounds == 2 and report.tested_per_round == (16, 2)
    assert iso.state(odd) == S.PASSED
    assert report.good == tuple(names(17))


def test_a_launcher_failure_is_retried_with_a_witness_then_could_not_test():
    iso, rng = Isolation(names(16)), random.Random(7)
    first = iso.plan_round(rng)
    node, partner = first[0]
    fleet = FakeFleet(launcher={node: 99})
    record(iso, fleet, first)
    # Not the nodes' fault: neither is a suspect; both run again, each with a witness.
    assert iso.state(node) == iso.state(partner) == S.UNTESTED
    second = step(iso, fleet, rng)
    assert partner_in(second, node) != partner
    assert iso.done
    report = iso.report()
    assert iso.state(partner) == S.PASSED
    [finding] = report.could_not_test
    assert (finding.node, finding.state, finding.failure) == (
        node, S.COULD_NOT_TEST, FailureClass.COULD_NOT_TEST)
    assert [e["failure"] for e in finding.evidence] == ["launcher", "launcher"]
    assert finding.evidence[0]["detail"] == "ssh refused"
    assert report.quarantined == ()
    assert len(report.good) == 15


@dataclass
class DyingFleet(FakeFleet):
    """A fleet in which `dead` powers off during its first run: that run hangs until the
    deadline kills it (mpirun waits on a daemon that is gone), and every later launch on it
    fails (ssh: no route to host)."""

    dead: str = ""

    def __call__(self, a: str, b: str) -> PairResult:
        if self.dead in (a, b):
            self.runs.update((a, b))
            if self.runs[self.dead] == 1:
                return PairResult((a, b), outcome=RunOutcome.TIMEOUT, detail="killed at 60 s")
            return PairResult((a, b), outcome=RunOutcome.LAUNCHER,
                              detail=f"ssh: connect to host {self.dead}: No route to host")
        return super().__call__(a, b)


@pytest.mark.parametrize("seed", range(5))
def test_a_node_that_dies_mid_burn_in_does_not_take_its_partner_with_it(seed):
    iso, rng = Isolation(names(16)), random.Random(seed)
    first = iso.plan_round(rng)
    dead, partner = first[0]
    fleet = DyingFleet(dead=dead)
    record(iso, fleet, first)
    report = finish(iso, fleet, rng)
    # The partner ran again with a node that passed, passed, and is good.
    assert partner in report.good and partner not in report.quarantined
    assert dead not in report.good
    assert set(report.good) == set(names(16)) - {dead}
    # The dead node is out as "could not test" (a hang, then launches that never started:
    # not proven bad, not passed), and nothing is reported as the fabric's.
    assert [(f.node, f.state) for f in report.could_not_test] == [(dead, S.COULD_NOT_TEST)]
    assert report.bad == report.flaky == report.fabric_suspects == ()


def test_a_launch_that_works_on_retry_decides_the_node_as_usual():
    iso, rng = Isolation(names(16)), random.Random(8)
    first = iso.plan_round(rng)
    node = first[0][0]
    fleet = FakeFleet(launcher={node: 1})
    record(iso, fleet, first)
    report = finish(iso, fleet, rng)
    assert report.rounds == 2
    assert iso.state(node) == S.PASSED
    assert report.could_not_test == report.quarantined == ()


def test_a_cluster_wide_low_quarantines_nobody():
    iso, rng = Isolation(names(32)), random.Random(9)
    report = finish(iso, FakeFleet(busbw=300.0), rng)
    assert report.rounds == 1
    assert report.quarantined == ()
    assert report.bad == report.flaky == report.fabric_suspects == ()
    assert report.cluster_wide is not None
    assert report.cluster_wide.failure == FailureClass.BELOW_FLOOR
    assert (report.cluster_wide.failed, report.cluster_wide.judged) == (16, 16)
    assert "everything low" in report.cluster_wide.message
    assert iso.plan_round(rng) == []


def test_too_small_a_fleet_leaves_its_suspects_unresolved():
    iso, rng = Isolation(names(2)), random.Random(10)
    report = finish(iso, FakeFleet(bad={"gpu-001"}), rng)
    assert report.rounds == 1
    assert report.quarantined == ()
    assert report.unresolved == ("gpu-001", "gpu-002")


# ---- topology --------------------------------------------------------------------------------

def test_round_1_partners_are_on_different_leaves():
    topology = {n: f"leaf-{i % 4}" for i, n in enumerate(names(16))}
    for seed in range(5):
        pairs = Isolation(names(16), topology).plan_round(random.Random(seed))
        assert len(pairs) == 8
        assert all(topology[a] != topology[b] for a, b in pairs)


def test_round_1_crosses_leaves_as_often_as_a_lopsided_fleet_allows():
    topology = {n: ("leaf-a" if i < 10 else "leaf-b") for i, n in enumerate(names(14))}
    pairs = Isolation(names(14), topology).plan_round(random.Random(11))
    crossing = [p for p in pairs if topology[p[0]] != topology[p[1]]]
    assert len(pairs) == 7 and len(crossing) == 4


def test_a_suspect_gets_a_witness_on_its_own_leaf():
    topology = {n: f"leaf-{i % 4}" for i, n in enumerate(names(16))}
    iso, rng = Isolation(names(16), topology), random.Random(12)
    first = iso.plan_round(rng)
    bad, partner = first[0]
    fleet = FakeFleet(bad={bad})
    record(iso, fleet, first)
    second = step(iso, fleet, rng)
    for suspect in (bad, partner):
        assert topology[partner_in(second, suspect)] == topology[suspect]
    [finding] = iso.report().bad
    assert finding.leaf == topology[bad]


# ---- the rules -------------------------------------------------------------------------------

def test_every_move_is_explicit():
    assert set(TRANSITIONS) == set(NodeState)
    assert transition("gpu-001", S.UNTESTED, S.SUSPECT) == S.SUSPECT
    assert transition("gpu-001", S.SUSPECT, S.FLAKY) == S.FLAKY
    for final in FINAL | GOOD:
        assert TRANSITIONS[final] == frozenset()
    with pytest.raises(IllegalTransition, match=r"gpu-001: bad -> passed .* \(from bad: none\)"):
        transition("gpu-001", S.BAD, S.PASSED)
    with pytest.raises(IllegalTransition, match="from untested: could-not-test, passed, suspect"):
        transition("gpu-001", S.UNTESTED, S.BAD)


def test_the_same_rng_plans_the_same_pairs():
    topology = {n: f"leaf-{i % 4}" for i, n in enumerate(names(64))}
    for topo in (None, topology):
        plans = [Isolation(names(64), topo).plan_round(random.Random(13)) for _ in range(2)]
        assert plans[0] == plans[1]
        assert Isolation(names(64), topo).plan_round(random.Random(14)) != plans[0]


def test_the_same_rng_decides_the_same_way():
    def run() -> tuple[list, IsolationReport]:
        iso, rng = Isolation(names(40)), random.Random(15)
        fleet = FakeFleet(bad={"gpu-003", "gpu-017", "gpu-031"},
                          flaky={"gpu-009": [True, False, True]})
        rounds = []
        while not iso.done:
            rounds.append(step(iso, fleet, rng))
        return rounds, iso.report()

    assert run() == run()


def test_a_round_is_recorded_whole_and_once():
    iso, rng = Isolation(names(10)), random.Random(16)
    with pytest.raises(RuntimeError, match="no round is planned"):
        iso.record_round(iso.judge([], FLOOR, RULE))
    pairs = iso.plan_round(rng)
    with pytest.raises(RuntimeError, match="not recorded yet"):
        iso.plan_round(rng)
    fleet = FakeFleet()
    results = [fleet(a, b) for a, b in pairs]
    with pytest.raises(ValueError, match="no result for"):
        iso.record_round(iso.judge(results[1:], FLOOR, RULE))
    with pytest.raises(ValueError, match="two results for"):
        iso.record_round(iso.judge(results + results[:1], FLOOR, RULE))
    stranger = PairResult((pairs[0][0], pairs[1][0]), busbw_gbps=380.0)
    with pytest.raises(ValueError, match="not a pair of this round"):
        iso.record_round(iso.judge(results[1:] + [stranger], FLOOR, RULE))
    with pytest.raises(ValueError, match="judge it with Isolation.judge"):
        iso.record_round(judge_round(results, FLOOR, RULE, screening=False))
    iso.record_round(iso.judge(results, FLOOR, RULE))
    assert iso.rounds == 1 and iso.reference is not None and not iso.screening


def test_witnesses_and_rounds_are_at_least_one():
    with pytest.raises(ValueError):
        Isolation(names(4), min_witnesses=0)
    with pytest.raises(ValueError):
        Isolation(names(4), max_rounds=0)


def test_the_report_of_a_bad_node_carries_its_runs():
    topology = {n: f"leaf-{i % 2}" for i, n in enumerate(names(16))}
    iso, rng = Isolation(names(16), topology), random.Random(17)
    first = iso.plan_round(rng)
    bad, partner = first[0]
    fleet = FakeFleet(bad={bad})
    record(iso, fleet, first)
    second = step(iso, fleet, rng)
    report = iso.report()
    [finding] = report.bad
    assert (finding.node, finding.leaf) == (bad, topology[bad])
    witness = partner_in(second, bad)
    assert [(e["round"], e["partners"], e["witness"], e["failure"]) for e in finding.evidence] \
        == [(1, [partner], False, "below-floor"), (2, [witness], True, "below-floor")]
    assert all(e["busbw_gbps"] < FLOOR and e["floor_gbps"] == FLOOR
               for e in finding.evidence)
    assert "median_gbps" in finding.evidence[1]  # judged against the screening round
    assert report.tested_per_round == (16, 4)
    assert bad not in report.good and partner in report.good
