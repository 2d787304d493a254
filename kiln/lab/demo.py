"""`make demo` / `kiln demo`: start the lab, run bring-up on it, print the summary.

A lab that is not up is started as a new rack (4 GPU nodes, 1 service node: blank, powered
off, New in MAAS) with the faults of demo-faults.yaml: two bad GPU nodes of different kinds.
Bring-up images the rack and runs every stage; the healthy nodes end in the pool and each
bad node quarantined with its reason. The summary is read from the ledger. The exit code is
pyinfra's: non-zero when not every node made it, as it is with the two bad nodes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from kiln.core.ledger import NodeState, node_overview
from kiln.lab import cluster
from kiln.lab.inventory import lab_host_data
from kiln.lab.state import StateError, load_state


def _checkout() -> Path:
    """The directory holding inventory/lab.py and deploy/: the current one when it has
    them (an installed kiln), else the checkout this module sits in."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "deploy" / "bringup.py").is_file():
            return candidate
    raise SystemExit("kiln demo: run it from a kiln checkout (deploy/bringup.py not found)")

PYINFRA = Path(sys.executable).with_name("pyinfra")
DEMO_FAULTS = Path(__file__).with_name("demo-faults.yaml")


def _ensure_lab() -> None:
    """A lab that is up (new rack or deployed) is used as it is; otherwise a new rack."""
    try:
        load_state()
    except StateError:
        cluster.up(gpu_nodes=4, service_nodes=1, faults_file=DEMO_FAULTS)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    _ensure_lab()
    print("kiln demo: pyinfra -y inventory/lab.py deploy/bringup.py", flush=True)
    process = subprocess.Popen(
        [str(PYINFRA), "-y", "inventory/lab.py", "deploy/bringup.py"],
        cwd=_checkout(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:  # shown as it comes: imaging takes a while
        sys.stdout.write(line)
        lines.append(line)
    result = subprocess.CompletedProcess(process.args, process.wait())
    output = "".join(lines)
    stopped = sorted({line.split("stage '")[1].split("'")[0]
                      for line in output.splitlines() if "is not built yet" in line})
    print(f"\nkiln demo: summary ({time.monotonic() - started:.0f} s)")
    print(summary(_ledger()), end="")
    if result.returncode == 0:
        print("  bring-up finished on every node")
    elif stopped:
        print(f"  bring-up stopped at stage(s) not built yet: {', '.join(stopped)}")
    else:
        print(f"  not every node made it (pyinfra exit {result.returncode}): the reasons are "
              "above; kiln nodes NODE --ledger " + str(_ledger()) + " for a node's history")
    print("  (the lab stays up: kiln lab status; kiln lab down to stop it)")
    return result.returncode


def _ledger() -> Path:
    """The lab's ledger, as the lab inventory names it (host data kiln_ledger)."""
    state = load_state()
    return Path(lab_host_data(state, state.nodes[0])["kiln_ledger"])


def summary(ledger: Path) -> str:
    """The GPU nodes as the ledger holds them after the run: pooled, and every other one
    with its state and reason."""
    rows = [row for row in node_overview(ledger) if not row.node.startswith("svc-")]
    pooled = [row.node for row in rows if row.state == NodeState.POOLED]
    lines = [f"  pooled ({len(pooled)}): {', '.join(pooled) or 'none'}"]
    for row in rows:
        if row.state != NodeState.POOLED:
            lines.append(f"  {row.state}: {row.node}: {row.reason}")
    return "\n".join(lines) + "\n"
