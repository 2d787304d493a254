"""`make demo` / `kiln demo`: start the lab, run bring-up on it, print the summary.

Bring-up stops at the first stage that is not built yet, on every node, and says so; the
demo reports that plainly rather than a success.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from lab import cluster
from lab.state import StateError, load_state

ROOT = Path(__file__).resolve().parent.parent
PYINFRA = Path(sys.executable).with_name("pyinfra")


def _ensure_lab() -> None:
    try:
        state = load_state()
    except StateError:
        state = None
    if state is None or not any(node.state == "running" for node in state.nodes):
        cluster.up(gpu_nodes=4, service_nodes=1)


def run(args: argparse.Namespace) -> int:
    _ensure_lab()
    print("kiln demo: pyinfra -y inventory/lab.py deploy/bringup.py", flush=True)
    result = subprocess.run(
        [str(PYINFRA), "-y", "inventory/lab.py", "deploy/bringup.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    sys.stdout.write(output)
    stopped = sorted({line.split("stage '")[1].split("'")[0]
                      for line in output.splitlines() if "is not built yet" in line})
    print("\nkiln demo: summary")
    if result.returncode == 0:
        print("  bring-up finished on every node")
    elif stopped:
        print(f"  bring-up stopped at stage(s) not built yet: {', '.join(stopped)}")
        print("  (the lab stays up: kiln lab status; kiln lab down to stop it)")
    else:
        print(f"  bring-up failed (pyinfra exit {result.returncode}); see the output above")
    return result.returncode
