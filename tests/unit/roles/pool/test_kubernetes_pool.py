"""The Kubernetes pool through the official client against kiln.lab.k8s_sim, a simulator of
the API server's Node resource (HTTPS, bearer token, a kubeconfig as kubectl writes one)."""

from __future__ import annotations

import pytest
from kubernetes import client

from kiln.lab.k8s_sim import Cluster, node_object, serve
from kiln.roles.pool.kubernetes import (
    LABEL,
    REASON_ANNOTATION,
    SINCE_ANNOTATION,
    TAINT,
    KubernetesPool,
    KubernetesPoolError,
    core_v1,
    taint_value,
)
from kiln.roles.pool.model import HeldByAnother, Membership

TOKEN = "kiln-sim-token-0123456789"
MAINTENANCE = {"key": "example.com/maintenance", "value": "dimm-swap", "effect": "NoSchedule"}


@pytest.fixture
def cluster():
    cluster = Cluster(token=TOKEN)
    cluster.add(node_object("gpu-001", labels={LABEL: "pooled"}))
    cluster.add(node_object("gpu-002", labels={LABEL: "pooled"}, unschedulable=True,
                            taints=[{"key": "node.kubernetes.io/unschedulable",
                                     "effect": "NoSchedule",
                                     "timeAdded": "2026-12-06T10:00:00Z"}]))
    cluster.add(node_object("gpu-003", labels={LABEL: "pooled", "team": "vision"},
                            taints=[MAINTENANCE]))
    cluster.add(node_object("gpu-004"))  # registered, never pooled by kiln
    return cluster


@pytest.fixture
def sim(cluster, tmp_path):
    with serve(cluster, tmp_path / "k8s") as running:
        yield running


@pytest.fixture
def pool(sim):
    return KubernetesPool(core_v1(str(sim.kubeconfig), sim.context))


def taints(cluster, name):
    return cluster.node(name)["spec"].get("taints") or []


def test_entries_say_pooled_drained_held_unknown(cluster, pool):
    assert pool.entry("gpu-001").membership == Membership.POOLED
    cordoned = pool.entry("gpu-002")
    assert cordoned.membership == Membership.HELD
    assert cordoned.reason == "cordoned (spec.unschedulable: true)"
    tainted = pool.entry("gpu-003")
    assert tainted.membership == Membership.HELD
    assert tainted.reason == "taint example.com/maintenance=dimm-swap:NoSchedule"
    assert pool.entry("gpu-004").membership == Membership.UNKNOWN
    assert pool.entry("gpu-009").membership == Membership.UNKNOWN
    assert pool.members() == ["gpu-001", "gpu-002", "gpu-003"]
    assert pool.where.startswith("kubernetes https://127.0.0.1:")


def test_drain_taints_and_says_why_where_kubectl_describe_shows_it(cluster, pool):
    before = cluster.node("gpu-001")
    reason = "kiln: health failed: gpu 3: Xid 79 (fallen off the bus)"
    assert pool.drain("gpu-001", "health failed: gpu 3: Xid 79 (fallen off the bus)") is True
    node = cluster.node("gpu-001")
    assert node["spec"]["taints"] == [{"key": TAINT, "effect": "NoSchedule",
                                       "value": "health-failed-gpu-3-Xid-79-fallen-off-the-bus"}]
    assert node["metadata"]["annotations"][REASON_ANNOTATION] == reason
    assert node["metadata"]["annotations"][SINCE_ANNOTATION].endswith("Z")
    assert LABEL not in node["metadata"]["labels"]
    # Everything else of the node is as it was: other labels and annotations kept.
    kept = {k: v for k, v in before["metadata"]["labels"].items() if k != LABEL}
    assert node["metadata"]["labels"] == kept
    assert before["metadata"]["annotations"].items() <= node["metadata"]["annotations"].items()
    entry = pool.entry("gpu-001")
    assert (entry.membership, entry.reason) == (Membership.DRAINED, reason)
    # One strategic merge patch, with the content type kubectl uses.
    assert [(s.method, s.content_type, s.code) for s in cluster.writes("gpu-001")] == [
        ("PATCH", "application/strategic-merge-patch+json", 200)]


def test_drain_keeps_other_taints_and_labels(cluster, pool):
    soft = {"key": "example.com/slow-disk", "effect": "PreferNoSchedule"}
    gpu = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    cluster.change("gpu-001", lambda n: n["spec"].update(taints=[soft]))
    assert pool.drain("gpu-001", "burn-in failed") is True
    assert taints(cluster, "gpu-001") == [soft, {"key": TAINT, "value": "burn-in-failed",
                                                 "effect": "NoSchedule"}]
    assert pool.add("gpu-001") is True
    assert taints(cluster, "gpu-001") == [soft]
    # A tolerated taint (every GPU node's dedicated taint) holds nothing out.
    cluster.change("gpu-004", lambda n: n["spec"].update(taints=[gpu]))
    tolerant = KubernetesPool(pool._api, tolerated=["nvidia.com/gpu"])
    assert pool.entry("gpu-004").membership == Membership.HELD
    assert tolerant.add("gpu-004") is True
    assert tolerant.entry("gpu-004").membership == Membership.POOLED
    assert tolerant.drain("gpu-004", "health failed") is True
    assert taints(cluster, "gpu-004")[0] == gpu


def test_another_partys_hold_is_never_changed(cluster, pool):
    for name in ("gpu-002", "gpu-003"):
        before = cluster.node(name)
        with pytest.raises(HeldByAnother, match=f"{name} is held out by someone else"):
            pool.add(name)
        assert pool.drain(name, "health failed") is False
        assert cluster.node(name) == before
        assert cluster.writes(name) == []


def test_add_after_kilns_drain_restores_the_label(cluster, pool):
    assert pool.drain("gpu-001", "health failed") is True
    assert pool.add("gpu-001") is True
    node = cluster.node("gpu-001")
    assert node["metadata"]["labels"][LABEL] == "pooled"
    assert "taints" not in node["spec"]
    assert REASON_ANNOTATION not in node["metadata"]["annotations"]
    assert SINCE_ANNOTATION not in node["metadata"]["annotations"]
    assert pool.entry("gpu-001").membership == Membership.POOLED
    # A node kiln never pooled joins by add.
    assert pool.add("gpu-004") is True and pool.entry("gpu-004").membership == Membership.POOLED


def test_a_second_drain_or_add_sends_nothing(cluster, pool):
    assert pool.drain("gpu-001", "health failed") is True
    since = cluster.node("gpu-001")["metadata"]["annotations"][SINCE_ANNOTATION]
    version = cluster.node("gpu-001")["metadata"]["resourceVersion"]
    assert pool.drain("gpu-001", "kiln: health failed") is False
    assert len(cluster.writes("gpu-001")) == 1
    assert cluster.node("gpu-001")["metadata"]["resourceVersion"] == version
    # A new reason replaces kiln's own; when it first drained the node stays.
    assert pool.drain("gpu-001", "firmware failed") is True
    node = cluster.node("gpu-001")
    assert node["metadata"]["annotations"][REASON_ANNOTATION] == "kiln: firmware failed"
    assert node["metadata"]["annotations"][SINCE_ANNOTATION] == since
    assert [t["value"] for t in node["spec"]["taints"]] == ["firmware-failed"]
    assert pool.add("gpu-001") is True
    assert pool.add("gpu-001") is False
    assert len(cluster.writes("gpu-001")) == 3


def test_kilns_taint_under_anothers_cordon_stays_until_they_uncordon(cluster, pool):
    assert pool.drain("gpu-001", "health failed") is True
    cluster.change("gpu-001", lambda n: n["spec"].update(unschedulable=True))
    entry = pool.entry("gpu-001")
    assert entry.membership == Membership.HELD and entry.detail == "kiln's taint too"
    with pytest.raises(HeldByAnother):
        pool.add("gpu-001")
    assert [t["key"] for t in taints(cluster, "gpu-001")] == [TAINT]


def test_a_node_the_cluster_marks_not_ready_is_still_drained(cluster, pool):
    not_ready = {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                 "timeAdded": "2026-12-07T08:00:00Z"}
    cluster.change("gpu-001", lambda n: n["spec"].update(taints=[not_ready]))
    assert pool.entry("gpu-001").membership == Membership.POOLED
    assert pool.drain("gpu-001", "health failed") is True
    # kiln's quarantine outlives the controller's taint, which kiln leaves as it is.
    assert taints(cluster, "gpu-001") == [not_ready, {"key": TAINT, "value": "health-failed",
                                                      "effect": "NoSchedule"}]


def test_a_conflict_is_read_again_and_decided_again(cluster, pool):
    # Another client cordons gpu-001 between kiln's read and kiln's patch: the patch
    # carries the resourceVersion kiln read, the server answers 409, kiln reads again,
    # finds the node held, and leaves it (its own taint would have replaced the list).
    cluster.interleaved["gpu-001"] = lambda n: n["spec"].update(taints=[MAINTENANCE])
    assert pool.drain("gpu-001", "health failed") is False
    assert [s.code for s in cluster.writes("gpu-001")] == [409]
    assert taints(cluster, "gpu-001") == [MAINTENANCE]
    # A concurrent change that holds nothing: the second patch lands, both taints kept.
    soft = {"key": "example.com/slow-disk", "effect": "PreferNoSchedule"}
    cluster.interleaved["gpu-004"] = lambda n: n["spec"].update(taints=[soft])
    assert pool.drain("gpu-004", "health failed") is True
    assert [s.code for s in cluster.writes("gpu-004")] == [409, 200]
    assert [t["key"] for t in taints(cluster, "gpu-004")] == [soft["key"], TAINT]


def test_conflicts_every_time_give_up_with_a_message(cluster, sim):
    pool = KubernetesPool(core_v1(str(sim.kubeconfig), sim.context), conflict_attempts=3)

    class Busy(dict):
        def pop(self, name, default=None):  # a writer that changes the node before each try
            return lambda n: n["metadata"]["annotations"].update(busy=str(len(cluster.seen)))

    cluster.interleaved = Busy()
    with pytest.raises(KubernetesPoolError, match=r"changed under every one of kiln's 3 "
                                                  r"tries \(409 Conflict"):
        pool.drain("gpu-001", "health failed")
    assert [s.code for s in cluster.writes("gpu-001")] == [409, 409, 409]


def test_unknown_nodes_and_wrong_credentials(cluster, sim, tmp_path, pool):
    with pytest.raises(KubernetesPoolError, match="no Node gpu-009"):
        pool.drain("gpu-009", "health failed")
    with pytest.raises(KubernetesPoolError, match="no Node gpu-009"):
        pool.add("gpu-009")
    wrong = tmp_path / "wrong-kubeconfig"
    wrong.write_text(sim.kubeconfig.read_text().replace(TOKEN, "expired"))
    refused = KubernetesPool(core_v1(str(wrong), sim.context))
    with pytest.raises(KubernetesPoolError, match=r"401 Unauthorized: Unauthorized \(the "
                                                  r"kubeconfig's credentials were refused"):
        refused.entry("gpu-001")
    with pytest.raises(KubernetesPoolError, match="context nope"):
        core_v1(str(sim.kubeconfig), "nope")


def test_names_map_kilns_node_to_the_node_object(cluster, pool):
    named = KubernetesPool(pool._api, names={"gpu-001": "gpu-001"}, where="k8s lab")
    cluster.add(node_object("gpu-005.cluster.example", labels={LABEL: "pooled"}))
    mapped = KubernetesPool(pool._api, names={"gpu-005": "gpu-005.cluster.example"})
    assert named.where == "k8s lab"
    assert mapped.drain("gpu-005", "health failed") is True
    assert taints(cluster, "gpu-005.cluster.example")[0]["key"] == TAINT


def test_taint_values_are_label_values():
    assert taint_value("kiln: health failed: gpu 3") == "health-failed-gpu-3"
    long = taint_value("kiln: " + "nvbandwidth below threshold on every link " * 5)
    assert len(long) <= 63 and long[-1].isalnum()
    assert taint_value("kiln: ???") == ""


# -- the simulator answers as the API server does --------------------------------------------


def api(sim, token=TOKEN):
    configuration = client.Configuration(host=sim.url)
    configuration.ssl_ca_cert = str(sim.ca)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.CoreV1Api(client.ApiClient(configuration))


def test_simulator_status_objects(cluster, sim):
    import json

    with pytest.raises(client.ApiException) as caught:
        api(sim).read_node("gpu-009")
    assert json.loads(caught.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'nodes "gpu-009" not found', "reason": "NotFound",
        "details": {"name": "gpu-009", "kind": "nodes"}, "code": 404}
    with pytest.raises(client.ApiException) as caught:
        api(sim, "nope").read_node("gpu-001")
    assert caught.value.status == 401 and json.loads(caught.value.body)["reason"] == \
        "Unauthorized"
    with pytest.raises(client.ApiException) as caught:
        api(sim).patch_node("gpu-001", {"metadata": {"labels": {"a": "b"}}},
                            _content_type="application/json")
    assert caught.value.status == 415
    # A stale resourceVersion in a PUT or a patch: 409 with a Conflict Status.
    node = api(sim).read_node("gpu-001")
    cluster.change("gpu-001", lambda n: n["metadata"]["labels"].update(x="y"))
    with pytest.raises(client.ApiException) as caught:
        api(sim).replace_node("gpu-001", node)
    assert caught.value.status == 409 and json.loads(caught.value.body)["reason"] == "Conflict"
    # A taint value that is not a label value: 422 Invalid, nothing stored.
    with pytest.raises(client.ApiException) as caught:
        api(sim).patch_node("gpu-001", {"spec": {"taints": [
            {"key": TAINT, "value": "kiln: no spaces", "effect": "NoSchedule"}]}},
            _content_type="application/strategic-merge-patch+json")
    assert caught.value.status == 422 and "spec.taints[0].value" in caught.value.body
    assert "taints" not in cluster.node("gpu-001")["spec"]


def test_simulator_patch_types(cluster, sim):
    one = {"key": "a.example/one", "effect": "NoSchedule"}
    two = {"key": "a.example/two", "effect": "NoExecute"}
    core = api(sim)
    strategic = "application/strategic-merge-patch+json"
    core.patch_node("gpu-004", {"spec": {"taints": [one]}}, _content_type=strategic)
    # spec.taints is atomic: a strategic merge patch's list replaces the stored one.
    core.patch_node("gpu-004", {"spec": {"taints": [two]}}, _content_type=strategic)
    assert taints(cluster, "gpu-004") == [two]
    # Status is the status subresource's: a patch of the Node itself leaves it as it was.
    core.patch_node("gpu-004", {"status": {"conditions": [{"type": "X", "status": "True"}]}},
                    _content_type=strategic)
    assert [c["type"] for c in cluster.node("gpu-004")["status"]["conditions"]] == ["Ready"]
    core.patch_node("gpu-004", [{"op": "add", "path": "/spec/taints/-", "value": one},
                                {"op": "test", "path": "/spec/taints/0", "value": two}])
    assert taints(cluster, "gpu-004") == [two, one]
    with pytest.raises(client.ApiException) as caught:
        core.patch_node("gpu-004", [{"op": "test", "path": "/metadata/resourceVersion",
                                     "value": "1"},
                                    {"op": "remove", "path": "/spec/taints"}])
    assert caught.value.status == 422
    core.patch_node("gpu-004", {"spec": {"taints": None}},
                    _content_type="application/merge-patch+json")
    assert taints(cluster, "gpu-004") == []
    assert core.list_node(label_selector=f"!{LABEL}").items[0].metadata.name == "gpu-004"


def test_group_data_selects_the_kubernetes_pool(cluster, sim):
    from kiln.roles.pool import pool_for

    pool = pool_for({"kiln_node": "rack1-node4", "kiln_pool": {
        "backend": "kubernetes", "kubeconfig": str(sim.kubeconfig), "context": sim.context,
        "node_name": "gpu-004", "tolerated_taints": ["nvidia.com/gpu"]}})
    assert isinstance(pool, KubernetesPool)
    assert pool.entry("rack1-node4").membership == Membership.UNKNOWN
    assert pool.add("rack1-node4") is True
    assert pool.entry("rack1-node4").membership == Membership.POOLED
