"""The lab for lab tests: one session-wide lab (8 GPU nodes + 1 service node), torn down at end.

The lab is global to the machine (bridge kilnbr0, netns kiln-*), so every lab test in the
session shares this one. The base root filesystem is built first if it is not cached, so
the printed bring-up time is the cached-base time the lab promises (under a minute).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab.state import LabState, lab_dir, load_state

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GPU_NODES = 8
SERVICE_NODES = 1
# Measured, not asserted: printed at the end of the run.
TIMINGS: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in TIMINGS:
        terminalreporter.write_line(f"lab timing: {line}")


def kiln_lab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / "kiln"), "lab", *args], cwd=ROOT, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kiln lab {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def ssh(state: LabState, node: str, command: str, check: bool = True) -> str:
    address = state.node(node).address
    result = subprocess.run(
        [
            "ssh", "-i", state.ssh_key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"root@{address}", command,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ssh {node} {command!r}: {result.returncode}\n{result.stderr}")
    return result.stdout


def bring_up() -> float:
    """`kiln lab up` of the test shape; returns the seconds it took."""
    started = time.monotonic()
    kiln_lab(
        "up", "--deployed", "--nodes", str(GPU_NODES), "--service-nodes", str(SERVICE_NODES)
    )
    return time.monotonic() - started


@pytest.fixture(scope="session")
def lab() -> LabState:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (namespaces, mounts, bridge); CI runs them as root")
    from lab.rootfs import ensure_base

    # Tests own the machine's lab: a lab left running by someone else is stopped first.
    kiln_lab("down")
    ensure_base(lab_dir())
    seconds = bring_up()
    TIMINGS.append(f"{GPU_NODES + SERVICE_NODES} nodes up in {seconds:.1f} s (cached base)")
    yield load_state()
    kiln_lab("down")


@pytest.fixture(scope="session")
def labtools() -> SimpleNamespace:
    """Helpers for lab tests: `ssh(state, node, cmd)`, `kiln(*args)`, `bring_up()`, paths."""
    return SimpleNamespace(
        ssh=ssh,
        kiln=kiln_lab,
        bring_up=bring_up,
        root=ROOT,
        bin=BIN,
        gpu_nodes=GPU_NODES,
        service_nodes=SERVICE_NODES,
    )
