"""The PKey operation through pyinfra's API against the lab's UFM simulator: the partition
holds exactly the ports asked for, with the declared memberships; only differences are
sent; a second run changes nothing; planning (the preview) writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from ufm_served import ENV, served_lab

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.fabric import PKeyDeclaration
from kiln.roles.ufm import operations
from kiln.roles.ufm.settings import client_for, pkey_declarations

PKEYS = [{"pkey": "0xa12", "name": "tenant_acme", "membership": "full",
          "members": {"gpu-003": "limited"}}]


@pytest.fixture
def ufm(tmp_path, monkeypatch):
    with served_lab(tmp_path / "lab", monkeypatch, gpu_nodes=3) as served:
        yield served


def guids(ufm, node):
    return [g for _, g in ufm.hca_ports(node)]


def run(data: dict[str, Any], op: Any, execute: bool = True, **kwargs: Any) -> tuple[bool, bool]:
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    inventory = Inventory(([("@local", data)], {}))
    state = State(inventory, Config())
    connect_all(state)
    add_op(state, op, **kwargs)
    if execute:
        try:
            run_ops(state)
        except PyinfraError as exc:  # the one host failed: pyinfra has none left to run
            assert "No hosts remaining" in str(exc)
    host = inventory.get_host("@local")
    meta, results = state.get_meta_for_host(host), state.get_results_for_host(host)
    return results.error_ops == 0, meta.ops_change > 0


def members(ufm, tmp_path):
    client = client_for(ufm.host_data("gpu-001", tmp_path), env=ENV)
    partition = client.partition("0x0a12")
    return None if partition is None else partition.members()


def test_the_declaration_is_validated():
    d = PKeyDeclaration.model_validate(PKEYS[0])
    assert (d.pkey, d.value, d.membership_of("gpu-003"), d.membership_of("gpu-001")) == \
        ("0x0a12", 0xA12, "limited", "full")
    assert d.resolve({"gpu-003": ["0xAB"]}) == {"00000000000000ab": "limited"}
    for bad in ({"pkey": "0x7fff", "name": "x"}, {"pkey": "a12", "name": "x"},
                {"pkey": "0x1", "name": "has space"}, {"pkey": "0x1", "name": "x", "tier": 1}):
        with pytest.raises(ValueError):
            PKeyDeclaration.model_validate(bad)
    twice = {"kiln_node": "svc", "kiln_ufm_pkeys": PKEYS + [{"pkey": "0x0a12", "name": "b"}]}
    with pytest.raises(KilnError, match="PKey 0x0a12 is declared twice"):
        pkey_declarations(node_context(twice))


def test_the_pkey_holds_exactly_the_ports_asked_for(ufm, tmp_path):
    data = {**ufm.host_data("svc-001", tmp_path), "kiln_ufm_pkeys": PKEYS}
    first = {"gpu-001": guids(ufm, "gpu-001"), "gpu-003": guids(ufm, "gpu-003")}
    # planning alone (the preview, --dry) reads and writes nothing
    ufm.reset_counts()
    assert run(data, operations.pkey_members, execute=False, pkey="0x0a12",
               ports=first) == (True, True)
    assert ufm.writes() == 0 and members(ufm, tmp_path) is None
    assert run(data, operations.pkey_members, pkey="tenant_acme", ports=first) == (True, True)
    held = members(ufm, tmp_path)
    assert len(held) == 16
    assert {held[g.removeprefix("0x")] for g in first["gpu-003"]} == {"limited"}
    assert {held[g.removeprefix("0x")] for g in first["gpu-001"]} == {"full"}
    ufm.reset_counts()
    assert run(data, operations.pkey_members, pkey="0x0a12", ports=first) == (True, False)
    assert ufm.writes() == 0  # a second run changes nothing
    # gpu-001 leaves (quarantined), gpu-002 joins: one removal, one addition
    second = {"gpu-002": guids(ufm, "gpu-002"), "gpu-003": guids(ufm, "gpu-003")}
    ufm.reset_counts()
    assert run(data, operations.pkey_members, pkey="0x0a12", ports=second) == (True, True)
    assert ufm.writes() == 2
    held = members(ufm, tmp_path)
    assert set(held) == {g.removeprefix("0x") for gs in second.values() for g in gs}
    # a membership the inventory changes is changed in UFM
    data["kiln_ufm_pkeys"] = [{**PKEYS[0], "members": {}}]
    assert run(data, operations.pkey_members, pkey="0x0a12", ports=second) == (True, True)
    assert set(members(ufm, tmp_path).values()) == {"full"}


def test_an_undeclared_pkey_fails_the_host(ufm, tmp_path):
    data = {**ufm.host_data("svc-001", tmp_path), "kiln_ufm_pkeys": PKEYS}
    assert run(data, operations.pkey_members, pkey="0x0b00", ports={}) == (False, True)
