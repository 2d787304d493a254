"""Every package the manifest pins is installed at exactly its version, held, and pinned so
apt would not move it (read back with dpkg-query, apt-mark and apt-cache on the node)."""

from __future__ import annotations

import re

import pytest


def _installed(node, names: list[str]) -> dict[str, str]:
    out = node.host.run(
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' " + " ".join(names))
    versions = {}
    for line in out.stdout.splitlines():
        name, version, status = (line.split(" ", 2) + [""])[:3]
        if status.strip()[1:2] == "i":
            versions[name] = version
    return versions


def test_installed_at_the_pinned_version(node_pin):
    node, field = node_pin
    name, version, _ = node.pins[field]
    assert _installed(node, [name]).get(name) == version, (
        f"{node.name}: {field} pins {name}={version}")


def test_held(node_pin):
    node, field = node_pin
    name, _, hold = node.pins[field]
    held = set(node.host.check_output("apt-mark showhold").split())
    assert (name in held) == hold, f"{node.name}: {field}: {name} held={name in held}"


def test_apt_candidate_is_the_pinned_version(node_pin):
    """An `apt-get install/upgrade` on the node would not move the package: its candidate
    is the pinned version (the preferences pin wins over newer releases)."""
    node, field = node_pin
    name, version, _ = node.pins[field]
    policy = node.host.check_output(f"apt-cache policy {name}")
    candidate = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.MULTILINE)
    assert candidate and candidate.group(1) == version, policy
    assert re.search(rf"^\s*\*\*\*\s+{re.escape(version)}\s+1001$", policy, re.MULTILINE), policy


@pytest.mark.gpu_node
def test_no_other_driver_branch_is_installed(node):
    """Only the pinned branch's driver packages: a branch change removed the old ones."""
    driver, version, _ = node.pins["packages.nvidia-driver"]
    branch = version.split(".", 1)[0]
    listed = node.host.check_output("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n'")
    branches = {m.group(1) for line in listed.splitlines() if line.split()[1][1:2] == "i"
                for m in [re.fullmatch(r"(?:lib)?nvidia-[a-z0-9-]*?-(\d{3})(?:-server)?(?:-open)?",
                                       line.split()[0])] if m}
    assert branches == {branch}, f"{node.name}: driver branches installed: {sorted(branches)}"
