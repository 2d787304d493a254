"""The OS layer: apt from the mirror only, no unattended upgrades, memlock, sysctl, time sync,
hostname (read on the node)."""

from __future__ import annotations

import re

import pytest


def test_apt_sources_are_the_mirror_only(node):
    listed = node.host.check_output(
        "find /etc/apt/sources.list.d -maxdepth 1 -type f \\( -name '*.list' -o -name "
        "'*.sources' \\)").split()
    assert listed == ["/etc/apt/sources.list.d/kiln-mirror.list"]
    legacy = node.host.file("/etc/apt/sources.list")
    if legacy.exists:
        assert not re.search(r"^\s*deb", legacy.content_string, re.MULTILINE)
    expected = node.apt_indexes
    policy = node.host.check_output("apt-cache policy")
    indexed = set(re.findall(r"^\s*-?\d+\s+(\S+://\S+?)/?\s+(\S+)\s+\S+\s+Packages$", policy,
                             re.MULTILINE))
    assert indexed == expected


def test_sources_are_signed_by_the_keyring(node):
    key = node.host.file("/etc/apt/keyrings/kiln-mirror.asc")
    assert key.exists and "BEGIN PGP PUBLIC KEY BLOCK" in key.content_string
    lines = [line for line in node.host.file("/etc/apt/sources.list.d/kiln-mirror.list")
             .content_string.splitlines() if line.startswith("deb")]
    assert lines and all("[signed-by=/etc/apt/keyrings/kiln-mirror.asc]" in line
                         for line in lines)


def test_unattended_upgrades_off(node):
    assert not node.host.package("unattended-upgrades").is_installed
    periodic = node.host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "0";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "0";' in periodic


def test_memlock_configured_for_logins_and_services(node):
    expected = node.data.get("kiln_memlock") or "unlimited"
    limits = node.host.file("/etc/security/limits.d/90-kiln-rdma.conf").content_string
    for who in ("*", "root"):
        for kind in ("soft", "hard"):
            assert re.search(rf"^{re.escape(who)}\s+{kind}\s+memlock\s+{expected}$", limits,
                             re.MULTILINE), (who, kind)
    systemd = node.host.file("/etc/systemd/system.conf.d/90-kiln-rdma.conf").content_string
    assert "DefaultLimitMEMLOCK=" + ("infinity" if expected == "unlimited" else
                                     str(int(expected) * 1024)) in systemd


CAP_SYS_RESOURCE = 24


def test_memlock_unlimited_for_a_login(node):
    """A new SSH login gets the limit (pam_limits), where root may raise limits at all."""
    status = node.host.file("/proc/self/status").content_string
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    if not bounding >> CAP_SYS_RESOURCE & 1:
        pytest.skip(f"{node.name}: root lacks CAP_SYS_RESOURCE here (a container, or a lab on "
                    "a host without it), so no login can have its memlock limit raised")
    expected = node.data.get("kiln_memlock") or "unlimited"
    assert node.host.check_output("ulimit -l") == expected
    assert node.host.check_output("ulimit -H -l") == expected


def test_sysctl_values(node):
    for key, value in node.sysctl.items():
        current = " ".join(node.host.check_output(f"sysctl -n {key}").split())
        assert current == " ".join(str(value).split()), key


def test_time_from_the_cluster_servers(node):
    servers = node.ntp_servers
    assert servers, f"{node.name}: no NTP server: kiln_ntp_servers unset and no service node"
    assert node.host.package("chrony").is_installed
    conf = node.host.file("/etc/chrony/chrony.conf").content_string
    assert re.findall(r"^server (\S+)", conf, re.MULTILINE) == servers
    assert not re.search(r"^(pool|sourcedir)\b", conf, re.MULTILINE)
    assert node.host.process.filter(comm="chronyd")
    sources = node.host.check_output("chronyc -n sources")
    assert all(server in sources for server in servers)


def test_hostname_is_the_inventory_name(node):
    expected = node.data.get("kiln_hostname") or node.data.get("kiln_node") or node.name
    assert node.host.check_output("hostname") == expected
    assert node.host.file("/etc/hostname").content_string.strip() == expected
