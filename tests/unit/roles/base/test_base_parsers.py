"""The base role's parsers on what dpkg and apt print (captured on Debian bookworm and on a
lab node), and on what they must refuse."""

from __future__ import annotations

import pytest
from pyinfra.api.exceptions import FactProcessError

from kiln.core.parsing import ParseError
from kiln.roles.base.facts import (
    AptHolds,
    AptPackageIndex,
    AptPolicySources,
    DebPackages,
    FileTexts,
    installed_versions,
)
from kiln.roles.base.parsers import (
    parse_apt_cache_show,
    parse_apt_policy_sources,
    parse_dpkg_query,
    parse_named_files,
    parse_preferences,
    parse_showhold,
)

# `apt-cache show openssh-client apt` on Debian bookworm (two versions of the first).
APT_CACHE_SHOW = """\
Package: openssh-client
Source: openssh
Version: 1:9.2p1-2+deb12u10
Installed-Size: 5801
Maintainer: Debian OpenSSH Maintainers <debian-ssh@lists.debian.org>
Architecture: amd64
Replaces: openssh-sk-helper, ssh, ssh-krb5
Provides: ssh-client
Depends: adduser, passwd, libc6 (>= 2.36), libedit2 (>= 2.11-20080614-0), libfido2-1 (>= 1.8.0), libgssapi-krb5-2 (>= 1.17), libselinux1 (>= 3.1~), libssl3 (>= 3.0.19), zlib1g (>= 1:1.1.4)
Recommends: xauth
Description: secure shell (SSH) client, for secure access to remote machines
Tag: implemented-in::c, interface::commandline, interface::shell,
 network::client, protocol::sftp, protocol::ssh, role::program,
 use::login, use::transmission, works-with::file
Section: net
SHA256: 42c250b8b9110382488c53c066a960bc564ddac2cb9e449f47b6cdbb5fc1cb60

Package: openssh-client
Source: openssh
Version: 1:9.2p1-2+deb12u9
Architecture: amd64
Depends: adduser, passwd, libc6 (>= 2.36)

Package: apt
Version: 2.6.2
Architecture: amd64
Depends: adduser, gpgv | gpgv2 | gpgv1, libapt-pkg6.0 (>= 2.6.2), debian-archive-keyring, libc6 (>= 2.34), libgcc-s1 (>= 3.0), libgnutls30 (>= 3.7.5), libseccomp2 (>= 2.4.2), libstdc++6 (>= 11), libsystemd0
"""  # noqa: E501 (real lines, as apt prints them)

# `apt-cache policy` on a lab node after kiln's base role (bookworm's apt 2.6).
APT_POLICY = """\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 http://10.231.0.1:8081/os bookworm/main amd64 Packages
     release o=kiln-lab,a=bookworm,n=bookworm,l=kiln lab os mirror,c=main,b=amd64
     origin 10.231.0.1
 500 http://10.231.0.1:8081/apt kilnlab/main amd64 Packages
     release o=kiln-lab,a=kilnlab,n=kilnlab,l=kiln lab vendor,c=main,b=amd64
     origin 10.231.0.1
Pinned packages:
     linux-image-6.1.0-28-kilnlab -> 6.1.119-1kilnlab1 with priority 1001
"""

# `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n'` (the abbreviation
# ends in a space: the error flag, none here).
DPKG_QUERY = "".join(f"{line} \n" for line in (
    "apt\t2.6.1\tii",
    "libc6\t2.36-9+deb12u14\tii",
    "nvidia-driver-570-server-open\t570.148.08-1kilnlab1\thi",
    "unattended-upgrades\t2.9.1+nmu3\trc",
    "libc6\t2.36-9+deb12u14\tii",
))


def test_dpkg_query():
    packages = parse_dpkg_query(DPKG_QUERY)
    assert packages["nvidia-driver-570-server-open"] == {
        "version": "570.148.08-1kilnlab1", "want": "h", "status": "i"}
    # removed, configuration files left: not installed
    assert installed_versions(packages) == {
        "apt": "2.6.1", "libc6": "2.36-9+deb12u14",
        "nvidia-driver-570-server-open": "570.148.08-1kilnlab1"}
    assert DebPackages().process(DPKG_QUERY.splitlines())["apt"]["version"] == "2.6.1"


def test_dpkg_query_refuses_other_text():
    with pytest.raises(ParseError, match="line 1"):
        parse_dpkg_query("dpkg-query: no packages found matching x\n")
    with pytest.raises(FactProcessError, match="line 1"):
        DebPackages().process(["Desired=Unknown/Install/Remove/Purge/Hold"])


def test_showhold():
    assert parse_showhold("nvidia-utils-570-server\nlibnccl2\n\n") == [
        "libnccl2", "nvidia-utils-570-server"]
    assert parse_showhold("libc6:i386\n") == ["libc6"]
    with pytest.raises(ParseError, match="line 1"):
        parse_showhold("E: Could not open lock file\n")


def test_apt_cache_show_keeps_every_version_and_its_relations():
    index = parse_apt_cache_show(APT_CACHE_SHOW)
    assert set(index["openssh-client"]) == {"1:9.2p1-2+deb12u10", "1:9.2p1-2+deb12u9"}
    depends = index["openssh-client"]["1:9.2p1-2+deb12u10"]["depends"]
    assert ["zlib1g"] in depends and ["libc6"] in depends and len(depends) == 9
    assert ["gpgv", "gpgv2", "gpgv1"] in index["apt"]["2.6.2"]["depends"]
    assert AptPackageIndex().process(APT_CACHE_SHOW.splitlines()) == index


def test_apt_cache_show_with_pre_depends_and_arch_qualifiers():
    index = parse_apt_cache_show(
        "Package: x\nVersion: 1\nPre-Depends: init-system-helpers (>= 1.54~)\n"
        "Depends: python3:any, libfoo [amd64]\n")
    assert index["x"]["1"]["depends"] == [["init-system-helpers"], ["python3"], ["libfoo"]]


def test_apt_cache_show_refuses_a_record_without_version():
    with pytest.raises(ParseError, match="line 4: a record without Package and Version"):
        parse_apt_cache_show("Package: a\nVersion: 1\n\nPackage: b\n")


def test_apt_index_fact_asks_apt_cache_once_per_name():
    command = AptPackageIndex().command(["b", "a", "b"])
    assert command.startswith("for name in a b; do apt-cache ")
    assert command.count(" show ") == 1


def test_apt_facts_never_write_apt_caches_on_the_node():
    # A fact only reads: apt-cache would otherwise rewrite /var/cache/apt/*.bin (found by
    # the lab's preview test).
    for command in (AptPackageIndex().command(["a"]), AptPolicySources().command(),
                    AptHolds().command()):
        assert "-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=" in command


def test_preferences():
    text = ("# kiln\nPackage: a b\nPin: version 1.0\nPin-Priority: 1001\n\n"
            "Explanation: x\nPackage: c\nPin: release o=Debian\nPin-Priority: 500\n")
    assert parse_preferences(text) == [
        {"package": "a", "pin": "version 1.0", "priority": 1001},
        {"package": "b", "pin": "version 1.0", "priority": 1001},
        {"package": "c", "pin": "release o=Debian", "priority": 500},
    ]
    with pytest.raises(ParseError, match="line 1: record for 'a' lacks Pin"):
        parse_preferences("Package: a\n")
    with pytest.raises(ParseError, match="'high' is not a number"):
        parse_preferences("Package: a\nPin: version 1\nPin-Priority: high\n")


def test_apt_policy_sources():
    assert parse_apt_policy_sources(APT_POLICY) == [
        {"uri": "http://10.231.0.1:8081/os", "dist": "bookworm/main", "priority": 500},
        {"uri": "http://10.231.0.1:8081/apt", "dist": "kilnlab/main", "priority": 500},
    ]
    with pytest.raises(ParseError, match="Package files"):
        parse_apt_policy_sources("N: Unable to locate package x\n")


def test_named_files():
    text = "==> /etc/a.pref <==\nPackage: a\n\n==> /etc/b.pref <==\nx\n"
    assert parse_named_files(text) == {"/etc/a.pref": "Package: a\n\n", "/etc/b.pref": "x\n"}
    assert parse_named_files("") == {}
    with pytest.raises(ParseError, match="line 1"):
        parse_named_files("stray\n")
    with pytest.raises(ValueError, match="plain path glob"):
        FileTexts().command("/etc/*; rm -rf /")
