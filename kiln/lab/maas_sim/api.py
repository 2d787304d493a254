"""The HTTP face of the MAAS simulator: MAAS API 2.0's paths, operations and responses.

Dispatch works as MAAS's piston handlers do (maasserver/api/support.py): a resource
(`machines/`, `machines/{system_id}/`, `tags/`, `tags/{name}/`, `version/`) and a
signature (HTTP method, `op` from the query string or the form) select the handler; a
signature the resource does not have is "Unrecognised signature: method=POST op=bogus"
(400). A signature real MAAS has but the simulator does not implement answers 501 and says
so, rather than pretending. Bodies are form data, multipart or urlencoded, as MAAS (Django)
takes them; answers are JSON. Every request but `version/` (anonymous in MAAS too) must carry
a valid OAuth PLAINTEXT signature (auth.py).

Flask, not the standard library: Werkzeug parses multipart/form-data the way Django does
(repeated fields, file parts), which the stdlib can only do with the deprecated `cgi`
module; Flask is already here as sushy-tools' dependency.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.datastructures import MultiDict

from kiln.lab.maas_sim.auth import AuthError, OAuthChecker
from kiln.lab.maas_sim.errors import (
    BadRequest,
    Conflict,
    MaasApiError,
    MethodNotAllowed,
    NotFound,
    NotImplementedBySimulator,
    ValidationFailed,
)
from kiln.lab.maas_sim.lifecycle import Lifecycle
from kiln.lab.maas_sim.machines import API_USER, Tag, machine_json, tag_json
from kiln.lab.maas_sim.status import NodeStatus, short_label

API_PREFIX = "/MAAS/api/2.0/"
MAAS_VERSION = "3.6.4"
CAPABILITIES = [
    "networks-management", "static-ipaddresses", "ipv6-deployment-ubuntu",
    "devices-management", "storage-deployment-ubuntu", "network-deployment-ubuntu",
    "bridging-interface-ubuntu", "bridging-automatic-ubuntu", "authenticate-api",
]
API_HASH = "4a1b6a4a1ba5e6a3c45a9b9d2b1f0d3f1a1a5e0c"  # X-MAAS-API-Hash: fixed for the simulator

# Each resource's signatures in MAAS 3.6 (from its OpenAPI document; a unit test checks the
# lists against tests/fixtures/specs/maas-api-2.0-openapi.yaml).
SPEC_SIGNATURES: dict[str, frozenset[tuple[str, str | None]]] = {
    "machines": frozenset({
        ("GET", None), ("POST", None), ("POST", "accept"), ("POST", "accept_all"),
        ("POST", "add_chassis"), ("POST", "allocate"), ("POST", "clone"),
        ("GET", "is_registered"), ("GET", "list_allocated"), ("GET", "power_parameters"),
        ("POST", "release"), ("POST", "set_zone"),
    }),
    "machine": frozenset({
        ("DELETE", None), ("GET", None), ("PUT", None), ("POST", "abort"),
        ("POST", "clear_default_gateways"), ("POST", "commission"), ("POST", "deploy"),
        ("GET", "details"), ("POST", "exit_rescue_mode"), ("GET", "get_curtin_config"),
        ("GET", "get_token"), ("POST", "lock"), ("POST", "mark_broken"),
        ("POST", "mark_fixed"), ("POST", "mount_special"), ("POST", "override_failed_testing"),
        ("POST", "power_off"), ("POST", "power_on"), ("GET", "power_parameters"),
        ("GET", "query_power_state"), ("POST", "release"), ("POST", "rescue_mode"),
        ("POST", "restore_default_configuration"), ("POST", "restore_networking_configuration"),
        ("POST", "restore_storage_configuration"), ("POST", "set_owner_data"),
        ("POST", "set_storage_layout"), ("POST", "set_workload_annotations"), ("POST", "test"),
        ("POST", "unlock"), ("POST", "unmount_special"),
    }),
    "tags": frozenset({("GET", None), ("POST", None)}),
    "tag": frozenset({
        ("DELETE", None), ("GET", None), ("PUT", None), ("GET", "devices"),
        ("GET", "machines"), ("GET", "nodes"), ("GET", "rack_controllers"), ("POST", "rebuild"),
        ("GET", "region_controllers"), ("POST", "update_nodes"),
    }),
    "version": frozenset({("GET", None)}),
}

# Filters of `GET machines/` the simulator applies; the others in MAAS's document are refused.
LIST_FILTERS = {"hostname", "id", "system_id", "mac_address", "status", "owner",
                "power_state", "tags", "not_id", "not_hostname", "zone", "pool", "domain",
                "agent_name"}
SPEC_LIST_FILTERS = LIST_FILTERS | {
    "cpu_count", "mem", "fabrics", "not_fabrics", "vlans", "not_vlans", "subnets",
    "not_subnets", "link_speed", "pod", "not_pod", "pod_type", "not_pod_type", "devices",
    "arch", "not_arch", "cpu_speed", "deployment_target", "not_deployment_target",
    "fabric_classes", "not_fabric_classes", "interfaces", "not_domain", "not_agent_name",
    "not_in_pool", "not_in_zone", "not_owner", "not_power_state", "not_simple_status",
    "not_status", "not_tags", "simple_status", "storage",
}
_MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
_TAG_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")


@dataclass
class Simulator:
    lifecycle: Lifecycle
    auth: OAuthChecker
    requests_log: Path | None = None  # where accepted and refused requests are recorded

    @property
    def store(self):  # noqa: ANN201 - the lifecycle's Store
        return self.lifecycle.store


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status,
                    content_type="application/json; charset=utf-8")


def _flat(values: MultiDict) -> dict[str, str]:
    """Django's QueryDict.get: the last value of a repeated field."""
    return {key: values.getlist(key)[-1] for key in values.keys()}


def _resource(path: str) -> tuple[str, str | None, str | None]:
    """(resource, its key, the op the path names): MAAS routes both `machines/abc/?op=deploy`
    and `machines/abc/op-deploy` (maasserver/urls_api.py adds an `op-` route per operation)."""
    unknown = NotFound(f"Unknown API endpoint: {API_PREFIX}{path}.")
    parts = path.split("/")
    path_op = None
    if parts[-1].startswith("op-") and len(parts[-1]) > 3:
        path_op = parts[-1][3:]
        parts[-1] = ""
    if parts[-1] != "" or len(parts) not in (2, 3) or not all(parts[:-1]):
        raise unknown
    head, *rest = parts[:-1]
    if head == "version" and not rest:
        return "version", None, path_op
    if head == "machines":
        return ("machine", rest[0], path_op) if rest else ("machines", None, path_op)
    if head == "tags":
        return ("tag", rest[0], path_op) if rest else ("tags", None, path_op)
    raise unknown


class Handlers:
    """One method per implemented (resource, method, op)."""

    def __init__(self, simulator: Simulator) -> None:
        self.sim = simulator
        self.life = simulator.lifecycle
        self.table = {
            ("version", "GET", None): self.version,
            ("machines", "GET", None): self.list_machines,
            ("machines", "POST", "allocate"): self.allocate,
            ("machines", "GET", "list_allocated"): self.list_allocated,
            ("machine", "GET", None): self.read_machine,
            ("machine", "POST", "commission"): self.commission,
            ("machine", "POST", "deploy"): self.deploy,
            ("machine", "POST", "release"): self.release,
            ("machine", "POST", "abort"): self.abort,
            ("machine", "POST", "mark_broken"): self.mark_broken,
            ("machine", "POST", "mark_fixed"): self.mark_fixed,
            ("machine", "POST", "power_on"): self.power_on,
            ("machine", "POST", "power_off"): self.power_off,
            ("machine", "GET", "query_power_state"): self.query_power_state,
            ("tags", "GET", None): self.list_tags,
            ("tags", "POST", None): self.create_tag,
            ("tag", "GET", None): self.read_tag,
            ("tag", "DELETE", None): self.delete_tag,
            ("tag", "GET", "machines"): self.tag_machines,
            ("tag", "GET", "nodes"): self.tag_machines,
            ("tag", "POST", "update_nodes"): self.update_nodes,
        }

    def _render(self, machines: list) -> list[dict[str, Any]]:
        tags = list(self.sim.store.tags.values())
        return [machine_json(m, tags) for m in machines]

    def _one(self, machine: Any) -> Response:
        with self.sim.store.reading():
            return _json(self._render([machine])[0])

    def _act(self, action: Any, *args: Any) -> Response:
        """Run a lifecycle action and render its machine under one hold of the store's
        lock: the answer shows the machine as the action left it, before any worker."""
        with self.sim.store.reading():
            return self._one(action(*args))

    # -- version, machines ---------------------------------------------------------------

    def version(self, key: str | None) -> Response:
        return _json({"capabilities": CAPABILITIES, "version": MAAS_VERSION, "subversion": ""})

    def list_machines(self, key: str | None) -> Response:
        args = request.args
        given = {k for k in args.keys() if k != "op"}
        refused = sorted((given & SPEC_LIST_FILTERS) - LIST_FILTERS)
        if refused:
            raise NotImplementedBySimulator(
                f"The MAAS simulator does not implement the machines filter(s) "
                f"{', '.join(refused)}"
            )
        macs = [m.lower().replace("-", ":") for m in args.getlist("mac_address")]
        bad = [m for m in args.getlist("mac_address") if not _MAC.match(m)]
        if bad:
            raise BadRequest(f"Invalid MAC address(es): {', '.join(bad)}")
        labels = args.getlist("status")
        known = {short_label(s) for s in NodeStatus}
        for label in labels:
            if label not in known:
                raise ValidationFailed({"status": [
                    f"Select a valid choice. {label} is not one of the available choices."
                ]})
        with self.sim.store.reading():
            tags = self.sim.store.tags
            chosen = []
            for machine in self.sim.store.ordered():
                names = {t.name for t in tags.values() if machine.system_id in t.system_ids}
                checks = [
                    ("hostname", lambda v, m=machine: v in (m.hostname, f"{m.hostname}.maas")),
                    ("id", lambda v, m=machine: v == m.system_id),
                    ("system_id", lambda v, m=machine: v == m.system_id),
                    ("status", lambda v, m=machine: v == short_label(m.status)),
                    ("owner", lambda v, m=machine: v == m.owner),
                    ("power_state", lambda v, m=machine: v == m.power_state),
                    ("zone", lambda v: v == "default"),
                    ("pool", lambda v: v == "default"),
                    ("domain", lambda v: v == "maas"),
                    ("agent_name", lambda v, m=machine: v == m.agent_name),
                ]
                if not all(any(test(v) for v in args.getlist(name))
                           for name, test in checks if name in args):
                    continue
                if macs and not {i["mac_address"] for i in machine.interfaces()} & set(macs):
                    continue
                wanted = {t for v in args.getlist("tags") for t in v.split(",") if t}
                if not wanted <= names:
                    continue
                if machine.system_id in args.getlist("not_id"):
                    continue
                if machine.hostname in args.getlist("not_hostname"):
                    continue
                chosen.append(machine)
            return _json(self._render(chosen))

    def list_allocated(self, key: str | None) -> Response:
        with self.sim.store.reading():
            mine = [m for m in self.sim.store.ordered() if m.owner == API_USER]
            return _json(self._render(mine))

    def allocate(self, key: str | None) -> Response:
        params = {k: request.form.getlist(k) for k in request.form.keys() if k != "op"}
        with self.sim.store.reading():
            document = self._render([self.life.allocate(params)])[0]
        document["constraints_by_type"] = {}
        return _json(document)

    def read_machine(self, key: str | None) -> Response:
        return self._act(self.life.machine, key)

    def commission(self, key: str | None) -> Response:
        return self._act(self.life.commission, key, _flat(request.form))

    def deploy(self, key: str | None) -> Response:
        return self._act(self.life.deploy, key, _flat(request.form))

    def release(self, key: str | None) -> Response:
        return self._act(self.life.release, key, _flat(request.form))

    def abort(self, key: str | None) -> Response:
        return self._act(self.life.abort, key)

    def mark_broken(self, key: str | None) -> Response:
        form = _flat(request.form)
        comment = form.get("comment") or form.get("error_description") or ""
        return self._act(self.life.mark_broken, key, comment)

    def mark_fixed(self, key: str | None) -> Response:
        return self._act(self.life.mark_fixed, key)

    def power_on(self, key: str | None) -> Response:
        return self._act(self.life.power_on, key, _flat(request.form))

    def power_off(self, key: str | None) -> Response:
        return self._act(self.life.power_off, key, _flat(request.form))

    def query_power_state(self, key: str | None) -> Response:
        return _json({"state": self.life.query_power_state(key)})

    # -- tags ------------------------------------------------------------------------------

    def _tag(self, name: str | None) -> Tag:
        tag = self.sim.store.tags.get(name or "")
        if tag is None:
            raise NotFound("No Tag matches the given query.")
        return tag

    def list_tags(self, key: str | None) -> Response:
        with self.sim.store.reading():
            return _json([tag_json(t) for t in self.sim.store.tags.values()])

    def create_tag(self, key: str | None) -> Response:
        form = _flat(request.form)
        name = form.get("name", "")
        if not name:
            raise ValidationFailed({"name": ["This field is required."]})
        if not _TAG_NAME.match(name) or len(name) > 256:
            raise ValidationFailed({"name": ["Enter a valid value."]})
        if form.get("definition"):
            raise NotImplementedBySimulator(
                "The MAAS simulator does not implement tag definitions (XPath over the "
                "machines' lshw data); create the tag without one and use op=update_nodes"
            )
        with self.sim.store.changing() as store:
            if name in store.tags:
                raise ValidationFailed({"name": ["Tag with this Name already exists."]})
            tag = Tag(name=name, comment=form.get("comment", ""),
                      kernel_opts=form.get("kernel_opts", ""))
            store.tags[name] = tag
            return _json(tag_json(tag))

    def read_tag(self, key: str | None) -> Response:
        with self.sim.store.reading():
            return _json(tag_json(self._tag(key)))

    def delete_tag(self, key: str | None) -> Response:
        with self.sim.store.changing() as store:
            store.tags.pop(self._tag(key).name)
        return Response(status=204)

    def tag_machines(self, key: str | None) -> Response:
        with self.sim.store.reading():
            tag = self._tag(key)
            members = [m for m in self.sim.store.ordered() if m.system_id in tag.system_ids]
            return _json(self._render(members))

    def update_nodes(self, key: str | None) -> Response:
        form = request.form
        with self.sim.store.changing() as store:
            tag = self._tag(key)
            definition = form.get("definition")
            if definition is not None and definition != tag.definition:
                raise Conflict(f"Definition supplied '{definition}' doesn't match current "
                               f"definition '{tag.definition}'")
            add = {s for s in form.getlist("add") if s in store.machines}
            remove = {s for s in form.getlist("remove") if s in store.machines}
            tag.system_ids = sorted((set(tag.system_ids) | add) - remove)
            return _json({"added": len(add), "removed": len(remove)})


def create_app(simulator: Simulator) -> Flask:
    # Paths given, so Flask need not locate the package (it cannot under every importer).
    here = str(Path(__file__).resolve().parent)
    app = Flask("kiln.lab.maas_sim", root_path=here, instance_path=here)
    app.config["MAX_FORM_MEMORY_SIZE"] = 16 * 1024 * 1024  # user_data can be long
    handlers = Handlers(simulator)
    record_lock = threading.Lock()

    def dispatch(path: str) -> Response:
        resource, key, path_op = _resource(path)
        if resource != "version":  # MAAS serves version/ anonymously
            simulator.auth.check(request.headers.get("Authorization"))
        op = request.args.get("op") or request.form.get("op") or path_op
        signature = (request.method, op)
        known = SPEC_SIGNATURES[resource]
        if signature not in known:
            if request.method not in {m for m, _ in known}:
                raise MethodNotAllowed("Method Not Allowed")
            raise BadRequest(f"Unrecognised signature: method={request.method} op={op}")
        handler = handlers.table.get((resource, request.method, op))
        if handler is None:
            where = f"{path}?op={op}" if op else path
            raise NotImplementedBySimulator(
                f"The MAAS simulator does not implement {request.method} {API_PREFIX}{where}"
            )
        return handler(key)

    @app.route(API_PREFIX + "<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
    def api(path: str) -> Response:
        request.get_data(cache=True)  # keep the raw body for the request record
        try:
            response = dispatch(path)
        except AuthError as exc:
            response = Response(exc.message, status=exc.status,
                                content_type="text/plain; charset=utf-8")
            if exc.challenge:
                response.headers["WWW-Authenticate"] = 'OAuth realm="OAuth"'
        except MaasApiError as exc:
            text, content_type = exc.body()
            response = Response(text, status=exc.status, content_type=content_type)
        response.headers["X-MAAS-API-Hash"] = API_HASH
        return response

    @app.after_request
    def record(response: Response) -> Response:
        if simulator.requests_log is not None and request.path.startswith(API_PREFIX):
            entry = {
                "time": time.time(),
                "method": request.method,
                "path": request.path,
                "query": list(request.args.items(multi=True)),
                "content_type": request.content_type,
                "body_b64": base64.b64encode(request.get_data(cache=True)).decode(),
                "status": response.status_code,
            }
            with record_lock, open(simulator.requests_log, "a") as out:
                out.write(json.dumps(entry) + "\n")
        return response

    return app
