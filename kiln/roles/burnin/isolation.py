"""Finding the bad node among many with two-node `all_reduce_perf`: the decisions, round by
round. Pure: it plans pairs and reads judged results; running them is the burn-in
operation's job.

    iso = Isolation(nodes, topology={node: leaf switch} or None)
    while not iso.done:
        pairs = iso.plan_round(rng)              # disjoint pairs, all run at once
        results = ...                            # one PairResult per pair
        iso.record_round(iso.judge(results, floor_gbps, rule))
    report = iso.report()

Rounds.
    1 (screening)  every node in one random disjoint pair; with a topology the partners are
                   on different leaf switches wherever the fleet allows, so spine links carry
                   traffic too. An odd node out waits for round 2 (it is then paired with a
                   node that passed) instead of running as a trio: a trio's failure blames
                   three nodes, and its busbw is not one pair's to put in the fleet stats.
    2, 3, ...      each node that needs a test runs with a witness: a node that has passed,
                   has no failure of its own left unexplained, was never this node's partner
                   and, with a topology, sits on the same leaf where one is free (a same-leaf
                   run crosses no spine, so a bad spine link cannot fail it twice). Witnesses
                   are distinct within a round. Where no such node is free, a node that passed
                   but has a failure or a launch failure of its own unexplained serves; where
                   none at all is, nodes that need a test run with each other (never twice the
                   same pair), and such a run witnesses nothing.

Decisions (after every round, until nothing moves):
    bad        a node that never passed and failed with `min_witnesses` (2) distinct partners
               that each passed with someone else. Its round-1 partner counts once it has
               passed elsewhere, so a bad node beside a good one is decided after round 2
               (when that partner passes there); two bad nodes paired in round 1 take a
               third round.
               Why two and not one: a single witness may be a flaky node that flaked. With
               one witness a good node beside a bad one is quarantined whenever its round-2
               witness flakes; with two, only when two partners fail it in a row: a flaky
               round-1 partner that flakes and then passes elsewhere, and a round-2 witness
               that flakes (or a pair run that falls into the noise). Round 2 cannot tell that
               apart from a bad node beside a good one, so no rule that decides in round 2
               rules it out; bench/burnin_isolation.py measures how rare it is.
    cleared    a suspect that passed (with a witness, or with another suspect where no
               witness was free) and has no unexplained failure with a witness; its failed
               pair, whose nodes both passed elsewhere, is reported as a fabric suspect, and
               no node is quarantined for it.
    mixed      a node that failed with a witness (a partner known good when the pair was
               planned) and passed with another: it is retested once with a new witness.
               The retest fails: flaky (quarantined). It passes: cleared, and the failed pair
               is a fabric suspect.
    could-not-test  two launcher failures (mpirun/srun, not the node's fault) before the node
               could be decided; after the first it is retried, with a witness where one
               exists so that the retry tells whose launch broke.
    cluster-wide    a screening round the judge calls cluster-wide stops the isolation: no
               node moves, the report carries the finding.

Every state change goes through TRANSITIONS (Ironic's rule: every move explicit); any other
move raises IllegalTransition. Given the same rng, plan_round returns the same pairs.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiln.core.errors import KilnError
from kiln.core.manifest import OutlierRule
from kiln.roles.burnin.judging import (
    ClusterFinding,
    FailureClass,
    FleetStats,
    PairResult,
    RoundJudgement,
    Verdict,
    judge_round,
)


class NodeState(StrEnum):
    UNTESTED = "untested"
    PASSED = "passed"            # passed in its pairs so far, never suspected
    SUSPECT = "suspect"          # failed; needs another test (or waits for a partner's)
    BAD = "bad"
    FLAKY = "flaky"
    CLEARED = "cleared"          # was a suspect; passed with a good partner
    COULD_NOT_TEST = "could-not-test"


S = NodeState
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    # Passing or failing its first run; or two launcher failures before any run completed.
    S.UNTESTED: frozenset({S.PASSED, S.SUSPECT, S.COULD_NOT_TEST}),
    # A witness is never the node under test, so a failure with a suspect moves it nowhere:
    # the failure is the suspect's, or the path's.
    S.PASSED: frozenset(),
    S.SUSPECT: frozenset({S.BAD, S.FLAKY, S.CLEARED, S.COULD_NOT_TEST}),
    # Quarantines are final for this burn-in: only new work (a repair, a rerun) proves the
    # node again, and that is a new Isolation.
    S.CLEARED: frozenset(),
    S.BAD: frozenset(),
    S.FLAKY: frozenset(),
    S.COULD_NOT_TEST: frozenset(),
}
GOOD = frozenset({S.PASSED, S.CLEARED})
QUARANTINED = frozenset({S.BAD, S.FLAKY})
FINAL = frozenset({S.BAD, S.FLAKY, S.COULD_NOT_TEST})


class IllegalTransition(KilnError):
    pass


def transition(node: str, current: NodeState, to: NodeState) -> NodeState:
    """`to`, if TRANSITIONS allows the move from `current`; IllegalTransition otherwise."""
    if to not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        raise IllegalTransition(f"node {node}: {current} -> {to} is not a burn-in isolation "
                                f"move (from {current}: {allowed})")
    return to


@dataclass(frozen=True)
class NodeFinding:
    node: str
    state: NodeState
    failure: FailureClass
    leaf: str | None
    evidence: tuple[Mapping[str, Any], ...]  # per failed run: round, partners, verdict evidence


@dataclass(frozen=True)
class FabricSuspect:
    """A pair that failed although both nodes passed with other partners: the path between
    them (their leaf switches, and the spine links between those) is the suspect."""

    nodes: tuple[str, ...]
    leaves: tuple[str | None, ...]
    failure: FailureClass
    round: int
    evidence: Mapping[str, Any]


@dataclass(frozen=True)
class IsolationReport:
    rounds: int
    tested_per_round: tuple[int, ...]  # nodes in a run, per round (what the GPU-hours are)
    good: tuple[str, ...]              # passed or cleared: may join the pool
    bad: tuple[NodeFinding, ...]
    flaky: tuple[NodeFinding, ...]
    could_not_test: tuple[NodeFinding, ...]
    fabric_suspects: tuple[FabricSuspect, ...]
    unresolved: tuple[str, ...]        # suspects left undecided (no witness, or max_rounds)
    untested: tuple[str, ...]          # never ran: no partner could be had
    cluster_wide: ClusterFinding | None

    @property
    def quarantined(self) -> tuple[str, ...]:
        return tuple(sorted(f.node for f in self.bad + self.flaky))


@dataclass
class _Run:
    round: int
    verdict: Verdict
    subject: str | None  # the node a witness was found for; None in screening/peer runs

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.verdict.nodes

    def others(self, node: str) -> tuple[str, ...]:
        return tuple(n for n in self.verdict.nodes if n != node)


@dataclass
class _Node:
    state: NodeState = S.UNTESTED
    passes: list[_Run] = field(default_factory=list)
    fails: list[_Run] = field(default_factory=list)
    partners: set[str] = field(default_factory=set)  # every node it was planned with
    launcher: list[Verdict] = field(default_factory=list)
    mixed_after: int | None = None  # runs it had when it became mixed: the next is the retest
    decided_by: FailureClass | None = None

    @property
    def runs(self) -> int:
        return len(self.passes) + len(self.fails)


class Isolation:
    def __init__(self, nodes: Iterable[str], topology: Mapping[str, str] | None = None,
                 min_witnesses: int = 2, max_rounds: int = 6):
        names = sorted(set(nodes))
        if min_witnesses < 1 or max_rounds < 1:
            raise ValueError("min_witnesses and max_rounds are at least 1")
        self._names = tuple(names)
        self._node = {name: _Node() for name in names}
        self._leaf: dict[str, str | None] = {
            name: (topology.get(name) if topology else None) for name in names}
        self._topology = bool(topology)
        self.min_witnesses = min_witnesses
        self.max_rounds = max_rounds
        self._round = 0
        self._planned: dict[frozenset[str], str | None] | None = None
        self._tested: list[int] = []
        self._halted: ClusterFinding | None = None
        self._reference: FleetStats | None = None
        self._stalled = False

    # ---- what the caller reads -----------------------------------------------------------

    @property
    def rounds(self) -> int:
        return self._round

    @property
    def screening(self) -> bool:
        """Whether the round to be recorded next is the screening round (round 1)."""
        return self._round == 0

    @property
    def reference(self) -> FleetStats | None:
        """The screening round's fleet stats: what follow-up rounds are judged against."""
        return self._reference

    def state(self, node: str) -> NodeState:
        return self._node[node].state

    @property
    def states(self) -> dict[str, NodeState]:
        return {name: n.state for name, n in self._node.items()}

    @property
    def done(self) -> bool:
        if self._halted is not None or self._stalled:
            return True
        if self._planned is not None:
            return False
        if self._round >= self.max_rounds:
            return True
        return not self._needing() or not self._can_pair()

    def judge(self, results: Iterable[PairResult], floor_gbps: float,
              rule: OutlierRule) -> RoundJudgement:
        """judge_round with what this isolation knows: screening or not, and the reference."""
        return judge_round(results, floor_gbps, rule, self._reference,
                           screening=self.screening)

    # ---- planning ------------------------------------------------------------------------

    def plan_round(self, rng: random.Random) -> list[tuple[str, str]]:
        """The pairs of the next round (each node in one at most); [] when done."""
        if self._planned is not None:
            raise RuntimeError("the planned round is not recorded yet")
        if self.done:
            return []
        if self._round == 0:
            pairs = [(a, b, None) for a, b in self._screening_pairs(rng)]
        else:
            pairs = self._follow_up_pairs(rng)
        if not pairs:  # nothing could be paired after all: stop rather than spin
            self._stalled = True
            return []
        self._planned = {}
        for a, b, subject in pairs:
            self._planned[frozenset((a, b))] = subject
            self._node[a].partners.add(b)
            self._node[b].partners.add(a)
        return [(a, b) for a, b, _ in pairs]

    def _screening_pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        nodes = [n for n in self._names if self._node[n].state == S.UNTESTED]
        if not self._topology:
            rng.shuffle(nodes)
            return [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        # Always draw from the two leaves with the most nodes left: that pairs across leaves
        # wherever the fleet's shape allows it. Ties go by a fresh random key.
        groups: dict[str | None, list[str]] = {}
        for n in nodes:
            groups.setdefault(self._leaf[n], []).append(n)
        heap = []
        for leaf in sorted(groups, key=lambda x: (x is None, x or "")):
            rng.shuffle(groups[leaf])
            heap.append((-len(groups[leaf]), rng.random(), leaf))
        heapq.heapify(heap)
        pairs = []
        while heap:
            count, _, leaf = heapq.heappop(heap)
            if not heap:
                members = groups[leaf]
                pairs += [(members[i], members[i + 1]) for i in range(0, len(members) - 1, 2)]
                break
            count2, _, leaf2 = heapq.heappop(heap)
            pairs.append((groups[leaf].pop(), groups[leaf2].pop()))
            for c, lf in ((count + 1, leaf), (count2 + 1, leaf2)):
                if c:
                    heapq.heappush(heap, (c, rng.random(), lf))
        return pairs

    def _needing(self) -> list[str]:
        """Nodes that need a run next round: untested ones (the odd node out, launcher
        retries), suspects short of witnesses, and mixed nodes awaiting their retest."""
        need = []
        for name in self._names:
            node = self._node[name]
            if node.state == S.UNTESTED:
                need.append(name)
            elif node.state == S.SUSPECT and (
                    node.mixed_after is not None or not node.passes):
                need.append(name)
        return need

    def _witness_ok(self, name: str, strict: bool) -> bool:
        node = self._node[name]
        if node.state not in GOOD:
            return False
        if not strict:
            return True
        return not node.launcher and all(self._explained(run, name) for run in node.fails)

    def _can_pair(self) -> bool:
        need = self._needing()
        pool = [n for n in self._names if self._node[n].state in GOOD] + need
        return any(other != name and other not in self._node[name].partners
                   for name in need for other in pool)

    def _follow_up_pairs(self, rng: random.Random) -> list[tuple[str, str, str | None]]:
        need = self._needing()
        suspects = [n for n in need if self._node[n].state == S.SUSPECT]
        untested = [n for n in need if self._node[n].state == S.UNTESTED]
        rng.shuffle(suspects)
        rng.shuffle(untested)
        used: set[str] = set()
        pairs: list[tuple[str, str, str | None]] = []
        # Witness pools, strict (clean) first, each by leaf and in a random order.
        pools = []
        for strict in (True, False):
            cands = [n for n in self._names if self._witness_ok(n, strict)]
            rng.shuffle(cands)
            by_leaf: dict[str | None, list[str]] = {}
            for n in cands:
                by_leaf.setdefault(self._leaf[n], []).append(n)
            pools.append((cands, by_leaf))
        waiting = []
        for subject in suspects + untested:
            partners = self._node[subject].partners
            witness = None
            for cands, by_leaf in pools:
                options = (by_leaf.get(self._leaf[subject], []), cands) if self._topology \
                    else (cands,)
                for option in options:
                    witness = next((w for w in option if w not in used and w not in partners),
                                   None)
                    if witness:
                        break
                if witness:
                    break
            if witness is None:
                waiting.append(subject)
                continue
            used.update((subject, witness))
            pairs.append((subject, witness, subject))
        # No witness to be had (none passed yet, or all taken): pair such nodes with each
        # other, never twice the same pair. Such a run witnesses nothing.
        for i, a in enumerate(waiting):
            if a in used:
                continue
            b = next((b for b in waiting[i + 1:]
                      if b not in used and b not in self._node[a].partners), None)
            if b is not None:
                used.update((a, b))
                pairs.append((a, b, None))
        return pairs

    # ---- recording -----------------------------------------------------------------------

    def record_round(self, judgement: RoundJudgement) -> None:
        """Take the judged results of the planned round (one verdict per planned pair)."""
        if self._planned is None:
            raise RuntimeError("no round is planned")
        if judgement.screening != self.screening:
            raise ValueError("round judged as " + ("screening" if judgement.screening else
                             "follow-up") + f" but it is round {self._round + 1}; judge it "
                             "with Isolation.judge()")
        seen: dict[frozenset[str], Verdict] = {}
        for verdict in judgement.verdicts:
            key = frozenset(verdict.nodes)
            if key not in self._planned:
                raise ValueError(f"result for {sorted(key)}: not a pair of this round")
            if key in seen:
                raise ValueError(f"two results for {sorted(key)}")
            seen[key] = verdict
        missing = [sorted(k) for k in self._planned if k not in seen]
        if missing:
            raise ValueError(f"no result for {missing}: every planned pair needs one (a run "
                             "that never started is a launcher failure)")
        planned, self._planned = self._planned, None
        self._round += 1
        self._tested.append(2 * len(planned))
        if judgement.screening:
            self._reference = judgement.stats
            if judgement.cluster_wide is not None:
                self._halted = judgement.cluster_wide
                return
        for key, verdict in seen.items():
            if verdict.failure == FailureClass.LAUNCHER:
                for name in verdict.nodes:
                    self._node[name].launcher.append(verdict)
                continue
            run = _Run(self._round, verdict, planned[key])
            for name in verdict.nodes:
                (self._node[name].passes if verdict.passed else self._node[name].fails
                 ).append(run)
        self._decide()

    def _move(self, name: str, to: NodeState, because: FailureClass | None = None) -> None:
        node = self._node[name]
        node.state = transition(name, node.state, to)
        if because is not None:
            node.decided_by = because

    def _explained(self, run: _Run, name: str) -> bool:
        """Whether a failed run of `name` is put down to a partner already quarantined."""
        return any(self._node[o].state in QUARANTINED for o in run.others(name))

    def _proven(self, name: str) -> bool:
        return bool(self._node[name].passes)

    def _decide(self) -> None:
        changed = True
        while changed:
            changed = False
            for name in self._names:
                if self._step(name):
                    changed = True

    def _step(self, name: str) -> bool:
        """One decision for one node; whether it moved (or changed what it waits for)."""
        node = self._node[name]
        if node.state in FINAL or node.state in GOOD and not node.fails:
            return False
        if node.state in (S.UNTESTED, S.SUSPECT) and len(node.launcher) >= 2 and (
                node.state == S.UNTESTED or node.mixed_after is not None or not node.passes):
            self._move(name, S.COULD_NOT_TEST, FailureClass.COULD_NOT_TEST)
            return True
        if node.state == S.UNTESTED:
            if not node.runs:
                return False
            self._move(name, S.SUSPECT if node.fails else S.PASSED)
            return True
        if node.state != S.SUSPECT:
            return False
        if not node.passes:
            witnesses = {o for run in node.fails if not self._explained(run, name)
                         for o in run.others(name) if self._proven(o)
                         and self._node[o].state in GOOD}
            if len(witnesses) >= self.min_witnesses:
                self._move(name, S.BAD, self._failure_class(name))
                return True
            return False
        if node.mixed_after is not None:
            runs = sorted(node.passes + node.fails, key=lambda r: r.round)
            if len(runs) <= node.mixed_after:
                return False
            retest = runs[node.mixed_after]
            if retest.verdict.passed:
                self._move(name, S.CLEARED)
            else:
                self._move(name, S.FLAKY, self._failure_class(name))
            return True
        # It passed. A failure with a witness (known good when the pair was planned) that no
        # quarantined partner explains makes its results disagree: retest once.
        if any(run.subject == name and not self._explained(run, name) for run in node.fails):
            node.mixed_after = node.runs
            return True
        self._move(name, S.CLEARED)
        return True

    def _failure_class(self, name: str) -> FailureClass:
        fails = [r for r in self._node[name].fails if not self._explained(r, name)]
        fails = fails or self._node[name].fails
        counts = Counter(r.verdict.failure for r in fails)
        latest = fails[-1].verdict.failure
        best = max(counts.values())
        return latest if counts[latest] == best else next(  # type: ignore[return-value]
            cls for cls, n in counts.most_common() if n == best)

    # ---- the report ----------------------------------------------------------------------

    def _finding(self, name: str) -> NodeFinding:
        node = self._node[name]
        evidence: list[Mapping[str, Any]] = []
        runs = node.launcher if node.state == S.COULD_NOT_TEST else None
        if runs is not None:
            evidence = [dict(v.evidence, failure=str(v.failure)) for v in runs]
        else:
            for run in sorted(node.fails, key=lambda r: r.round):
                evidence.append(dict(run.verdict.evidence, round=run.round,
                                     partners=list(run.others(name)),
                                     failure=str(run.verdict.failure),
                                     witness=run.subject == name))
        return NodeFinding(name, node.state, node.decided_by or FailureClass.CRASH,
                           self._leaf[name], tuple(evidence))

    def report(self) -> IsolationReport:
        by_state: dict[NodeState, list[str]] = {s: [] for s in NodeState}
        for name in self._names:
            by_state[self._node[name].state].append(name)
        suspects: dict[frozenset[str], FabricSuspect] = {}
        for name in self._names:
            for run in self._node[name].fails:
                key = frozenset(run.nodes)
                if key in suspects or not all(self._node[n].state in GOOD for n in run.nodes):
                    continue
                suspects[key] = FabricSuspect(
                    run.nodes, tuple(self._leaf[n] for n in run.nodes),
                    run.verdict.failure, run.round, run.verdict.evidence)  # type: ignore[arg-type]
        unresolved = [n for n in by_state[S.SUSPECT]]
        untested = [n for n in by_state[S.UNTESTED] if not self._node[n].runs]
        unresolved += [n for n in by_state[S.UNTESTED] if self._node[n].runs]
        return IsolationReport(
            rounds=self._round,
            tested_per_round=tuple(self._tested),
            good=tuple(sorted(by_state[S.PASSED] + by_state[S.CLEARED])),
            bad=tuple(self._finding(n) for n in by_state[S.BAD]),
            flaky=tuple(self._finding(n) for n in by_state[S.FLAKY]),
            could_not_test=tuple(self._finding(n) for n in by_state[S.COULD_NOT_TEST]),
            fabric_suspects=tuple(sorted(suspects.values(), key=lambda f: (f.round, f.nodes))),
            unresolved=tuple(sorted(unresolved)),
            untested=tuple(untested),
            cluster_wide=self._halted,
        )

