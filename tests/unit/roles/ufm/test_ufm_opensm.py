"""opensm's partitions.conf and opensm.conf rendered from the PKey declaration, checked with
a parser of the grammar in opensm's doc/partition-config.txt (linux-rdma/opensm), which
must first accept that document's own examples."""

from __future__ import annotations

import re

import pytest

from kiln.core.fabric import PKeyDeclaration
from kiln.roles.ufm.opensm import OpenSMSettings, render_conf, render_partitions

# doc/partition-config.txt, "Examples" (the multicast-group example aside: kiln writes none)
DOC_EXAMPLES = """
 Default=0x7fff : ALL, SELF=full ;
 Default=0x7fff : ALL, ALL_SWITCHES=full, SELF=full ;

 NewPartition , ipoib : 0x123456=full, 0x3456789034=limi, 0x2134af2306 ;

 YetAnotherOne = 0x300 : SELF=full ;
 YetAnotherOne = 0x300 : ALL=limited ;

 ShareIO = 0x80 , defmember=full : 0x123451, 0x123452;
 # 0x123453, 0x123454 will be limited
 ShareIO = 0x80 : 0x123453, 0x123454, 0x123455=full;
 # 0x123456, 0x123457 will be limited
 ShareIO = 0x80 , defmember=limited : 0x123456, 0x123457, 0x123458=full;
 ShareIO = 0x80 , defmember=full : 0x123459, 0x12345a;
 ShareIO = 0x80 , defmember=full : 0x12345b, 0x12345c=limited, 0x12345d;
 Default=0x7fff,ipoib:ALL=full;
"""
KEYWORDS = {"ALL", "ALL_CAS", "ALL_SWITCHES", "ALL_ROUTERS", "SELF"}
FLAG = re.compile(r"^(indx0|ipoib|defmember=(full|limited|both)|(rate|mtu|sl|scope)=\d+)$")


def parse(text: str) -> list[dict]:
    """[{name, pkey, flags, ports: {guid-or-keyword: membership}}] per definition."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    parts = [p.strip() for p in body.split(";")]
    assert parts[-1] == "", f"text after the last ';': {parts[-1]!r}"
    out = []
    for part in parts[:-1]:
        definition, sep, properties = part.partition(":")
        assert sep, f"no ':' in {part!r}"
        head, *flags = [f.strip() for f in definition.split(",")]
        name, _, pkey = (s.strip() for s in head.partition("="))
        assert re.fullmatch(r"[A-Za-z0-9_.-]*", name), name
        assert pkey == "" or re.fullmatch(r"0x[0-9a-fA-F]{1,4}", pkey), pkey
        for flag in flags:
            assert FLAG.match(flag.replace(" ", "")), f"unknown flag {flag!r}"
        ports = {}
        for spec in filter(None, (s.strip() for s in properties.split(","))):
            who, _, membership = (s.strip() for s in spec.partition("="))
            assert who in KEYWORDS or re.fullmatch(r"0x[0-9a-fA-F]{1,16}|\d+", who), who
            ports[who] = membership or "limited"
        out.append({"name": name, "pkey": pkey, "flags": flags, "ports": ports})
    return out


def test_the_parser_accepts_the_references_examples():
    parsed = parse(DOC_EXAMPLES)
    assert len(parsed) == 11
    assert parsed[2] == {"name": "NewPartition", "pkey": "", "flags": ["ipoib"], "ports": {
        "0x123456": "full", "0x3456789034": "limi", "0x2134af2306": "limited"}}
    with pytest.raises(AssertionError):
        parse("Broken=0x80 : 0x1")  # no closing ';'


def test_partitions_render_every_member_with_its_membership():
    declared = [
        PKeyDeclaration(pkey="0x0a12", name="tenant_acme", members={"gpu-002": "limited"}),
        PKeyDeclaration(pkey="0x0100", name="storage", membership="limited", index0=True,
                        ip_over_ib=False),
    ]
    members = {"0x0a12": declared[0].resolve({"gpu-001": ["0x946DAE0300A1B2C3"],
                                              "gpu-002": ["946dae0300a1b2cb"]})}
    text = render_partitions(declared, members)
    assert text.splitlines()[1:] == [
        "Default=0x7fff, ipoib : ALL=full, SELF=full ;",
        "storage=0x0100, indx0, defmember=limited : ;",
        "tenant_acme=0x0a12, ipoib, defmember=full : 0x946dae0300a1b2c3=full, "
        "0x946dae0300a1b2cb=limited ;",
    ]
    parsed = parse(text)
    assert [p["pkey"] for p in parsed] == ["0x7fff", "0x0100", "0x0a12"]
    assert parsed[2]["ports"] == {"0x946dae0300a1b2c3": "full", "0x946dae0300a1b2cb": "limited"}
    assert parsed[1]["ports"] == {}  # "Empty list means no ports in this partition"
    assert render_partitions(declared, members) == text  # stable: no restart for nothing


def test_opensm_conf_points_at_the_partitions_file():
    settings = OpenSMSettings(port_guid="0x946DAE0300A1B2C3", options={"routing_engine": "ftree"})
    assert render_conf(settings).splitlines()[1:] == [
        "partition_config_file /etc/opensm/partitions.conf",
        "sm_priority 15",
        "log_file /var/log/opensm.log",
        "guid 0x946dae0300a1b2c3",
        "routing_engine ftree",
    ]
    with pytest.raises(ValueError):
        OpenSMSettings(sm_priority=16)


def test_opensm_is_declared_only_for_a_service_node_with_opensm_and_pkeys():
    from kiln.roles.ufm import opensm_declared

    pkeys = [{"pkey": "0x0a12", "name": "tenant_acme"}]
    service = {"kiln_node": "svc-001", "kiln_role": "service",
               "kiln_fabric_manager": "opensm", "kiln_ufm_pkeys": pkeys}
    assert opensm_declared(service) is True
    assert opensm_declared({**service, "kiln_ufm_pkeys": []}) is False  # no PKeys: nothing
    assert opensm_declared({**service, "kiln_fabric_manager": "ufm"}) is False
    assert opensm_declared({**service, "kiln_role": "gpu"}) is False
