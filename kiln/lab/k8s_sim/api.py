"""The simulated API server: the Node resource's paths, status codes and Status bodies."""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request

from kiln.lab.k8s_sim.patch import PatchError, json_patch, merge_patch, strategic_merge_patch

# What the API server accepts on PATCH (handlers/patch.go's supported types), in the order
# its 415 message lists them.
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
    "application/strategic-merge-patch+json",
    "application/apply-patch+cbor",
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# A label value / the name part of a qualified name (apimachinery validation).
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GIT_VERSION = "v1.31.0"  # what /version says: the API these shapes were taken from


def _version_info() -> dict[str, str]:
    return {"major": "1", "minor": "31", "gitVersion": GIT_VERSION, "gitCommit": "simulator",
            "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z",
            "goVersion": "go1.22.5", "compiler": "gc", "platform": "linux/amd64"}


class ApiError(Exception):
    """An answer with a Status body (apimachinery's StatusError)."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": self.message,
                                "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'nodes "{name}" not found',
                    {"name": name, "kind": "nodes"})


def conflict(name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on nodes "{name}": the '
                    "object has been modified; please apply your changes to the latest "
                    "version and try again", {"name": name, "kind": "nodes"})


def invalid(name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422: `causes` are (field, value, why), as field.ErrorList prints them."""
    said = [f'{path}: Invalid value: "{value}": {why}' for path, value, why in causes]
    message = f'Node "{name}" is invalid: ' + (said[0] if len(said) == 1
                                               else "[" + ", ".join(said) + "]")
    return ApiError(422, "Invalid", message, {
        "name": name, "kind": "Node",
        "causes": [{"reason": "FieldValueInvalid", "message": why, "field": path}
                   for path, _value, why in causes]})


def node_object(name: str, labels: dict[str, str] | None = None,
                annotations: dict[str, str] | None = None,
                taints: list[dict[str, str]] | None = None,
                unschedulable: bool = False) -> dict[str, Any]:
    """A Node as a kubelet registers it (v1.31, amd64, Ready), with what the test adds."""
    spec: dict[str, Any] = {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {
            "name": name, "uid": str(uuid.uuid4()),
            "creationTimestamp": "2026-12-01T09:00:00Z",
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", **(labels or {})},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                            **(annotations or {})},
        },
        "spec": spec,
        "status": {
            "capacity": {"cpu": "128", "memory": "2113546240Ki", "pods": "110",
                         "nvidia.com/gpu": "8"},
            "allocatable": {"cpu": "128", "memory": "2113443840Ki", "pods": "110",
                            "nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True",
                            "lastHeartbeatTime": "2026-12-07T08:00:00Z",
                            "lastTransitionTime": "2026-12-01T09:00:30Z",
                            "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "0" * 32, "systemUUID": str(uuid.uuid4()),
                         "bootID": str(uuid.uuid4()), "kernelVersion": "6.1.0-27-amd64",
                         "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "containerRuntimeVersion": "containerd://1.7.22",
                         "kubeletVersion": GIT_VERSION, "kubeProxyVersion": GIT_VERSION,
                         "operatingSystem": "linux", "architecture": "amd64"},
        },
    }


@dataclass(frozen=True)
class Seen:
    """One request the simulator answered."""

    method: str
    path: str
    content_type: str
    code: int


@dataclass
class Cluster:
    """The simulated cluster's Nodes, their resourceVersions (one counter, as etcd's
    revision), the bearer token it accepts, and every request it answered."""

    token: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    revision: int = 1000
    seen: list[Seen] = field(default_factory=list)
    # name -> a change another client makes just before the simulator handles the next
    # write (PATCH, PUT) to that node: a concurrent writer, for conflict tests.
    interleaved: dict[str, Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, node: dict[str, Any]) -> None:
        with self.lock:
            self.revision += 1
            node = copy.deepcopy(node)
            node["metadata"]["resourceVersion"] = str(self.revision)
            self.nodes[node["metadata"]["name"]] = node

    def node(self, name: str) -> dict[str, Any]:
        """A copy of the node as stored (for tests' assertions)."""
        with self.lock:
            return copy.deepcopy(self.nodes[name])

    def change(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Another client changes the node now (a new resourceVersion)."""
        with self.lock:
            self._change(name, change)

    def _change(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        node = copy.deepcopy(self.nodes[name])
        change(node)
        self.revision += 1
        node["metadata"]["resourceVersion"] = str(self.revision)
        self.nodes[name] = node

    def writes(self, name: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.method in ("PATCH", "PUT", "POST", "DELETE")
                and (name is None or s.path.endswith(f"/nodes/{name}"))]

    # -- what the handlers do, under the lock ----------------------------------------------

    def _stored(self, name: str) -> dict[str, Any]:
        if name not in self.nodes:
            raise not_found(name)
        return self.nodes[name]

    def _before_write(self, name: str) -> None:
        change = self.interleaved.pop(name, None)
        if change is not None and name in self.nodes:
            self._change(name, change)

    def _store(self, name: str, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """GuaranteedUpdate: a resourceVersion in `new` other than the stored one is a
        conflict; identity and status are the server's; a write that changes nothing is not
        stored and keeps its resourceVersion."""
        meta = new.get("metadata")
        if not isinstance(meta, dict) or meta.get("name", name) != name:
            given = meta.get("name") if isinstance(meta, dict) else None
            raise ApiError(400, "BadRequest", f"the name of the object ({given}) does not "
                           f"match the name on the URL ({name})")
        if meta.get("resourceVersion", current["metadata"]["resourceVersion"]) != \
                current["metadata"]["resourceVersion"]:
            raise conflict(name)
        for kept in ("uid", "creationTimestamp", "name"):
            meta[kept] = current["metadata"][kept]
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        new["kind"], new["apiVersion"] = "Node", "v1"
        _validate(name, new)
        if new == current:
            return copy.deepcopy(current)
        self.revision += 1
        meta["resourceVersion"] = str(self.revision)
        self.nodes[name] = new
        return copy.deepcopy(new)

    def patch(self, name: str, content_type: str, body: bytes) -> dict[str, Any]:
        if content_type not in PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media "
                           "types include: " + ", ".join(PATCH_TYPES))
        if content_type.startswith("application/apply-patch"):
            raise ApiError(415, "UnsupportedMediaType", f"{content_type} (server-side apply) "
                           "is not simulated by the Kubernetes API simulator")
        try:
            patch = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"error decoding patch: {exc}") from None
        with self.lock:
            self._before_write(name)
            current = self._stored(name)
            try:
                if content_type == "application/json-patch+json":
                    new = json_patch(current, patch)
                elif not isinstance(patch, dict):
                    raise PatchError("json: cannot unmarshal array into Go value of type "
                                     "map[string]interface {}")
                elif content_type == "application/merge-patch+json":
                    new = merge_patch(current, patch)
                else:
                    new = strategic_merge_patch(current, patch)
            except PatchError as exc:
                raise ApiError(exc.status, exc.reason, str(exc)) from None
            # The main resource's strategy keeps status as stored (the status subresource
            # changes it).
            new["status"] = copy.deepcopy(current.get("status", {}))
            return self._store(name, current, new)

    def replace(self, name: str, body: bytes) -> dict[str, Any]:
        try:
            new = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"error decoding body: {exc}") from None
        if not isinstance(new, dict) or new.get("kind", "Node") != "Node":
            raise ApiError(400, "BadRequest", "the body is not a Node")
        with self.lock:
            self._before_write(name)
            current = self._stored(name)
            if not (new.get("metadata") or {}).get("resourceVersion"):
                raise invalid(name, [("metadata.resourceVersion", "0x0",
                                      "must be specified for an update")])
            # PUT on the main resource does not change status (the status subresource does).
            new["status"] = copy.deepcopy(current.get("status", {}))
            return self._store(name, current, new)

    def listed(self, selector: str) -> dict[str, Any]:
        match = _selector(selector)
        with self.lock:
            items = [copy.deepcopy(n) for _, n in sorted(self.nodes.items())
                     if match(n["metadata"].get("labels") or {})]
            return {"kind": "NodeList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.revision)}, "items": items}


def _qualified_name_problem(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if "/" in prefix or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))):
        return "prefix part must be a DNS-1123 subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character, at most 63 characters")
    return ""


def _label_value_problem(value: Any) -> str:
    if not isinstance(value, str):
        return "must be a string"
    if value and (len(value) > 63 or not _NAME.match(value)):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character, "
                "at most 63 characters")
    return ""


def _validate(name: str, node: dict[str, Any]) -> None:
    """The part of ValidateNodeUpdate kiln's changes meet: labels, annotations, taints."""
    causes: list[tuple[str, str, str]] = []
    meta, spec = node["metadata"], node.get("spec") or {}
    for key, value in (meta.get("labels") or {}).items():
        why = _qualified_name_problem(key)
        if why:
            causes.append(("metadata.labels", key, why))
        why = _label_value_problem(value)
        if why:
            causes.append(("metadata.labels", str(value), why))
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        why = _qualified_name_problem(key) or ("" if isinstance(value, str)
                                               else "must be a string")
        if why:
            causes.append(("metadata.annotations", key, why))
    if sum(len(k) + len(v) for k, v in annotations.items() if isinstance(v, str)) > 256 * 1024:
        causes.append(("metadata.annotations", "", "Too long: must have at most 262144 bytes"))
    if not isinstance(spec.get("unschedulable", False), bool):
        causes.append(("spec.unschedulable", str(spec.get("unschedulable")), "must be a bool"))
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate(spec.get("taints") or []):
        where = f"spec.taints[{i}]"
        if not isinstance(taint, dict):
            causes.append((where, str(taint), "must be an object"))
            continue
        why = _qualified_name_problem(str(taint.get("key", "")))
        if why:
            causes.append((f"{where}.key", str(taint.get("key")), why))
        why = _label_value_problem(taint.get("value", ""))
        if why:
            causes.append((f"{where}.value", str(taint.get("value")), why))
        if taint.get("effect") not in TAINT_EFFECTS:
            causes.append((f"{where}.effect", str(taint.get("effect")),
                           "Unsupported value: supported values: " + ", ".join(
                               f'"{e}"' for e in TAINT_EFFECTS)))
        pair = (str(taint.get("key")), str(taint.get("effect")))
        if pair in seen:
            causes.append((f"{where}", str(pair), "Duplicate value: taints must be unique by "
                           "key and effect pair"))
        seen.add(pair)
    if causes:
        raise invalid(name, causes)


def _selector(text: str) -> Callable[[dict[str, str]], bool]:
    """A label selector's equality- and existence-based requirements (k=v, k==v, k!=v, k,
    !k). Set-based ones (in, notin) are not simulated: refused."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if " in " in part or " notin " in part or "(" in part:
            raise ApiError(400, "BadRequest", f"label selector {part!r}: set-based "
                           "requirements are not simulated by the Kubernetes API simulator")
        if "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in part:
            key, value = (s.strip() for s in part.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif part.startswith("!"):
            absent = part[1:].strip()
            tests.append(lambda labels, k=absent: k not in labels)
        else:
            tests.append(lambda labels, k=part: k in labels)
    return lambda labels: all(test(labels) for test in tests)


def _json(body: dict[str, Any], code: int = 200) -> Response:
    return Response(json.dumps(body), status=code, mimetype="application/json")


def create_app(cluster: Cluster) -> Flask:
    app = Flask("kiln.lab.k8s_sim")

    @app.before_request
    def _authenticate() -> Response | None:
        given = request.headers.get("Authorization", "")
        if given != f"Bearer {cluster.token}":
            return _json(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        return None

    @app.after_request
    def _record(response: Response) -> Response:
        cluster.seen.append(Seen(request.method, request.path,
                                 request.headers.get("Content-Type", ""),
                                 response.status_code))
        return response

    @app.errorhandler(ApiError)
    def _status(error: ApiError) -> Response:
        return _json(error.status(), error.code)

    @app.errorhandler(404)
    def _no_route(_error: Exception) -> Response:
        return _json(ApiError(404, "NotFound", "the server could not find the requested "
                              "resource").status(), 404)

    @app.errorhandler(405)
    def _no_method(_error: Exception) -> Response:
        return _json(ApiError(405, "MethodNotAllowed", "the server does not allow this "
                              "method on the requested resource").status(), 405)

    @app.get("/version", strict_slashes=False)
    def _version() -> Response:
        return _json(_version_info())

    @app.get("/api", strict_slashes=False)
    def _api() -> Response:
        return _json({"kind": "APIVersions", "versions": ["v1"],
                      "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                      "serverAddress": request.host}]})

    @app.get("/api/v1/nodes")
    def _list() -> Response:
        if request.args.get("fieldSelector"):
            raise ApiError(400, "BadRequest", "fieldSelector is not simulated by the "
                           "Kubernetes API simulator")
        return _json(cluster.listed(request.args.get("labelSelector", "")))

    @app.get("/api/v1/nodes/<name>")
    def _read(name: str) -> Response:
        with cluster.lock:
            return _json(copy.deepcopy(cluster._stored(name)))

    @app.patch("/api/v1/nodes/<name>")
    def _patch(name: str) -> Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return _json(cluster.patch(name, content_type, request.get_data()))

    @app.put("/api/v1/nodes/<name>")
    def _replace(name: str) -> Response:
        return _json(cluster.replace(name, request.get_data()))

    return app
