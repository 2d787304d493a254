"""The UFM check as an operation, through pyinfra's API against the lab's UFM simulator:
planning writes nothing; the first run records the pass; a second run on a converged
fabric yields nothing; a fault fails the node naming HCA, switch and port, and is recorded.
And the fabric stage runs it only where the cluster has UFM."""

from __future__ import annotations

import time

import pytest
from test_ufm_pkeys import run
from ufm_served import served_lab

from kiln.core.checks import Status
from kiln.core.ledger import Ledger, last_results
from kiln.lab.hwsim import lab_hooks
from kiln.roles.ufm import CHECK_NAME, fabric_healthy


@pytest.fixture
def ufm(tmp_path, monkeypatch):
    with served_lab(tmp_path / "lab", monkeypatch, gpu_nodes=2) as served:
        yield served


def test_a_converged_fabric_changes_nothing_the_second_time(ufm, tmp_path):
    data = ufm.host_data("gpu-001", tmp_path)
    ports = ufm.hca_ports("gpu-001")
    ledger = tmp_path / "kiln.db"
    assert run(data, fabric_healthy, execute=False, hca_ports=ports) == (True, True)
    assert not ledger.exists()  # the preview wrote nothing
    assert run(data, fabric_healthy, hca_ports=ports) == (True, True)  # the pass recorded
    assert set(last_results(ledger, "gpu-001", CHECK_NAME).values()) == {Status.OK}
    assert run(data, fabric_healthy, hca_ports=ports) == (True, False)  # converged
    book = Ledger(ledger)
    assert len(book.results("gpu-001", CHECK_NAME)) == 8
    # a rail goes down: the node fails, the ledger says which and where to go
    lab_hooks.apply_fault(ufm.lab, "gpu-001", "hca-port-down", {"hca": "6"})
    assert run(data, fabric_healthy, hca_ports=ports, since=time.time() - 5) == (False, True)
    [bad] = [r for r in book.results("gpu-001", CHECK_NAME) if r.status != Status.OK]
    assert bad.subject == "HCA mlx5_6"
    assert "switch leaf-rail6 (GUID " in bad.subject_text and "port 1/1" in bad.subject_text
    assert bad.remediation.startswith("check-switch-port: switch leaf-rail6 port 1/1")
    # failing again is a failure each run (not a change that goes away)
    assert run(data, fabric_healthy, hca_ports=ports) == (False, True)
    book.close()


def test_ports_read_when_the_operation_runs_and_a_node_not_readable_is_previewed(ufm,
                                                                                tmp_path):
    data = ufm.host_data("gpu-002", tmp_path)
    ufm.reset_counts()
    assert run(data, fabric_healthy, execute=False, hca_ports=lambda: None) == (True, True)
    assert sum(ufm.requests.values()) == 0  # nothing asked of UFM for a node not readable
    ports = ufm.hca_ports("gpu-002")
    assert run(data, fabric_healthy, hca_ports=lambda: ports) == (True, True)
    assert run(data, fabric_healthy, hca_ports=lambda: ports) == (True, False)
