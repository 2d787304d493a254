"""The fabric check against the lab's UFM simulator: healthy rails pass; a port down, at
200 Gb/s, unknown, unhealthy or with a link-down/symbol-error/BER event fails, naming node,
HCA, switch (name and GUID) and switch port; reads are per run, not per node."""

from __future__ import annotations

import threading
import time

import pytest
from ufm_served import ENV, Served, make_lab

from kiln.core.checks import Action, Status
from kiln.core.ledger import Ledger
from kiln.lab.hwsim import lab_hooks
from kiln.roles.ufm.checks import CHECK_NAME, Expected, check_node, switch_ends
from kiln.roles.ufm.operations import events_since
from kiln.roles.ufm.settings import client_for
from kiln.roles.ufm.view import FabricView, fabric_view

NDR = Expected(400)


@pytest.fixture
def ufm(tmp_path):
    served = Served(make_lab(tmp_path / "lab", gpu_nodes=8))
    yield served
    served.close()


def view_of(ufm, tmp_path, node="gpu-001"):
    return FabricView(client_for(ufm.host_data(node, tmp_path), env=ENV))


def test_expected_rate_names_speed_and_width():
    assert (NDR.speed, NDR.width, NDR.describe()) == ("NDR", 4, "NDR 4x (400 Gb/s)")
    assert Expected(200).speed == "HDR" and Expected(0).speed is None


def test_a_healthy_node_passes_with_evidence(ufm, tmp_path):
    report = check_node(view_of(ufm, tmp_path), "gpu-001", ufm.hca_ports("gpu-001"), NDR,
                        since=time.time() - 60)
    assert report.status == Status.OK and len(report.ports) == 8
    first = report.ports[0]
    peer = first.subject.peer
    assert (first.subject.name, peer.name, peer.port) == ("mlx5_0", "leaf-rail0", "1/1")
    assert peer.guid.startswith("fc6a1c0300")
    assert "Active/Link Up NDR 4x" in first.evidence["peer"]
    assert first.remediation is None
    assert report.summary() == "node gpu-001: 8 rail(s) OK in UFM"


def test_a_port_down_fails_naming_hca_switch_and_port(ufm, tmp_path):
    since = time.time() - 1
    lab_hooks.apply_fault(ufm.lab, "gpu-003", "hca-port-down", {"hca": "6"})
    report = check_node(view_of(ufm, tmp_path), "gpu-003", ufm.hca_ports("gpu-003"), NDR,
                        since)
    assert report.status == Status.CRITICAL
    [bad] = report.failures
    peer, guid = bad.subject.peer, bad.evidence["guid"]
    assert (bad.subject.name, peer.name, peer.port) == ("mlx5_6", "leaf-rail6", "2/1")
    assert bad.message.startswith(f"node gpu-003: HCA mlx5_6 (port GUID {guid}): switch "
                                  f"leaf-rail6 (GUID {peer.guid}) port 2/1: CRITICAL: ")
    assert bad.remediation.action == Action.CHECK_SWITCH_PORT
    assert "leaf-rail6 port 2/1" in bad.message.split(" -> ")[1]
    text = "; ".join(bad.problems)
    assert "switch port is Down/Polling, not Active/Link Up" in text
    assert "HCA port is in UFM's unhealthy ports (UNRESPONSIVE" in text
    assert "UFM event 329 (link went down)" in text


def test_a_rail_at_200g_fails_with_the_rate_found(ufm, tmp_path):
    lab_hooks.apply_fault(ufm.lab, "gpu-002", "hca-rate", {"hca": "3", "rate": "200"})
    report = check_node(view_of(ufm, tmp_path), "gpu-002", ufm.hca_ports("gpu-002"), NDR, None)
    [bad] = report.failures
    assert bad.subject.name == "mlx5_3" and bad.subject.peer.name == "leaf-rail3"
    assert bad.problems == ("link at HDR 4x (200 Gb/s), expected NDR 4x (400 Gb/s)",)


def test_an_unknown_guid_and_a_port_marked_unhealthy(ufm, tmp_path):
    ports = ufm.hca_ports("gpu-004")
    client = client_for(ufm.host_data("gpu-004", tmp_path), env=ENV)
    marked = ports[2][1].removeprefix("0x") + "_1"
    client.request("PUT", "app/unhealthy_ports",
                   body={"ports": [marked], "ports_policy": "UNHEALTHY", "action": "isolate"})
    report = check_node(FabricView(client), "gpu-004",
                        ports[:3] + [("mlx5_9", "0x0002c90300000000")], NDR, None)
    unknown = report.failures[-1]
    assert unknown.status == Status.CRITICAL and unknown.subject.peer is None
    assert "port GUID unknown to UFM" in unknown.problems[0]
    assert report.failures[0].subject.name == "mlx5_2"
    assert "unhealthy ports (MANUAL" in report.failures[0].problems[0]


def test_counter_events_count_only_since_the_given_time(ufm, tmp_path):
    fabric = ufm.simulator.fabric()
    ports = ufm.hca_ports("gpu-005")
    old = time.time() - 3600
    name = ports[1][1].removeprefix("0x") + "_1"
    ufm.simulator.store.port_event(fabric.port(name), "917", now=old)
    report = check_node(view_of(ufm, tmp_path), "gpu-005", ports, NDR, since=old + 60)
    assert report.status == Status.OK  # before the window
    leaf_port = fabric.port(name).peer
    ufm.simulator.store.port_event(leaf_port, "110")  # the switch side's symbol errors
    report = check_node(view_of(ufm, tmp_path), "gpu-005", ports, NDR, since=old + 60)
    [bad] = report.failures
    assert bad.subject.name == "mlx5_1" and "UFM event 110 (symbol error counter rate)" in \
        bad.problems[0] and leaf_port.name in bad.problems[0]
    report = check_node(view_of(ufm, tmp_path), "gpu-005", ports, NDR, since=old - 60)
    assert "UFM event 917 (symbol BER)" in " ".join(report.failures[0].problems)


def test_an_unreadable_ufm_is_unknown_not_ok(tmp_path):
    from kiln.lab.bmc.static import free_port

    data = {"kiln_node": "gpu-001", "kiln_ufm_server": {
        "url": f"https://127.0.0.1:{free_port()}/", "verify_tls": False}}
    client = client_for(data, env=ENV, warn=lambda _: None)
    client.retry = client.retry.__class__(attempts=1)
    report = check_node(FabricView(client), "gpu-001", [("mlx5_0", "0x1")], NDR, None)
    assert report.status == Status.UNKNOWN
    assert "UFM could not be read" in report.ports[0].problems[0]


def test_since_is_the_last_pass_in_the_ledger_else_the_stage_start(tmp_path):
    ledger = tmp_path / "kiln.db"
    assert events_since(str(ledger), "gpu-001", 100.0) == 100.0  # no ledger yet
    book = Ledger(ledger)
    book.record_check("gpu-001", CHECK_NAME, False)
    assert events_since(str(ledger), "gpu-001", 100.0) == 100.0  # a failure is no pass
    book.record_check("gpu-001", CHECK_NAME, True)
    book.record_check("gpu-002", CHECK_NAME, True)
    passed = book.checks("gpu-001")
    assert len(passed) == 2
    since = events_since(str(ledger), "gpu-001", 100.0)
    assert since > 100.0 and since <= time.time()
    book.close()


class Run:
    """Stands for the run's pyinfra State (the views live as long as it does)."""


def run_checks(ufm, tmp_path, nodes):
    """One pyinfra-like run: every node's check at once, in its own thread (under pyinfra
    they are greenlets), sharing the run's view."""
    run = Run()
    results = {}

    def one(node):
        target = ufm.host_data(node, tmp_path)
        view = fabric_view(target, run=run, client=lambda: client_for(target, env=ENV))
        results[node] = check_node(view, node, ufm.hca_ports(node), NDR, time.time() - 60)

    threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(nodes)  # no thread died
    return results


def test_a_run_reads_each_resource_once_whatever_the_number_of_nodes(ufm, tmp_path):
    ufm.reset_counts()
    one = run_checks(ufm, tmp_path, ["gpu-001"])
    single = dict(ufm.requests)
    ufm.reset_counts()
    eight = run_checks(ufm, tmp_path, [f"gpu-{i:03d}" for i in range(1, 9)])
    assert dict(ufm.requests) == single
    assert single == {("GET", "/ufmRest/resources/ports"): 1,
                      ("GET", "/ufmRest/app/unhealthy_ports"): 1,
                      ("GET", "/ufmRest/app/events"): 1}
    assert one["gpu-001"].status == Status.OK
    assert all(r.status == Status.OK for r in eight.values()) and len(eight) == 8
    ufm.reset_counts()
    run_checks(ufm, tmp_path, ["gpu-001", "gpu-002"])  # a new run reads afresh
    assert sum(ufm.requests.values()) == 3


def test_switch_ends_name_the_switch_port_of_each_known_guid(ufm, tmp_path):
    # What the node-side check adds to a failing HCA: where its cable ends.
    ports = dict(ufm.hca_ports("gpu-003"))
    ends = switch_ends(view_of(ufm, tmp_path, "gpu-003"), [ports["mlx5_6"], "0x1234"])
    assert list(ends) == [ports["mlx5_6"]]
    end = ends[ports["mlx5_6"]]
    assert (end.name, end.port) == ("leaf-rail6", "2/1") and end.guid.startswith("fc6a1c0300")
