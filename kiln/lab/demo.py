"""`make demo` / `kiln demo`: start the lab, run bring-up on it, print the summary.

Bring-up stops at the first stage that is not built yet, on every node, and says so; the
demo reports that plainly rather than a success.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from kiln.lab import cluster
from kiln.lab.state import StateError, load_state


def _checkout() -> Path:
    """The directory holding inventory/lab.py and deploy/: the current one when it has
    them (an installed kiln), else the checkout this module sits in."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "deploy" / "bringup.py").is_file():
            return candidate
    raise SystemExit("kiln demo: run it from a kiln checkout (deploy/bringup.py not found)")

PYINFRA = Path(sys.executable).with_name("pyinfra")


def _ensure_lab() -> None:
    """A lab that is up (new rack or deployed) is used as it is; otherwise a new rack."""
    try:
        load_state()
    except StateError:
        cluster.up(gpu_nodes=4, service_nodes=1)


def run(args: argparse.Namespace) -> int:
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
    print("\nkiln demo: summary")
    if result.returncode == 0:
        print("  bring-up finished on every node")
    elif stopped:
        print(f"  bring-up stopped at stage(s) not built yet: {', '.join(stopped)}")
        print("  (the lab stays up: kiln lab status; kiln lab down to stop it)")
    else:
        print(f"  bring-up failed (pyinfra exit {result.returncode}); see the output above")
    return result.returncode
