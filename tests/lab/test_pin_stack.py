"""Pin the stack (base, OFED, NVIDIA) on two lab GPU nodes with the real roles, then read the
result back on the nodes with the testinfra suite (tests/lab/testinfra), never from kiln's
own output.

    pyinfra -y inventory/lab.py tests/lab/pin_stack_deploy.py --limit gpu-006,gpu-007

In the lab the NVIDIA kernel module changes only when a node boots: a run that installs or
changes the driver reboots the node through its BMC (roles/bmc against the lab's Redfish
BMCs) and checks nvidia-smi after the new boot.

The suite's outcome is asserted exactly: it must collect the number of tests the manifest
implies for each node (SUITE_PER_NODE plus three per pinned package), and every one must
pass; a skip is accepted only where ALLOWED_SKIPS names the test and the reason it gives.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from lab_data import lab_stage_data

from kiln.core.manifest import load_manifest
from kiln.lab import cluster
from kiln.lab.inventory import lab_host_data
from kiln.roles.infiniband.pinsets import ofed_keys
from kiln.roles.nvidia.pinsets import nvidia_keys

pytestmark = pytest.mark.lab

NODES = ("gpu-006", "gpu-007")
DEPLOY = "tests/lab/pin_stack_deploy.py"
MANIFEST = "kiln/firmware/lab.yaml"
REBOOTING = "rebooting through the BMC"
# Lab nodes share their host's kernel: only settings that live in a network namespace.
LAB_SYSCTL = {
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.tcp_rmem": "4096 87380 134217728",
    "net.ipv4.tcp_wmem": "4096 65536 134217728",
}
DCGM = ("datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-cuda12")
BRANCH_550 = "550.144.03-1kilnlab1"
PACKAGE_TESTS = "tests/lab/testinfra/test_pinned_packages.py"
# What tests/lab/testinfra collects for one of NODES (GPU nodes with a Redfish BMC) besides
# three tests per pinned package (installed, held, apt candidate; test_pinned_packages):
#   test_base_os            8  apt sources, keyring, unattended upgrades, memlock files,
#                              memlock of a login, sysctl, time sync, hostname
#   test_firmware_versions  3  Redfish inventory, ConnectX (mlxfwmanager), GPU VBIOS
#   test_nvidia_driver      4  driver on every GPU, fabric manager, persistenced, dcgm
#   test_pinned_packages    1  no other driver branch
SUITE_PER_NODE = 8 + 3 + 4 + 1
PACKAGES_PER_NODE = 1  # test_pinned_packages.py alone, besides three per pin
# The only skips the suite may report, each with the reason it must give. A lab whose host
# gives root no CAP_SYS_RESOURCE (the lab itself in a container) cannot raise a login's
# memlock limit, so that one test cannot tell; anything else skipped is a failure here.
ALLOWED_SKIPS = {
    "test_memlock_unlimited_for_a_login": "root lacks CAP_SYS_RESOURCE here",
}


def lab_data(state) -> dict:
    """The shared lab stage data (tests/support/lab_data.py) and this module's sysctl
    settings, less what the lab inventory already carries."""
    wanted = {**lab_stage_data(state), "kiln_sysctl": LAB_SYSCTL}
    inventory = lab_host_data(state, state.node(NODES[0]))
    return {key: value for key, value in wanted.items() if key not in inventory}


def data_args(option: str, data: dict) -> list[str]:
    args = []
    for key, value in data.items():
        args += [option, f"{key}={json.dumps(value)}"]
    return args


@pytest.fixture(scope="module")
def stack(lab, labtools, tmp_path_factory):
    # chronyd starts under the lab's unit manager through the image's drop-in (lab/rootfs.py).
    for node in NODES:
        labtools.ssh(lab, node, "test -f /etc/systemd/system/chrony.service.d/kiln-lab.conf")

    class Stack:
        data = lab_data(lab)
        work = tmp_path_factory.mktemp("pin-stack")

        def deploy(self, firmware_dir: Path | None = None) -> subprocess.CompletedProcess:
            extra = dict(self.data)
            if firmware_dir is not None:
                extra["kiln_firmware_dir"] = str(firmware_dir)
            limits = [arg for node in NODES for arg in ("--limit", node)]
            result = subprocess.run(
                [str(labtools.bin / "pyinfra"), "-y", "inventory/lab.py", DEPLOY, *limits,
                 *data_args("--data", extra)],
                cwd=labtools.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=600,
            )
            # pyinfra exits 0 when --limit matches nothing: make sure both nodes ran.
            for node in NODES:
                assert f"[{node}] " in result.stdout, result.stdout
            return result

        def converge(self, firmware_dir: Path | None = None) -> subprocess.CompletedProcess:
            """A run that must succeed on both nodes."""
            result = self.deploy(firmware_dir)
            assert result.returncode == 0, result.stdout
            return result

        def suite(self, firmware_dir: Path | None = None,
                  tests: str = "tests/lab/testinfra") -> subprocess.CompletedProcess:
            """The testinfra suite's run; `.report` is its JUnit XML (every test's outcome)."""
            report = self.work / f"suite-{len(list(self.work.glob('suite-*.xml')))}.xml"
            args = ["--kiln-inventory", "inventory/lab.py", "--kiln-limit", ",".join(NODES),
                    *data_args("--kiln-data", self.data), f"--junitxml={report}"]
            if firmware_dir is not None:
                args += ["--kiln-firmware-dir", str(firmware_dir)]
            result = subprocess.run(
                [str(labtools.bin / "pytest"), tests, "-q", "-p", "no:cacheprovider", *args],
                cwd=labtools.root, capture_output=True, text=True, timeout=600,
            )
            result.report = report  # type: ignore[attr-defined]
            return result

        def pins(self, firmware_dir: Path | None = None) -> int:
            """How many packages the manifest pins on a GPU node: the kernel packages and
            the OFED and NVIDIA package sets (what the suite's node_pin tests take)."""
            directory = firmware_dir or (labtools.root / MANIFEST).parent
            manifest = load_manifest(directory / "lab.yaml")
            keys = [*ofed_keys(), *nvidia_keys()]
            return len(manifest.os.kernel.packages) + sum(
                1 for key in keys if manifest.packages.get(key) is not None)

        def packages(self, node: str) -> dict[str, str]:
            out = labtools.ssh(lab, node, "dpkg-query -W -f '${Package} ${Version} "
                                          "${db:Status-Abbrev}\\n'")
            return {line.split()[0]: line.split()[1] for line in out.splitlines()
                    if line.split()[2][1:2] == "i"}

        def holds(self, node: str) -> set[str]:
            return set(labtools.ssh(lab, node, "apt-mark showhold").split())

        def manifest_copy(self, name: str, change: dict) -> Path:
            directory = self.work / name
            directory.mkdir()
            document = yaml.safe_load((labtools.root / MANIFEST).read_text())
            document["packages"].update(change)
            (directory / "lab.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
            return directory

    yield Stack()
    for node in NODES:
        cluster.reset_node(node, wait=True)


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """Test id -> (outcome, message) from pytest's JUnit XML report."""
    found = {}
    for case in ET.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, child.get("message") or ""
                break
        found[f"{case.get('classname')}::{case.get('name')}"] = (outcome, message)
    return found


def assert_suite_passed(result: subprocess.CompletedProcess, per_node: int) -> None:
    """Exactly `per_node` tests ran on each of NODES (and none elsewhere), every one passed
    or skipped as ALLOWED_SKIPS allows."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = outcomes(result.report)  # type: ignore[attr-defined]
    for node in NODES:
        mine = [test for test in found if re.search(rf"\[.*\b{node}\b.*\]$", test)]
        assert len(mine) == per_node, (node, per_node, sorted(mine), output)
    assert len(found) == per_node * len(NODES), (sorted(found), output)
    wrong = []
    for test, (outcome, message) in sorted(found.items()):
        name = test.split("::")[-1].split("[")[0]
        if outcome == "skipped" and ALLOWED_SKIPS.get(name, "\0") in message:
            continue
        if outcome != "passed":
            wrong.append(f"{test}: {outcome}: {message}")
    assert wrong == [], "\n".join(wrong) + "\n" + output


def totals(result: subprocess.CompletedProcess) -> list[str]:
    """The Grand total row of pyinfra's results: hosts, success, error, no change."""
    match = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", result.stdout)
    assert match, result.stdout
    return list(match.groups())


def rebooted(result: subprocess.CompletedProcess, running: str) -> None:
    """Each node said which driver ran before, was rebooted through its BMC, came back."""
    for node in NODES:
        lines = [line for line in result.stdout.splitlines() if f"[{node}] " in line]
        assert [line for line in lines if running in line and REBOOTING in line], result.stdout
        assert [line for line in lines if "BMC: rebooted" in line], result.stdout


def test_first_run_pins_the_stack_and_the_driver_runs_after_a_boot(stack):
    result = stack.converge()
    # A fresh node has no NVIDIA module until it boots with the driver installed.
    rebooted(result, "running: no module loaded")
    assert_suite_passed(stack.suite(), SUITE_PER_NODE + 3 * stack.pins())
    for node in NODES:
        # The OFED release moves with its exact companions (mft, infiniband-diags ...).
        assert {"nvidia-driver-570-server-open", "doca-ofed", "mft"} <= stack.holds(node)
        assert stack.packages(node)["doca-ofed"] == "2.9.1-1kilnlab1"


def test_a_second_run_changes_nothing(stack):
    result = stack.deploy()
    assert result.returncode == 0, result.stdout
    hosts, success, error, no_change = totals(result)
    assert (success, error) == ("-", "-"), result.stdout
    assert hosts == no_change


def test_one_version_changed_in_the_manifest_moves_only_that_package(stack):
    before = {node: stack.packages(node) for node in NODES}
    changed = stack.manifest_copy("dcgm-4.1.1", {
        "dcgm": {"name": "datacenter-gpu-manager-4-cuda12", "version": "1:4.1.1-1kilnlab1"}})
    result = stack.deploy(changed)
    assert result.returncode == 0, result.stdout
    for node in NODES:
        after = stack.packages(node)
        moved = {name for name in set(before[node]) | set(after)
                 if before[node].get(name) != after.get(name)}
        assert moved == set(DCGM), node
        assert {after[name] for name in DCGM} == {"1:4.1.1-1kilnlab1"}
        assert set(DCGM) <= stack.holds(node)
    # Only the DCGM package set's operation changed something.
    changed_ops = [line for line in result.stdout.splitlines()
                   if re.search(r"\|\s.*\s+2\s+2\s+-\s+-\s*$", line)]
    assert len(changed_ops) == 1 and "NVIDIA packages exact and held" in changed_ops[0], (
        result.stdout)
    # The suite reads the drift against the shipped manifest, and only there.
    drifted = stack.suite(tests=PACKAGE_TESTS)
    found = outcomes(drifted.report)
    assert len(found) == len(NODES) * (PACKAGES_PER_NODE + 3 * stack.pins()), drifted.stdout
    failed = {test.split("::")[-1] for test, (outcome, _) in found.items() if outcome != "passed"}
    # installed and apt's candidate are 4.1.1, not the shipped pin; still held, as pinned
    assert drifted.returncode != 0 and failed == {
        f"{name}[{node}:packages.dcgm]" for node in NODES
        for name in ("test_installed_at_the_pinned_version",
                     "test_apt_candidate_is_the_pinned_version")}, drifted.stdout
    assert_suite_passed(stack.suite(changed, tests=PACKAGE_TESTS),
                        PACKAGES_PER_NODE + 3 * stack.pins(changed))


def test_driver_branch_change_runs_after_the_reboot_and_back(stack):
    branch_550 = stack.manifest_copy("driver-550", {
        "nvidia-driver": {"name": "nvidia-driver-550-server-open", "version": BRANCH_550},
        "nvidia-fabricmanager": {"name": "nvidia-fabricmanager-550", "version": BRANCH_550},
        "nvidia-persistenced": {"name": "nvidia-compute-utils-550-server",
                                "version": BRANCH_550},
    })
    # Installed, not yet running: the 570 module answers with a version mismatch.
    rebooted(stack.converge(branch_550), "running: module 570.148.08; nvidia-smi: Failed to "
             "initialize NVML: Driver/library version mismatch")
    for node in NODES:
        installed = stack.packages(node)
        assert not [name for name in installed if re.search(r"-570(-|$)", name)], node
        assert installed["nvidia-fabricmanager-550"] == BRANCH_550
        assert {"nvidia-driver-550-server-open", "nvidia-fabricmanager-550",
                "libnvidia-compute-550-server"} <= stack.holds(node)
    assert_suite_passed(stack.suite(branch_550), SUITE_PER_NODE + 3 * stack.pins(branch_550))
    # And up again to the shipped 570.
    rebooted(stack.converge(), "running: module 550.144.03")
    assert_suite_passed(stack.suite(), SUITE_PER_NODE + 3 * stack.pins())
    shutil.rmtree(branch_550)
