"""Soak of the multi-node burn-in on the lab: the same three bad nodes, many random pairings,
and not one healthy node marked bad.

    sudo .venv/bin/python bench/burnin_soak.py [--runs 20] [--json]

Brings up the deployed lab (8 GPU nodes; the lab lock is `kiln lab up`'s), runs bring-up's
stages up to burn-in once (tests/lab/burnin_deploy.py), injects the faults of
tests/lab/test_burnin.py (gpu-002 wrong results, gpu-004 a degraded NVLink, gpu-006 an HCA
at 200 Gb/s), then runs the multi-node burn-in alone (deploy/burnin.py with
kiln_burnin_pairwise_only) `--runs` times, each with its own seed, under real mpirun. For
each run: the nodes marked bad and their class, the rounds, and the wall time. It prints a
table and a verdict line (healthy nodes ever marked bad; bad nodes ever missed); it asserts
nothing. Takes the machine's lab: never run it while the lab tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT / "tests" / "support"))

FAULTS = {
    "gpu-002": ("gpu-wrong-results", "gpu=3"),
    "gpu-004": ("nvlink-degraded", "gpu=5", "factor=0.6"),
    "gpu-006": ("hca-rate", "hca=1", "rate=200"),
}
EXPECTED = {"gpu-002": "wrong-results", "gpu-004": "below-floor", "gpu-006": "below-floor"}
GPU_NODES = [f"gpu-00{i}" for i in range(1, 9)]
ROUNDS = re.compile(r"burn-in: (\d+) round\(s\)")


def run(*argv: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def pyinfra(deploy: str, data: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "pyinfra"), "-y", "inventory/lab.py", deploy, *data, *extra)


def marked(ledger: Path) -> dict[str, str]:
    from kiln.core.ledger import latest_results

    found = {}
    for node in GPU_NODES:
        rows = latest_results(ledger, node, ("burnin-nccl-multi",))
        for row in rows:
            if str(row.status) != "OK":
                found[node] = f"{row.status}:{json.loads(row.evidence or '{}').get('class')}"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("the lab needs root")
    from lab_data import lab_apt_data

    from kiln.lab.state import load_state

    kiln = str(BIN / "kiln")
    run(kiln, "lab", "down")
    up = run(kiln, "lab", "up", "--deployed", "--nodes", "8", "--service-nodes", "1")
    if up.returncode:
        print(up.stdout[-3000:])
        return 1
    state = load_state()
    data = lab_apt_data(state)
    ledger = Path(state.lab_dir) / "kiln.db"
    rows = []
    try:
        stages = pyinfra("tests/lab/burnin_deploy.py", data)
        if stages.returncode:
            print(stages.stdout[-6000:])
            return 1
        for node, (kind, *fields) in FAULTS.items():
            run(kiln, "lab", "fault", node, kind, *fields)
        for k in range(args.runs):
            seed = args.first_seed + k
            started = time.monotonic()
            out = pyinfra("deploy/burnin.py", data, "--data", "kiln_burnin_pairwise_only=true",
                          "--data", f"kiln_burnin_seed={seed}")
            seconds = time.monotonic() - started
            found = marked(ledger)
            rounds = ROUNDS.search(out.stdout)
            row = {
                "seed": seed, "seconds": round(seconds, 1),
                "rounds": int(rounds.group(1)) if rounds else None, "marked": found,
                "healthy_marked": sorted(set(found) - set(EXPECTED)),
                "bad_missed": sorted(n for n, cls in EXPECTED.items()
                                     if found.get(n) != f"CRITICAL:{cls}"),
            }
            rows.append(row)
            if not args.json:
                print(f"seed {seed}: {row['rounds']} rounds, {seconds:.0f} s, marked "
                      f"{found}", flush=True)
    finally:
        run(kiln, "lab", "down")
    healthy = sum(len(r["healthy_marked"]) for r in rows)
    missed = sum(len(r["bad_missed"]) for r in rows)
    if args.json:
        print(json.dumps({"runs": rows, "healthy_marked": healthy, "bad_missed": missed},
                         indent=2))
    else:
        rounds = [r["rounds"] for r in rows if r["rounds"]]
        print(f"{len(rows)} runs: healthy nodes marked bad {healthy}, bad nodes missed or "
              f"misclassed {missed}; rounds mean {sum(rounds) / max(len(rounds), 1):.2f} "
              f"max {max(rounds, default=0)}; "
              f"mean {sum(r['seconds'] for r in rows) / max(len(rows), 1):.0f} s per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
