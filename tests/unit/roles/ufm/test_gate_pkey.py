"""The gate's tenant PKey (kiln.roles.gate.pkey) against the lab's UFM simulator served in
this process: one node's ports join or leave, and no other member is touched."""

from __future__ import annotations

import pytest
from ufm_served import ENV, served_lab

from kiln.core.errors import KilnError
from kiln.core.fabric import PKeyDeclaration, normalise_guid
from kiln.roles.gate.pkey import gate_pkey, node_plan
from kiln.roles.ufm.operations import apply_pkey
from kiln.roles.ufm.settings import client_for

DECLARED = PKeyDeclaration(pkey="0x0b34", name="pool-tenant", members={"gpu-002": "limited"})


@pytest.fixture
def ufm(tmp_path, monkeypatch):
    with served_lab(tmp_path / "lab", monkeypatch, gpu_nodes=3) as served:
        yield served


@pytest.fixture
def client(ufm, tmp_path):
    ufm_client = client_for(ufm.host_data("gpu-001", tmp_path), env=ENV)
    yield ufm_client
    ufm_client.close()


def guids(ufm, node):
    return sorted(normalise_guid(g) for _, g in ufm.hca_ports(node))


def join(client, ufm, node, member=True):
    plan = node_plan(client, DECLARED, node, guids(ufm, node), member)
    apply_pkey(client, plan)
    return plan


def test_nodes_join_and_leave_one_at_a_time(ufm, client):
    first = join(client, ufm, "gpu-001")
    assert first.create and set(first.add) == set(guids(ufm, "gpu-001")) and not first.remove
    second = join(client, ufm, "gpu-002")
    assert not second.create and not second.remove  # gpu-001's ports are left alone
    assert set(second.add) == set(guids(ufm, "gpu-002"))
    held = client.partition("0x0b34").members()
    assert set(held) == set(guids(ufm, "gpu-001")) | set(guids(ufm, "gpu-002"))
    assert {held[g] for g in guids(ufm, "gpu-002")} == {"limited"}  # as declared
    # Joined already: nothing to do. Leaving: only the node's own ports go.
    assert node_plan(client, DECLARED, "gpu-001", guids(ufm, "gpu-001"), True).empty
    leave = join(client, ufm, "gpu-001", member=False)
    assert set(leave.remove) == set(guids(ufm, "gpu-001")) and not leave.add
    assert set(client.partition("0x0b34").members()) == set(guids(ufm, "gpu-002"))


def test_leaving_a_partition_that_does_not_exist_changes_nothing(ufm, client):
    assert node_plan(client, DECLARED, "gpu-003", guids(ufm, "gpu-003"), False).empty
    assert client.partition("0x0b34") is None


def test_a_node_without_ports_cannot_join(client):
    with pytest.raises(KilnError, match="UFM knows no HCA port of gpu-009"):
        node_plan(client, DECLARED, "gpu-009", [], True)


def test_group_data_names_the_gate_pkey():
    data = {"kiln_node": "gpu-001", "kiln_ufm_pkeys": [DECLARED.model_dump()]}
    assert gate_pkey(data) is None
    assert gate_pkey({**data, "kiln_gate_pkey": "pool-tenant"}) == DECLARED
    assert gate_pkey({**data, "kiln_gate_pkey": "0xb34"}) == DECLARED
    with pytest.raises(KilnError, match="PKey 'other' is not declared"):
        gate_pkey({**data, "kiln_gate_pkey": "other"})
