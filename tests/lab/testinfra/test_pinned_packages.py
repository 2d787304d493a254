"""Every package the manifest pins is installed at exactly its version, held, and pinned so
apt would not move it (read back with dpkg-query, apt-mark and apt-cache on the node)."""

from __future__ import annotations

import re

import pytest


def _installed(node) -> dict[str, str]:
    listed = node.read("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'")
    versions = {}
    for line in listed.splitlines():
        name, version, status = (line.split(" ", 2) + [""])[:3]
        if status[1:2] == "i":
            versions[name] = version
    return versions


def _policy(node, name: str) -> str:
    """`apt-cache policy` of the package (one call for every pinned name of the node)."""
    names = sorted({pin[0] for pin in node.pins.values()})
    text = node.read("apt-cache policy " + " ".join(names))
    sections = re.split(r"^(?=\S+:$)", text, flags=re.MULTILINE)
    return next((section for section in sections if section.startswith(f"{name}:\n")), "")


def test_installed_at_the_pinned_version(node_pin):
    node, field = node_pin
    name, version, _ = node.pins[field]
    assert _installed(node).get(name) == version, f"{node.name}: {field} pins {name}={version}"


def test_held(node_pin):
    node, field = node_pin
    name, _, hold = node.pins[field]
    held = set(node.read("apt-mark showhold").split())
    assert (name in held) == hold, f"{node.name}: {field}: {name} held={name in held}"


def test_apt_candidate_is_the_pinned_version(node_pin):
    """An `apt-get install/upgrade` on the node would not move the package: its candidate
    is the pinned version (the preferences pin wins over newer releases)."""
    node, field = node_pin
    name, version, _ = node.pins[field]
    policy = _policy(node, name)
    candidate = re.search(r"^\s*Candidate:\s*(\S+)", policy, re.MULTILINE)
    assert candidate and candidate.group(1) == version, policy
    assert re.search(rf"^\s*\*\*\*\s+{re.escape(version)}\s+1001$", policy, re.MULTILINE), policy


@pytest.mark.gpu_node
def test_no_other_driver_branch_is_installed(node):
    """Only the pinned branch's driver packages: a branch change removed the old ones."""
    driver, version, _ = node.pins["packages.nvidia-driver"]
    branch = version.split(".", 1)[0]
    branches = {m.group(1) for name in _installed(node)
                for m in [re.fullmatch(r"(?:lib)?nvidia-[a-z0-9-]*?-(\d{3})(?:-server)?(?:-open)?",
                                       name)] if m}
    assert branches == {branch}, f"{node.name}: driver branches installed: {sorted(branches)}"
