"""The Kubernetes pool: a label for pooled nodes, a NoSchedule taint for the ones kiln took out.

kiln reads and changes Node objects through the official `kubernetes` Python client:

    pooled:          label  kiln.io/pool=pooled           (jobs select it: nodeSelector)
    drained by kiln: taint  kiln.io/quarantined=<short reason>:NoSchedule, the label removed,
                     annotation kiln.io/reason=<the whole reason, "kiln: ..."> and
                     annotation kiln.io/drained-at=<when kiln first drained it, UTC>
    held by another: the node is cordoned (spec.unschedulable: true, `kubectl cordon`) or
                     carries another party's NoSchedule/NoExecute taint
    unknown:         no Node of that name (404), or a Node kiln never labelled

A technician sees all of it in `kubectl describe node`: the taint under Taints (its value
the reason, shortened to a label value: 63 characters of [A-Za-z0-9-_.]), the whole reason
under Annotations. kiln only ever changes its own label, taint and annotations: it never
uncordons a node, never removes or edits a taint it did not set, and does not take a node
someone else holds out (kiln.roles.pool's rule). A drain is a taint, not an eviction: pods
already running stay (NoSchedule, not NoExecute); evicting them (`kubectl drain`) is out of
scope. Taints the node lifecycle controller sets from the node's conditions
(CONDITION_TAINTS: not-ready, unreachable, the pressures; they come and go with the node's
health) and the taint keys a pool tolerates (`tolerated`, e.g. a dedicated nvidia.com/gpu
taint every GPU node carries) hold nothing: kiln's taint is added next to them.

Every change is one strategic merge patch (what kubectl label/annotate/taint send) carrying
the resourceVersion kiln read: labels and annotations merge key by key (null removes
kiln's), but `spec.taints` is an atomic list (no patchStrategy in the Node type: the patch's
list replaces the stored one), so the patch carries the whole list and the resourceVersion
makes it conditional: the API server answers 409 Conflict when the node changed since kiln
read it (a taint another party added in between would otherwise be lost), and kiln reads
again and decides again (tenacity, CONFLICT_ATTEMPTS times). A change that is already in
place sends nothing. The content type is set explicitly: the client's generated default
for patch_node is application/json-patch+json.

Tested against kiln.lab.k8s_sim (a simulator of the API server's Node resource) through the
official client, never against a real API server: the patch semantics, status codes and
Status bodies are the simulator's reading of the Kubernetes sources and API reference, and
RBAC (kiln needs get, list and patch on nodes), admission plugins and the node lifecycle
controller's own taints were not exercised.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from kiln.core.errors import KilnError
from kiln.roles.pool.model import (
    REASON_PREFIX,
    HeldByAnother,
    Membership,
    PoolEntry,
    is_kilns,
    kiln_reason,
)

LABEL = "kiln.io/pool"
LABEL_VALUE = "pooled"
TAINT = "kiln.io/quarantined"
TAINT_EFFECT = "NoSchedule"
REASON_ANNOTATION = "kiln.io/reason"
SINCE_ANNOTATION = "kiln.io/drained-at"
# Effects that keep new pods off a node: a taint with one holds it out of the pool.
HOLDING_EFFECTS = ("NoSchedule", "NoExecute")
# Set and removed by Kubernetes itself from the node's conditions (well-known taints).
CONDITION_TAINTS = frozenset({
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/unschedulable",  # mirrors spec.unschedulable, read from there
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
    "node.cloudprovider.kubernetes.io/uninitialized",
    "node.cloudprovider.kubernetes.io/shutdown",
})
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
CONFLICT_ATTEMPTS = 5
TIMEOUT_S = 30


class KubernetesPoolError(KilnError):
    """The API server refused, failed or could not be reached."""


class _Conflict(Exception):
    """409: the node changed since kiln read it."""


def taint_value(reason: str) -> str:
    """The reason as a taint value (a label value: at most 63 of [A-Za-z0-9-_.], starting
    and ending with a letter or digit): "kiln: health failed: gpu 3" -> "health-failed-gpu-3"."""
    text = reason[len(REASON_PREFIX):] if is_kilns(reason) else reason
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    return text[:63].rstrip("-_.")


@dataclass(frozen=True)
class Node:
    """What kiln reads of a Node object."""

    name: str
    resource_version: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, Any], ...] = ()
    unschedulable: bool = False

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Node:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        return cls(meta.get("name", ""), meta.get("resourceVersion", ""),
                   dict(meta.get("labels") or {}), dict(meta.get("annotations") or {}),
                   tuple(spec.get("taints") or ()), bool(spec.get("unschedulable")))

    @property
    def kiln_taint(self) -> dict[str, Any] | None:
        found = [t for t in self.taints if t.get("key") == TAINT]
        return found[0] if found else None

    @property
    def labelled(self) -> bool:
        return self.labels.get(LABEL) == LABEL_VALUE

    @property
    def kiln_reason(self) -> str:
        said = self.annotations.get(REASON_ANNOTATION, "")
        if is_kilns(said):
            return said
        taint = self.kiln_taint or {}
        return REASON_PREFIX + (taint.get("value") or "drained (no kiln.io/reason annotation)")

    def holds(self, tolerated: Iterable[str] = ()) -> list[str]:
        """Another party's reasons the node is out, as `kubectl describe node` shows them."""
        said = ["cordoned (spec.unschedulable: true)"] if self.unschedulable else []
        for taint in self.taints:
            key = taint.get("key", "")
            if key == TAINT or key in CONDITION_TAINTS or key in tolerated \
                    or taint.get("effect") not in HOLDING_EFFECTS:
                continue
            value = taint.get("value")
            said.append(f"taint {key}{'=' + value if value else ''}:{taint.get('effect')}")
        return said

    def condition_taints(self) -> list[str]:
        return [f"{t.get('key')}:{t.get('effect')}" for t in self.taints
                if t.get("key") in CONDITION_TAINTS]


class KubernetesPool:
    def __init__(self, core_v1: Any, where: str = "", tolerated: Iterable[str] = (),
                 names: dict[str, str] | None = None,
                 conflict_attempts: int = CONFLICT_ATTEMPTS):
        """`core_v1`: a kubernetes.client.CoreV1Api; `tolerated`: taint keys that do not hold
        a node out (the pool's jobs tolerate them); `names`: kiln's node name -> the Node's
        name where they differ."""
        self._api = core_v1
        host = getattr(getattr(getattr(core_v1, "api_client", None), "configuration", None),
                       "host", "")
        self.where = where or f"kubernetes {host}".strip()
        self._tolerated = frozenset(tolerated)
        self._names = names or {}
        self._attempts = conflict_attempts

    def _name(self, node: str) -> str:
        return self._names.get(node, node)

    # -- the API ----------------------------------------------------------------------------

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        """One request, its JSON body; None for 404. 409 raises _Conflict; other failures
        KubernetesPoolError naming what the server said."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = call(*args, _preload_content=False, _request_timeout=TIMEOUT_S,
                            **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise _Conflict(what) from None
            raise KubernetesPoolError(f"{self.where}: {what}: {_said(exc)}") from None
        except HTTPError as exc:
            raise KubernetesPoolError(f"{self.where}: {what}: cannot reach the API server: "
                                      f"{exc}") from None
        return json.loads(response.data)

    def node(self, node: str) -> Node | None:
        """The Node as the API server holds it; None when there is none of that name."""
        name = self._name(node)
        body = self._call(f"GET node {name}", self._api.read_node, name)
        return Node.from_api(body) if body is not None else None

    def _known(self, node: str) -> Node:
        found = self.node(node)
        if found is None:
            raise KubernetesPoolError(f"{self.where}: no Node {self._name(node)} (not "
                                      "registered: is its kubelet running and joined?)")
        return found

    def _patch(self, found: Node, patch: dict[str, Any]) -> None:
        patch.setdefault("metadata", {})["resourceVersion"] = found.resource_version
        if self._call(f"PATCH node {found.name}", self._api.patch_node, found.name, patch,
                      _content_type=STRATEGIC_MERGE) is None:
            raise KubernetesPoolError(f"{self.where}: node {found.name} was deleted while "
                                      "kiln changed it")

    def _retrying(self, what: str, change: Any) -> bool:
        """`change()` (read, decide, patch) again while the node changes under it."""
        try:
            for attempt in Retrying(retry=retry_if_exception_type(_Conflict),
                                    stop=stop_after_attempt(self._attempts),
                                    wait=wait_random_exponential(multiplier=0.05, max=1)):
                with attempt:
                    return change()
        except RetryError:
            raise KubernetesPoolError(
                f"{self.where}: {what}: the node changed under every one of kiln's "
                f"{self._attempts} tries (409 Conflict each time); try again") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the pool ---------------------------------------------------------------------------

    def entry(self, node: str) -> PoolEntry:
        found = self.node(node)
        if found is None:
            return PoolEntry(node, Membership.UNKNOWN, detail="no such Node")
        holds = found.holds(self._tolerated)
        conditions = ", ".join(found.condition_taints())
        if holds:
            detail = "kiln's taint too" if found.kiln_taint else ""
            return PoolEntry(node, Membership.HELD, "; ".join(holds), detail)
        if found.kiln_taint:
            return PoolEntry(node, Membership.DRAINED, found.kiln_reason,
                             f"taint {TAINT}:{TAINT_EFFECT}")
        if found.labelled:
            return PoolEntry(node, Membership.POOLED, detail=conditions)
        return PoolEntry(node, Membership.UNKNOWN, detail=f"Node without {LABEL}={LABEL_VALUE}")

    def members(self) -> list[str]:
        """The Nodes labelled as pooled (a label selector: what a job's nodeSelector sees)."""
        body = self._call("LIST nodes", self._api.list_node,
                          label_selector=f"{LABEL}={LABEL_VALUE}") or {}
        return sorted(item["metadata"]["name"] for item in body.get("items") or [])

    def add(self, node: str) -> bool:
        def change() -> bool:
            found = self._known(node)
            holds = found.holds(self._tolerated)
            if holds:
                raise HeldByAnother(f"{self.where}: {node} is held out by someone else "
                                    f"({'; '.join(holds)}): kiln leaves it out")
            ours = {REASON_ANNOTATION, SINCE_ANNOTATION} & set(found.annotations)
            if found.labelled and not found.kiln_taint and not ours:
                return False
            patch: dict[str, Any] = {"metadata": {"labels": {LABEL: LABEL_VALUE}}}
            if ours:
                patch["metadata"]["annotations"] = dict.fromkeys(ours)
            if found.kiln_taint:
                others = [t for t in found.taints if t.get("key") != TAINT]
                patch["spec"] = {"taints": others or None}
            self._patch(found, patch)
            return True

        return self._retrying(f"adding {node}", change)

    def drain(self, node: str, reason: str) -> bool:
        reason = kiln_reason(reason, node)

        def change() -> bool:
            found = self._known(node)
            if found.holds(self._tolerated):
                return False  # another's hold stays as it is: the node is out either way
            ours = {"key": TAINT, "value": taint_value(reason), "effect": TAINT_EFFECT}
            current = found.kiln_taint
            if current and {k: current.get(k) for k in ours} == ours and not found.labelled \
                    and found.annotations.get(REASON_ANNOTATION) == reason:
                return False
            since = found.annotations.get(SINCE_ANNOTATION) if current else None
            annotations = {REASON_ANNOTATION: reason, SINCE_ANNOTATION: since or _now()}
            patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
            if LABEL in found.labels:
                patch["metadata"]["labels"] = {LABEL: None}
            patch["spec"] = {"taints": [t for t in found.taints if t.get("key") != TAINT]
                             + [ours]}
            self._patch(found, patch)
            return True

        return self._retrying(f"draining {node}", change)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _said(exc: Any) -> str:
    """An ApiException as the API server's Status says it."""
    try:
        status = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        status = {}
    message = status.get("message") or (exc.body or "").strip()[:300] or exc.reason
    text = f"{exc.status} {status.get('reason') or exc.reason}: {message}"
    if exc.status == 401:
        text += " (the kubeconfig's credentials were refused: an expired or wrong token?)"
    elif exc.status == 403:
        text += " (kiln needs get, list and patch on nodes: a ClusterRole bound to its user)"
    return text


# -- the client -----------------------------------------------------------------------------


def core_v1(kubeconfig: str | None = None, context: str | None = None,
            in_cluster: bool = False) -> Any:
    """A CoreV1Api: from the pod's service account (`in_cluster`), or a kubeconfig file
    (None: $KUBECONFIG or ~/.kube/config, as kubectl) and one of its contexts (None: its
    current context)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.CoreV1Api(client.ApiClient(configuration))
        return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig,
                                                              context=context))
    except (ConfigException, OSError) as exc:
        source = "in-cluster service account" if in_cluster else \
            f"kubeconfig {kubeconfig or '(default)'}" + (f" context {context}" if context else "")
        raise KubernetesPoolError(f"kubernetes pool: {source}: {exc}") from None
