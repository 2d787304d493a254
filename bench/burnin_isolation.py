"""Burn-in isolation, simulated: how many rounds of two-node `all_reduce_perf` it takes to
find the bad nodes of a fleet, and how often it gets them wrong. Kiln against three baselines.

    python bench/burnin_isolation.py [--runs 1000] [--nodes 512] [--seed 1] [--json]

Kiln's figures come from kiln's own code: every simulated run drives
kiln.roles.burnin.isolation.Isolation (plan_round, judge, record_round, report) with
PairResults judged by kiln.roles.burnin.judging, exactly as the burn-in operation does; only
the runs themselves are simulated. Asserts nothing: it prints (time limits and targets live
here and in bench/README.md, never in pass/fail tests).

The simulated fleet (fresh for every simulated run, from the seed):
    nodes       --nodes (512), 32 to a leaf switch; kiln is given that topology
    bad nodes   1%, 3% or 5% of the fleet, deterministic: every run they are in fails, in one
                way per node: half the bandwidth (a GPU or PCIe link at half rate), one HCA of
                eight down (7/8 of it), 10% slow (about the floor: below it, or an outlier),
                wrong results, a hang (killed at the deadline) or a crash
    flaky nodes 1% of the fleet: each run they are in fails with probability 0.3 (a crash,
                a hang, or 60% of the bandwidth), otherwise it is healthy
    bad paths   4 node pairs on different leaves whose runs always fail (60% of the
                bandwidth: a bad cable between their leaves' spine ports), both nodes healthy
    bandwidth   a healthy pair's busbw ~ N(378, 4) GB/s: 2 nodes over 8x NDR, ring, at 8 GiB
                (the SKU manifest says ~370-390; the floor is 340). Outlier rule: median - 3.5
                scaled MADs (the manifest's), so a healthy pair is an outlier in about 2.3e-4
                of its runs: the noise that makes good pairs fail now and then.
    launcher failures are not simulated (they cost a retry round; they say nothing of nodes).

What is counted:
    round           one slot in which pairs run at once, each node in one pair at most
    GPU-hours       per run of the method: sum over its rounds of nodes in a pair x 8 GPUs x
                    5 minutes (one 2-node all_reduce_perf at 8 GiB: mpirun launch, NCCL init,
                    warm-up and the timed iterations; the round waits for its slowest pair).
                    Idle nodes are not counted: they are free for other work.
    false q.        good nodes (neither bad nor flaky) quarantined, summed over all runs
    bad missed      deterministic bad nodes not quarantined, summed over all runs
    flaky caught    flaky nodes quarantined (as flaky or as bad), of all flaky nodes
    paths found     bad paths whose pair ran, failed, and whose nodes were not quarantined:
                    kiln reports them as fabric suspects; for the baselines the evidence is in
                    their results (they do not name the path themselves)
    --json          a list of rows: method, bad_fraction, runs, mean_rounds, max_rounds,
                    gpu_hours (mean per run), false_quarantines, bad_missed, flaky_caught and
                    flaky_total, paths_found and paths_total, rounds_histogram

The baselines, as faithfully as their public descriptions allow. Each judges a run by the
same rule as kiln (floor 340, or below the healthy median by 3.5 sigma: the threshold kiln's
screening round measures), drawn with the same probabilities, without building PairResults.
    imbue        Imbue's 70B cluster bring-up: 15 rounds of random disjoint pairs; every node
                 counts its passes. A node that failed in more than half of its runs is bad
                 ("fails consistently"). A lower threshold would also catch flaky nodes, but
                 with 15 runs a good node beside 5% bad partners fails 4 of 15 in 0.7% of
                 cases: a quarter would quarantine about 3 good nodes per run.
    superbench   SuperBench's pair-wise traffic pattern: every pair once, n-1 rounds (the
                 round-robin schedule). With 511 runs per node the failure count concentrates,
                 so a node that failed with more than a quarter of its partners is bad: that
                 catches flaky nodes (about a third failed) and no good node (about 5%).
    chs          Google's cluster-health-scanner NCCL check: pass 1, random disjoint pairs;
                 pass 2 (only if pass 1 failed somewhere), every node of a failed pair with a
                 distinct random node that passed pass 1. Failing pass 2 taints the node
                 (quarantined); passing clears it. No pass 2 for nodes left without a partner.
None of them knows the topology.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln.core.manifest import OutlierRule  # noqa: E402
from kiln.roles.burnin.isolation import Isolation  # noqa: E402
from kiln.roles.burnin.judging import PairResult, RunOutcome  # noqa: E402

GPUS_PER_NODE = 8
LEAF_SIZE = 32
BAD_FRACTIONS = (0.01, 0.03, 0.05)
FLAKY_FRACTION = 0.01
BAD_PATHS = 4
IMBUE_ROUNDS = 15
IMBUE_MAX_FAIL_FRACTION = 0.5
SUPERBENCH_MAX_FAIL_FRACTION = 0.25
METHODS = ("kiln", "imbue", "superbench", "chs")


@dataclass(frozen=True)
class Model:
    """The bandwidth, the judging rule and the cost of a round."""

    busbw_mean: float = 378.0
    busbw_sd: float = 4.0
    floor_gbps: float = 340.0
    rule: OutlierRule = field(default_factory=lambda: OutlierRule(
        max_deviations=3.5, min_fleet_size=5))
    flaky_p: float = 0.3
    round_minutes: float = 5.0

    @property
    def cutoff_gbps(self) -> float:
        """What a healthy run must reach: the floor, or the outlier threshold the screening
        round measures (median and scaled MAD of normal results: the mean and the sd)."""
        return max(self.floor_gbps, self.busbw_mean - self.rule.max_deviations * self.busbw_sd)

    @property
    def noise_fail_p(self) -> float:
        z = (self.cutoff_gbps - self.busbw_mean) / self.busbw_sd
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def gpu_hours(self, nodes_in_runs: int) -> float:
        return nodes_in_runs * GPUS_PER_NODE * self.round_minutes / 60


@dataclass(frozen=True)
class Effect:
    """What a bad node, a flake or a bad path does to a run it is in."""

    factor: float = 1.0  # of the healthy busbw
    wrong: int = 0
    outcome: RunOutcome = RunOutcome.OK


BAD_KINDS = (
    Effect(factor=0.5),
    Effect(factor=7 / 8),
    Effect(factor=0.9),
    Effect(wrong=1024),
    Effect(outcome=RunOutcome.TIMEOUT),
    Effect(outcome=RunOutcome.CRASH),
)
FLAKES = (Effect(outcome=RunOutcome.CRASH), Effect(outcome=RunOutcome.TIMEOUT),
          Effect(factor=0.6))
BAD_PATH = Effect(factor=0.6)
# A hang outranks a crash: the job was killed at the deadline whatever else went wrong.
SEVERITY = {RunOutcome.OK: 0, RunOutcome.CRASH: 1, RunOutcome.TIMEOUT: 2}


class Fleet:
    """One simulated fleet: who is bad, who is flaky, which paths are bad."""

    def __init__(self, nodes: int, bad_fraction: float, model: Model, rng: random.Random):
        self.model = model
        self.names = [f"gpu-{i:04d}" for i in range(nodes)]
        self.leaf = {name: f"leaf-{i // LEAF_SIZE:02d}" for i, name in enumerate(self.names)}
        n_bad = round(bad_fraction * nodes)
        n_flaky = round(FLAKY_FRACTION * nodes)
        picked = rng.sample(self.names, n_bad + n_flaky)
        self.bad = {name: rng.choice(BAD_KINDS) for name in picked[:n_bad]}
        self.flaky = frozenset(picked[n_bad:])
        self.bad_paths = self._pick_paths(rng)

    def _pick_paths(self, rng: random.Random) -> frozenset[frozenset[str]]:
        # Between healthy nodes only, so that a failing path is never explained by a node.
        healthy = [n for n in self.names if n not in self.bad and n not in self.flaky]
        if len({self.leaf[n] for n in healthy}) < 2:
            return frozenset()
        paths: set[frozenset[str]] = set()
        while len(paths) < BAD_PATHS:
            a, b = rng.sample(healthy, 2)
            if self.leaf[a] != self.leaf[b]:
                paths.add(frozenset((a, b)))
        return frozenset(paths)

    @property
    def good(self) -> frozenset[str]:
        return frozenset(self.names) - set(self.bad) - self.flaky

    def flakes(self, node: str, rng: random.Random) -> bool:
        return node in self.flaky and rng.random() < self.model.flaky_p

    def result(self, a: str, b: str, rng: random.Random) -> PairResult:
        """One simulated run of the pair, as the burn-in operation would report it."""
        effects = [self.bad[n] for n in (a, b) if n in self.bad]
        effects += [rng.choice(FLAKES) for n in (a, b) if self.flakes(n, rng)]
        if frozenset((a, b)) in self.bad_paths:
            effects.append(BAD_PATH)
        busbw = rng.gauss(self.model.busbw_mean, self.model.busbw_sd)
        outcome = max((e.outcome for e in effects), key=SEVERITY.__getitem__,
                      default=RunOutcome.OK)
        if outcome != RunOutcome.OK:
            return PairResult((a, b), outcome=outcome)
        busbw *= min((e.factor for e in effects), default=1.0)
        wrong = max((e.wrong for e in effects), default=0)
        return PairResult((a, b), busbw_gbps=round(busbw, 2), wrong=wrong)

    def fails(self, a: str, b: str, rng: random.Random) -> bool:
        """Whether a run of the pair fails, with the probabilities `result` has under the
        baselines' fixed threshold: a bad node or path always, a flake, or noise."""
        if a in self.bad or b in self.bad or frozenset((a, b)) in self.bad_paths:
            return True
        if self.flakes(a, rng) or self.flakes(b, rng):
            return True
        return rng.random() < self.model.noise_fail_p


@dataclass(frozen=True)
class Outcome:
    """What one method did to one fleet."""

    rounds: int
    nodes_in_runs: int        # summed over rounds
    quarantined: frozenset[str]
    paths_found: frozenset[frozenset[str]]


def random_pairs(nodes: Iterable[str], rng: random.Random) -> list[tuple[str, str]]:
    order = list(nodes)
    rng.shuffle(order)
    return [(order[i], order[i + 1]) for i in range(0, len(order) - 1, 2)]


def paths_in_evidence(fleet: Fleet, failed: Iterable[frozenset[str]],
                      quarantined: frozenset[str]) -> frozenset[frozenset[str]]:
    """The bad paths a baseline's results show: failed, with no node of theirs quarantined."""
    return frozenset(p for p in failed if p in fleet.bad_paths and not p & quarantined)


# ---- the methods -----------------------------------------------------------------------------

def run_kiln(fleet: Fleet, rng: random.Random) -> Outcome:
    model = fleet.model
    iso = Isolation(fleet.names, topology=fleet.leaf)
    while not iso.done:
        pairs = iso.plan_round(rng)
        if not pairs:
            break
        results = [fleet.result(a, b, rng) for a, b in pairs]
        iso.record_round(iso.judge(results, model.floor_gbps, model.rule))
    report = iso.report()
    return Outcome(report.rounds, sum(report.tested_per_round), frozenset(report.quarantined),
                   frozenset(frozenset(f.nodes) for f in report.fabric_suspects))


def run_imbue(fleet: Fleet, rng: random.Random) -> Outcome:
    runs = dict.fromkeys(fleet.names, 0)
    fails = dict.fromkeys(fleet.names, 0)
    failed_pairs: set[frozenset[str]] = set()
    in_runs = 0
    for _ in range(IMBUE_ROUNDS):
        for a, b in random_pairs(fleet.names, rng):
            in_runs += 2
            runs[a] += 1
            runs[b] += 1
            if fleet.fails(a, b, rng):
                fails[a] += 1
                fails[b] += 1
                failed_pairs.add(frozenset((a, b)))
    quarantined = frozenset(n for n in fleet.names
                            if runs[n] and fails[n] > IMBUE_MAX_FAIL_FRACTION * runs[n])
    return Outcome(IMBUE_ROUNDS, in_runs, quarantined,
                   paths_in_evidence(fleet, failed_pairs, quarantined))


def unrank_pair(k: int, m: int) -> tuple[int, int]:
    """The k-th pair (i < j) of range(m), in the order (0,1), (0,2) ... (1,2) ..."""
    i = m - 2 - int(math.sqrt(-8 * k + 4 * m * (m - 1) - 7) / 2 - 0.5)
    j = k + i + 1 - m * (m - 1) // 2 + (m - i) * (m - i - 1) // 2
    return i, j


def run_superbench(fleet: Fleet, rng: random.Random) -> Outcome:
    """Every pair once. Drawing 130k pairs one by one per fleet is too slow for 1000 fleets,
    so the outcomes are drawn by kind, with the same probabilities as Fleet.fails: pairs with
    a bad node or on a bad path fail; pairs with a flaky node are drawn one by one; between
    healthy nodes only noise fails a pair, and those few are drawn by geometric skips."""
    names, n = fleet.names, len(fleet.names)
    model = fleet.model
    bad, flaky = fleet.bad, fleet.flaky
    fails = {name: (n - 1 if name in bad else len(bad)) for name in names}
    for path in fleet.bad_paths:
        for name in path:
            fails[name] += 1
    flaky_sorted = sorted(flaky)
    for f in flaky_sorted:
        for other in names:
            if other == f or other in bad or (other in flaky and other < f):
                continue  # the pair with a bad node is counted; a flaky pair once
            if frozenset((f, other)) in fleet.bad_paths:
                continue
            if fleet.flakes(f, rng) or fleet.flakes(other, rng) \
                    or rng.random() < model.noise_fail_p:
                fails[f] += 1
                fails[other] += 1
    healthy = [name for name in names if name not in bad and name not in flaky]
    m = len(healthy)
    total, q = m * (m - 1) // 2, model.noise_fail_p
    k = -1
    while q > 0:
        k += 1 + int(math.log(1 - rng.random()) / math.log(1 - q))
        if k >= total:
            break
        i, j = unrank_pair(k, m)
        if frozenset((healthy[i], healthy[j])) not in fleet.bad_paths:
            fails[healthy[i]] += 1
            fails[healthy[j]] += 1
    quarantined = frozenset(name for name in names
                            if fails[name] > SUPERBENCH_MAX_FAIL_FRACTION * (n - 1))
    rounds = n - 1 if n % 2 == 0 else n  # the round-robin schedule; odd n: one sits out
    return Outcome(rounds, n * (n - 1), quarantined,
                   paths_in_evidence(fleet, fleet.bad_paths, quarantined))


def run_chs(fleet: Fleet, rng: random.Random) -> Outcome:
    failed_pairs: set[frozenset[str]] = set()
    suspects: list[str] = []
    passed: list[str] = []
    first = random_pairs(fleet.names, rng)
    for a, b in first:
        if fleet.fails(a, b, rng):
            suspects += (a, b)
            failed_pairs.add(frozenset((a, b)))
        else:
            passed += (a, b)
    if not suspects:
        return Outcome(1, 2 * len(first), frozenset(), frozenset())
    rng.shuffle(suspects)
    rng.shuffle(passed)
    quarantined = set()
    second = list(zip(suspects, passed, strict=False))
    for suspect, witness in second:
        if fleet.fails(suspect, witness, rng):
            quarantined.add(suspect)
    quarantined_f = frozenset(quarantined)
    return Outcome(2, 2 * (len(first) + len(second)), quarantined_f,
                   paths_in_evidence(fleet, failed_pairs, quarantined_f))


RUNNERS: dict[str, Callable[[Fleet, random.Random], Outcome]] = {
    "kiln": run_kiln, "imbue": run_imbue, "superbench": run_superbench, "chs": run_chs}


# ---- the figures -----------------------------------------------------------------------------

@dataclass
class Tally:
    method: str
    bad_fraction: float
    rounds: list[int] = field(default_factory=list)
    gpu_hours: list[float] = field(default_factory=list)
    false_quarantines: int = 0
    bad_missed: int = 0
    flaky_caught: int = 0
    flaky_total: int = 0
    paths_found: int = 0
    paths_total: int = 0
    seconds: float = 0.0

    def add(self, fleet: Fleet, outcome: Outcome) -> None:
        self.rounds.append(outcome.rounds)
        self.gpu_hours.append(fleet.model.gpu_hours(outcome.nodes_in_runs))
        self.false_quarantines += len(outcome.quarantined & fleet.good)
        self.bad_missed += len(set(fleet.bad) - outcome.quarantined)
        self.flaky_caught += len(fleet.flaky & outcome.quarantined)
        self.flaky_total += len(fleet.flaky)
        self.paths_found += len(outcome.paths_found & fleet.bad_paths)
        self.paths_total += len(fleet.bad_paths)

    def row(self) -> dict[str, object]:
        return {
            "method": self.method,
            "bad_fraction": self.bad_fraction,
            "runs": len(self.rounds),
            "mean_rounds": round(statistics.fmean(self.rounds), 3),
            "max_rounds": max(self.rounds),
            "gpu_hours": round(statistics.fmean(self.gpu_hours), 1),
            "false_quarantines": self.false_quarantines,
            "bad_missed": self.bad_missed,
            "flaky_caught": self.flaky_caught,
            "flaky_total": self.flaky_total,
            "paths_found": self.paths_found,
            "paths_total": self.paths_total,
            "rounds_histogram": {str(r): n for r, n in sorted(Counter(self.rounds).items())},
        }


def simulate(method: str, bad_fraction: float, runs: int, nodes: int, seed: int,
             model: Model) -> Tally:
    """`runs` fleets, the same ones for every method: fleet i of a setting is drawn from
    (seed, setting, i), and the method's own choices from a second stream."""
    tally = Tally(method, bad_fraction)
    start = time.perf_counter()
    for i in range(runs):
        fleet = Fleet(nodes, bad_fraction, model, random.Random(f"{seed}/{bad_fraction}/{i}"))
        rng = random.Random(f"{seed}/{bad_fraction}/{i}/{method}")
        tally.add(fleet, RUNNERS[method](fleet, rng))
    tally.seconds = time.perf_counter() - start
    return tally


def table(rows: list[dict[str, object]]) -> str:
    head = (f"{'method':<11} {'bad':>4} {'rounds':>6} {'max':>4} {'GPU-h/run':>10} "
            f"{'false q.':>8} {'bad missed':>10} {'flaky caught':>14} {'paths found':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        flaky = f"{r['flaky_caught']}/{r['flaky_total']}"
        paths = f"{r['paths_found']}/{r['paths_total']}"
        lines.append(
            f"{r['method']:<11} {r['bad_fraction']:>4.0%} {r['mean_rounds']:>6.2f} "
            f"{r['max_rounds']:>4} {r['gpu_hours']:>10,.0f} {r['false_quarantines']:>8} "
            f"{r['bad_missed']:>10} {flaky:>14} {paths:>12}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated fleets per setting")
    parser.add_argument("--nodes", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bad", type=float, nargs="+", default=list(BAD_FRACTIONS),
                        help="bad-node fractions (default: 0.01 0.03 0.05)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--json", action="store_true", help="the same figures as JSON")
    args = parser.parse_args()
    if args.nodes < 4 or args.runs < 1:
        parser.error("at least 4 nodes and 1 run")

    model = Model()
    rows = []
    for bad_fraction in args.bad:
        for method in args.methods:
            tally = simulate(method, bad_fraction, args.runs, args.nodes, args.seed, model)
            rows.append(tally.row())
            if not args.json:
                print(f"  {method} at {bad_fraction:.0%}: {tally.seconds:.1f} s",
                      file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{args.runs} simulated fleets of {args.nodes} nodes per setting (seed "
              f"{args.seed}); flaky {FLAKY_FRACTION:.0%} at p={model.flaky_p}, {BAD_PATHS} "
              f"bad paths; healthy busbw N({model.busbw_mean:g}, {model.busbw_sd:g}) GB/s, "
              f"cutoff {model.cutoff_gbps:g}")
        print(table(rows))
        for r in rows:
            if r["method"] == "kiln":
                spread = ", ".join(f"{n} in {k}" for k, n in r["rounds_histogram"].items())
                print(f"kiln at {r['bad_fraction']:.0%}: fleets done in rounds: {spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
