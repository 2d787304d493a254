"""tests/lab/test_pin_stack.py asserts the testinfra suite's exact outcome from counts it
keeps (SUITE_PER_NODE, PACKAGES_PER_NODE, three tests per pinned package). Collecting the
suite for a GPU node without connecting to it (--collect-only) keeps those counts honest
where no lab runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def pin_stack():
    spec = importlib.util.spec_from_file_location("pin_stack", ROOT / "tests/lab/test_pin_stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collected(tests: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", tests, "--collect-only", "-q", "-p", "no:cacheprovider",
         "--hosts", "ssh://root@gpu-006:1,ssh://root@gpu-007:1", "--kiln-sku", "lab",
         "--kiln-role", "gpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize("tests, fixed", [("tests/lab/testinfra", "SUITE_PER_NODE"),
                                          ("tests/lab/testinfra/test_pinned_packages.py",
                                           "PACKAGES_PER_NODE")])
def test_pin_stack_counts_are_what_the_suite_collects(tests, fixed):
    module = pin_stack()
    from kiln.core.manifest import load_manifest
    from kiln.roles.infiniband.pinsets import ofed_keys
    from kiln.roles.nvidia.pinsets import nvidia_keys

    manifest = load_manifest(ROOT / module.MANIFEST)
    pins = len(manifest.os.kernel.packages) + sum(
        1 for key in (*ofed_keys(), *nvidia_keys()) if manifest.packages.get(key) is not None)
    ids = collected(tests)
    for node in module.NODES:
        mine = [test for test in ids if re.search(rf"\[.*\b{node}\b.*\]$", test)]
        assert len(mine) == getattr(module, fixed) + 3 * pins, node
    assert len(ids) == len(module.NODES) * (getattr(module, fixed) + 3 * pins)
    if fixed == "SUITE_PER_NODE":  # every allowed skip names a test the suite has
        assert set(module.ALLOWED_SKIPS) <= {test.split("::")[-1].split("[")[0] for test in ids}
