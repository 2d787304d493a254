"""The lab for lab tests, in the shape each test module needs, torn down at the end.

The lab is global to the machine (bridge kilnbr0, netns kiln-*), so there is one at a time.
Most modules use `lab`: 8 GPU nodes + 1 service node, started `--deployed` (imaged and
running). Provisioning tests ask for a new rack (`lab_shapes.new_rack(...)`: nodes New in
MAAS, blank and powered off); the next module that uses `lab` gets the deployed lab back.
A shape is brought up only when it is not the one running. The base root filesystem is
built first if it is not cached, so the printed bring-up time is the cached-base time the
lab promises (under a minute).

Bring-up's GPU stages up to burn-in (`gpu_stages`) run once on the deployed lab for the two
modules that stand on them: test_burnin, then test_health, right after it (test_burnin is
moved to just before test_health in the collection order). test_burnin clears its faults
when it ends and hands the lab on; test_health's faults stay behind, so it forgets the lab.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from lab_data import lab_apt_data

from kiln.lab.state import LabState, lab_dir, load_state

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GPU_NODES = 8
SERVICE_NODES = 1
# Measured, not asserted: printed at the end of the run.
TIMINGS: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in TIMINGS:
        terminalreporter.write_line(f"lab timing: {line}")


# The modules that stand on one run of the GPU stages, in the order they run: the first
# clears its faults and hands the lab on; the second's faults stay (it forgets the lab).
GPU_STAGES_MODULES = ("test_burnin.py", "test_health.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """test_burnin runs right before test_health (nothing between them changes the lab), so
    both use one run of the GPU stages; it runs where test_health did, on the lab the module
    before leaves. Every other test keeps its order."""
    here = Path(__file__).parent
    first, second = (
        [item for item in items if item.path.parent == here and item.path.name == name]
        for name in GPU_STAGES_MODULES)
    if not first or not second:
        return
    rest = [item for item in items if item not in first]
    before = rest.index(second[0])
    items[:] = rest[:before] + first + rest[before:]


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


def bring_up(*args: str) -> float:
    """`kiln lab up` of the test shape (or of `args`); returns the seconds it took.

    A failed `up` fails the test that needed it: no second try. What `up` had to start more
    than once (an ipmi_sim that did not bind at its first start: lab/bmc/ipmi.py) is put in
    the run's summary, so a BMC that needed a second start is never silent."""
    started = time.monotonic()
    result = kiln_lab("up", *(args or DEPLOYED_SHAPE))
    TIMINGS.extend(f"kiln lab up {' '.join(args or DEPLOYED_SHAPE)}: {line.strip()}"
                   for line in (result.stdout + result.stderr).splitlines()
                   if "bound at start" in line)
    return time.monotonic() - started


DEPLOYED_SHAPE = ("--deployed", "--nodes", str(GPU_NODES), "--service-nodes",
                  str(SERVICE_NODES))


GPU_STAGES = "tests/lab/gpu_stages_deploy.py"


@dataclass
class GpuStages:
    """One run of bring-up's GPU stages up to burn-in on every GPU node of the deployed lab."""

    result: subprocess.CompletedProcess[str]  # pyinfra's output on stdout (stderr with it)
    seconds: float
    allowlist: Path  # the site boot-log allowlist the health stage was given (none there yet)


class LabShapes:
    """Which lab runs now; `ensure` brings up another shape only when asked for one."""

    def __init__(self) -> None:
        self.current: tuple[str, ...] | None = None
        self.gpu_stages: GpuStages | None = None  # run on the lab that runs now, if run

    def ensure(self, shape: tuple[str, ...]) -> LabState:
        if self.current != shape:
            kiln_lab("down")
            self.current = None
            self.gpu_stages = None
            seconds = bring_up(*shape)
            TIMINGS.append(f"kiln lab up {' '.join(shape)}: {seconds:.1f} s (cached base)")
            self.current = shape
        return load_state()

    def deployed(self) -> LabState:
        return self.ensure(DEPLOYED_SHAPE)

    def new_rack(self, gpu_nodes: int, service_nodes: int, faults: Path | None = None,
                 ) -> LabState:
        shape = ("--nodes", str(gpu_nodes), "--service-nodes", str(service_nodes))
        if faults is not None:
            shape += ("--faults", str(faults))
        return self.ensure(shape)

    def forget(self) -> None:
        """A test changed the lab beyond its shape (reimaged nodes): start afresh next time."""
        self.current = None
        self.gpu_stages = None

    def hand_on_gpu_stages(self, request: pytest.FixtureRequest) -> None:
        """A module that stood on the GPU stages and cleared its faults ends: the lab stays for
        a later module of this run that stands on them too, and is forgotten otherwise (the
        nodes carry the stages: not the deployed shape other modules expect)."""
        items = request.session.items
        mine = [n for n, item in enumerate(items) if item.path == request.path]
        if not mine or not any("gpu_stages" in item.fixturenames
                               for item in items[mine[-1] + 1:]):
            self.forget()


@pytest.fixture(scope="session")
def lab_shapes() -> LabShapes:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (namespaces, mounts, bridge); CI runs them as root")
    from kiln.lab.rootfs import ensure_base

    # Tests own the machine's lab: a lab left running by someone else is stopped first.
    kiln_lab("down")
    ensure_base(lab_dir())
    shapes = LabShapes()
    yield shapes
    kiln_lab("down")


@pytest.fixture(scope="module")
def lab(lab_shapes: LabShapes) -> LabState:
    """The deployed lab: 8 GPU + 1 service node, imaged and running."""
    return lab_shapes.deployed()


@pytest.fixture(scope="module")
def gpu_stages(lab_shapes: LabShapes, tmp_path_factory: pytest.TempPathFactory) -> GpuStages:
    """Bring-up's stages up to burn-in (base, OFED, NVIDIA, the fabric, health, burn-in) on
    every GPU node of the deployed lab, as one pyinfra run; run again only on a lab brought up
    or forgotten since."""
    state = lab_shapes.deployed()
    if lab_shapes.gpu_stages is None:
        allowlist = tmp_path_factory.mktemp("gpu-stages") / "bootlog-allowlist.txt"
        command = [str(BIN / "pyinfra"), "-y", "inventory/lab.py", GPU_STAGES,
                   *lab_apt_data(state), "--data", f"kiln_bootlog_allowlist={allowlist}",
                   "--data", "kiln_burnin_seed=1"]
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=1800)
        seconds = time.monotonic() - started
        TIMINGS.append(f"GPU stages up to burn-in: {seconds:.1f} s")
        lab_shapes.gpu_stages = GpuStages(result, seconds, allowlist)
    return lab_shapes.gpu_stages


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
