"""The UFM simulator's HTTP layer: UFM's `/ufmRest` paths with HTTP Basic authentication.

Flask rather than the standard library's http.server: the routes with path variables
(`resources/pkeys/<pkey>/guids/<g1>,<g2>`), method dispatch, JSON bodies and a test client
for the unit tests come with it, and the lab already carries Flask (sushy-tools runs on it).

Everything under `/ufmRest` needs the lab's UFM credentials (401 and a Basic challenge
otherwise, before anything else is looked at); anything else is 404, as are unknown paths
under `/ufmRest`. Each request builds the fabric model afresh and first turns port changes
since the last look into events (lab/ufm_sim/store.py); a sweeper thread does the same
every few seconds, so events are dated close to when the change happened.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from . import pkeys as pk
from .fabric import Fabric, FabricError, build_fabric
from .pkeys import ApiError
from .resources import FAULT_CONDITION, links_json, port_json, system_json, unhealthy_json
from .store import Store

PREFIX = "/ufmRest"
TOKEN_PREFIX = "/ufmRestV3"  # access-token authentication (reference §1.4)
TOKEN_LIFETIME = 315360000  # the doc example's expires_in (about ten years)
REALM = "UFM simulator"
RELEASE = "6.19.0-7"  # the UFM release whose REST API the simulator follows (§2-§5)
SYSTEM_TYPES = ("switch", "host", "gateway", "router")
PORT_ACTIONS = ("isolate", "no_discover")


class Simulator:
    """The lab directory, its persistent state, and the fabric as of now."""

    def __init__(self, lab: Path) -> None:
        self.lab = Path(lab)
        self.store = Store(self.lab)

    def fabric(self) -> Fabric:
        fabric = build_fabric(self.lab)
        self.store.observe(fabric)
        return fabric

    def sweep_forever(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.fabric()
            except FabricError as exc:  # a half-written lab; say so and look again later
                print(f"ufm simulator: sweep: {exc}", flush=True)


def _flag(name: str, default: bool = False) -> bool:
    value = request.args.get(name)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise ApiError(400, f"query parameter {name}: {value!r} is not true or false")
    return value.lower() == "true"


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "request body: expected JSON (Content-Type: application/json)")
    return body


def _ok() -> Response:
    return Response(status=200)


def _authorised(username: str, password: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given_user, sep, given_password = base64.b64decode(encoded, validate=True).decode(
            "utf-8"
        ).partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared, always: the answer's timing says nothing about which one was wrong.
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    return bool(sep) and user_ok and password_ok


def _token_authorised(sim: Simulator) -> bool:
    """`Authorization: Basic <access_token>`: the raw token, not base64 of user:password
    (reference §1.4)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not token:
        return False
    now = time.time()
    return any(
        hmac.compare_digest(t["access_token"].encode(), token.strip().encode())
        and not t["revoked"] and t["issued_at"] + t["expires_in"] > now
        for t in sim.store.tokens()
    )


def _token_routes(api: Blueprint, sim: Simulator, username: str) -> None:
    """app/tokens (reference §1.4): list mine, create one (no body), revoke one
    (multipart field `token`)."""

    @_route(api, "/app/tokens", ["GET"])
    def list_tokens() -> Response:
        return jsonify(sim.store.tokens())

    @_route(api, "/app/tokens", ["POST"])
    def create_token() -> Response:
        token = {"access_token": secrets.token_hex(16), "revoked": False,
                 "issued_at": int(time.time()), "expires_in": TOKEN_LIFETIME,
                 "username": username}
        with sim.store.lock:
            sim.store.set_tokens(sim.store.tokens() + [token])
        return jsonify(token)

    @_route(api, "/app/tokens/revoke", ["POST"])
    def revoke_token() -> Response:
        value = request.form.get("token")
        if not value:
            raise ApiError(400, "token: give the access token to revoke (multipart field)")
        with sim.store.lock:
            tokens = sim.store.tokens()
            found = [t for t in tokens if t["access_token"] == value]
            if not found:
                raise ApiError(404, "no such token")
            for t in found:
                t["revoked"] = True
            sim.store.set_tokens(tokens)
        return _ok()


def create_app(lab: Path, username: str, password: str) -> Flask:
    """The simulator's WSGI application for the lab at `lab`."""
    if not username or not password:
        raise ValueError("UFM simulator: empty username or password")
    sim = Simulator(lab)
    # An explicit instance path: Flask's own search for one trips over editable installs.
    app = Flask("kiln.lab.ufm_sim", instance_path=str(sim.store.directory.resolve()))
    app.config["UFM_SIMULATOR"] = sim
    api = Blueprint("ufmRest", __name__, url_prefix=PREFIX)

    @app.before_request
    def authenticate() -> Response | None:
        path = request.path
        if path == TOKEN_PREFIX or path.startswith(TOKEN_PREFIX + "/"):
            denied = not _token_authorised(sim)
        else:
            denied = (path == PREFIX or path.startswith(PREFIX + "/")) and not _authorised(
                username, password)
        if denied:
            response = jsonify({"error": "Unauthorized"})
            response.status_code = 401
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
            return response
        return None

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify({"error": exc.message}), exc.status

    @app.errorhandler(FabricError)
    def fabric_error(exc: FabricError) -> tuple[Response, int]:
        return jsonify({"error": f"UFM simulator: {exc}"}), 500

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> tuple[Response, int]:
        return jsonify({"error": f"Not Found: {request.path}"}), 404

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> tuple[Response, int]:
        return jsonify({"error": f"Method {request.method} not allowed: {request.path}"}), 405

    _systems_routes(api, sim)
    _ports_routes(api, sim)
    _pkeys_routes(api, sim)
    _app_routes(api, sim)
    _token_routes(api, sim, username)
    app.register_blueprint(api)
    # The same resources under the token prefix: "the rest of the path is the same" (§1.1).
    app.register_blueprint(api, url_prefix=TOKEN_PREFIX, name="ufmRestV3")
    return app


def _route(bp: Blueprint, rule: str, methods: list[str]) -> Callable:
    return bp.route(rule, methods=methods, strict_slashes=False)


# -- resources/systems ---------------------------------------------------------------------


def _systems_routes(api: Blueprint, sim: Simulator) -> None:
    @_route(api, "/resources/systems", ["GET"])
    def systems() -> Response:
        fabric = sim.fabric()
        return jsonify([system_json(s, _flag("ports")) for s in _filter_systems(fabric)])

    @_route(api, "/resources/systems/<names>", ["GET"])
    def systems_by_name(names: str) -> Response:
        fabric = sim.fabric()
        wanted = [n.lower() for n in names.split(",") if n]
        found = [s for s in fabric.systems if s.guid in wanted]
        if not found:
            raise ApiError(404, f"no system named {names} (a system's name is its GUID)")
        return jsonify([system_json(s, _flag("ports")) for s in found])


def _filter_systems(fabric: Fabric) -> list:
    systems = fabric.systems
    kind = request.args.get("type")
    if kind is not None:
        if kind not in SYSTEM_TYPES:
            raise ApiError(400, f"query parameter type: {kind!r} is not one of {SYSTEM_TYPES}")
        systems = [s for s in systems if s.kind == kind]
    for arg, attribute in (("ip", "ip"), ("model", "model"), ("role", "role")):
        value = request.args.get(arg)
        if value is not None:
            systems = [s for s in systems if getattr(s, attribute) == value]
    peers = request.args.get("peer_name")
    if peers is not None:
        names = set(peers.split(","))
        systems = [
            s for s in systems
            if any(p.peer and p.peer.system.system_name in names for p in s.ports)
        ]
    return systems


# -- resources/ports and resources/links ----------------------------------------------------


def _ports_routes(api: Blueprint, sim: Simulator) -> None:
    @_route(api, "/resources/ports", ["GET"])
    def ports() -> Response:
        for unsupported in ("system_name", "guid"):
            if unsupported in request.args:
                raise ApiError(400, f"query parameter {unsupported} is not supported")
        fabric = sim.fabric()
        selected = fabric.ports()
        system = request.args.get("system")
        if system is not None:
            guids = {g.lower() for g in system.split(",")}
            selected = [p for p in selected if p.system.guid in guids]
        sys_type = request.args.get("sys_type")
        if sys_type is not None:
            kinds = {"Computer": "host", "Switch": "switch"}
            if sys_type not in kinds:
                raise ApiError(400, f"query parameter sys_type: {sys_type!r} is not "
                                    "Computer or Switch")
            selected = [p for p in selected if p.system.kind == kinds[sys_type]]
        if _flag("active"):
            selected = [p for p in selected if p.active]
        if _flag("high_ber_only"):
            selected = []  # the simulated links carry no bit errors
        return jsonify([port_json(p) for p in selected])

    @_route(api, "/resources/ports/<names>", ["GET"])
    def ports_by_name(names: str) -> Response:
        fabric = sim.fabric()
        found = [p for n in names.split(",") if (p := fabric.port(n.lower())) is not None]
        if not found:
            raise ApiError(404, f"no port named {names} (a port's name is <GUID>_<number>)")
        return jsonify([port_json(p) for p in found])

    @_route(api, "/resources/links", ["GET"])
    def links() -> Response:
        fabric = sim.fabric()
        name = request.args.get("system")
        if name is None:
            return jsonify(links_json(fabric))
        target = fabric.system(name)  # the reference writes system=<system-name>
        return jsonify(links_json(fabric, target) if target is not None else [])


# -- resources/pkeys -----------------------------------------------------------------------


def _host_guids(fabric: Fabric) -> dict[str, list[str]]:
    return {h.system_name: [p.guid for p in h.ports] for h in fabric.hosts()}


def _pkeys_routes(api: Blueprint, sim: Simulator) -> None:
    def with_pkeys(change: Callable[[dict[str, Any], Fabric], None]) -> Response:
        with sim.store.lock:
            fabric = sim.fabric()
            stored = sim.store.pkeys()
            change(stored, fabric)
            sim.store.set_pkeys(stored)
        return _ok()

    def all_partitions(fabric: Fabric) -> dict[str, dict[str, Any]]:
        every_port = sorted(fabric.hca_port_guids())
        return {pk.pkey_key(pk.MANAGEMENT_PKEY): pk.management(every_port), **sim.store.pkeys()}

    @_route(api, "/resources/pkeys", ["GET"])
    def list_pkeys() -> Response:
        guids_data, qos = _flag("guids_data"), _flag("qos_conf")
        partitions = all_partitions(sim.fabric())
        return jsonify({k: pk.partition_json(v, guids_data, qos) for k, v in partitions.items()})

    @_route(api, "/resources/pkeys/<pkey>", ["GET"])
    def get_pkey(pkey: str) -> Response:
        key = pk.pkey_key(pk.lookup_pkey(pkey))
        partition = all_partitions(sim.fabric()).get(key)
        if partition is None:
            return jsonify({})  # UFM answers an unknown PKey with an empty object (§5.4)
        return jsonify(pk.partition_json(partition, _flag("guids_data"), _flag("qos_conf")))

    @_route(api, "/resources/pkeys", ["POST"])
    def add_guids() -> Response:
        body = _json_body()
        return with_pkeys(lambda stored, f: pk.add_guids(stored, body, f.hca_port_guids()))

    @_route(api, "/resources/pkeys", ["PUT"])
    def set_guids() -> Response:
        body = _json_body()
        return with_pkeys(
            lambda stored, f: pk.add_guids(stored, body, f.hca_port_guids(), replace=True)
        )

    @_route(api, "/resources/pkeys/add", ["POST"])
    def create_empty() -> Response:
        body = _json_body()
        return with_pkeys(lambda stored, _f: pk.create_empty(stored, body))

    @_route(api, "/resources/pkeys/hosts", ["POST"])
    def add_hosts() -> Response:
        body = _json_body()
        return with_pkeys(lambda stored, f: pk.add_hosts(stored, body, _host_guids(f)))

    @_route(api, "/resources/pkeys/<pkey>", ["DELETE"])
    def delete_pkey(pkey: str) -> Response:
        return with_pkeys(lambda stored, _f: pk.delete(stored, pkey))

    @_route(api, "/resources/pkeys/<pkey>/guids/<guids>", ["DELETE"])
    def remove_guids(pkey: str, guids: str) -> Response:
        return with_pkeys(lambda stored, _f: pk.remove_guids(stored, pkey, guids))

    @_route(api, "/resources/pkeys/<pkey>/hosts/<hosts>", ["DELETE"])
    def remove_hosts(pkey: str, hosts: str) -> Response:
        return with_pkeys(
            lambda stored, f: pk.remove_hosts(stored, pkey, hosts, _host_guids(f))
        )


# -- app/events, app/unhealthy_ports, app/ufm_version --------------------------------------


def _unhealthy(sim: Simulator, fabric: Fabric, single: bool = False) -> dict[str, dict]:
    """Port name -> entry: ports a fault took down, then ports marked by hand."""
    entries = {}
    for host in fabric.hosts():
        for port in host.ports:
            if port.fault == "hca-port-down" and not port.active:
                since = sim.store.since(port.name)
                entries[port.name] = unhealthy_json(port, FAULT_CONDITION, "Warning", since,
                                                    single)
    for name, mark in sim.store.manual_unhealthy().items():
        port = fabric.port(name)
        if port is not None and name not in entries:
            entries[name] = unhealthy_json(port, "MANUAL", "Info", mark["since"], single)
    return entries


def _app_routes(api: Blueprint, sim: Simulator) -> None:
    @_route(api, "/app/events", ["GET"])
    def events() -> Response:
        sim.fabric()
        selected = sim.store.events()
        for arg in ("object_name", "type", "category", "severity"):
            value = request.args.get(arg)
            if value is not None:
                selected = [e for e in selected if e[arg] == value]
        if request.args.get("group") is not None:
            selected = []  # the simulator has no groups, so no object is in one
        return jsonify(selected)

    @_route(api, "/app/events/<int:event_id>", ["GET"])
    def event(event_id: int) -> Response:
        sim.fabric()
        found = [e for e in sim.store.events() if e["id"] == event_id]
        if not found:
            raise ApiError(404, f"no event {event_id}")
        return jsonify(found[0])

    @_route(api, "/app/events/<int:event_id>", ["DELETE"])
    def delete_event(event_id: int) -> Response:
        if not sim.store.delete_event(event_id):
            raise ApiError(404, f"no event {event_id}")
        return _ok()

    @_route(api, "/app/unhealthy_ports", ["GET"])
    def unhealthy_ports() -> Response:
        return jsonify(list(_unhealthy(sim, sim.fabric()).values()))

    @_route(api, "/app/unhealthy_ports/<port_name>", ["GET"])
    def unhealthy_port(port_name: str) -> Response:
        entry = _unhealthy(sim, sim.fabric(), single=True).get(port_name.lower())
        if entry is None:
            raise ApiError(404, f"port {port_name} is not unhealthy (or does not exist)")
        return jsonify(entry)

    @_route(api, "/app/unhealthy_ports", ["PUT"])
    def mark_ports() -> Response:
        body = _json_body()
        with sim.store.lock:
            marks = _changed_marks(sim, sim.fabric(), body)
            sim.store.set_manual_unhealthy(marks)
        return _ok()

    @_route(api, "/app/ufm_version", ["GET"])
    def ufm_version() -> Response:
        return jsonify({"ufm_release_version": RELEASE, "plugins": {}})


def _changed_marks(sim: Simulator, fabric: Fabric, body: Any) -> dict[str, dict]:
    """PUT app/unhealthy_ports: mark ports UNHEALTHY (with an action) or HEALTHY again.

    HEALTHY clears marks made here; a port a fault keeps down stays unhealthy, as the SM
    marks it again while its condition lasts.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "request body: expected a JSON object")
    extra = sorted(set(body) - {"ports", "devices", "ports_policy", "action"})
    if extra:
        raise ApiError(400, f"Additional properties are not allowed ({', '.join(extra)})")
    policy = body.get("ports_policy")
    if policy not in ("HEALTHY", "UNHEALTHY"):
        raise ApiError(400, f"ports_policy: {policy!r} is not HEALTHY or UNHEALTHY")
    names = body.get("ports", [])
    devices = body.get("devices", [])
    if not isinstance(names, list) or not isinstance(devices, list) or not (names or devices):
        raise ApiError(400, "ports / devices: give a list of port names or device GUIDs")
    unknown = [n for n in names if not isinstance(n, str) or fabric.port(n.lower()) is None]
    by_guid = {s.guid: s for s in fabric.systems}
    unknown += [d for d in devices if not isinstance(d, str) or d.lower() not in by_guid]
    if unknown:
        raise ApiError(400, f"unknown ports or devices: {', '.join(map(str, unknown))}")
    ports = [n.lower() for n in names]
    for device in devices:
        ports += [p.name for p in by_guid[device.lower()].ports]
    marks = sim.store.manual_unhealthy()
    if policy == "UNHEALTHY":
        action = body.get("action", "isolate")
        if action not in PORT_ACTIONS:
            raise ApiError(400, f"action: {action!r} is not one of {', '.join(PORT_ACTIONS)}")
        for name in ports:
            marks.setdefault(name, {"since": time.time(), "action": action})
    else:
        for name in ports:
            marks.pop(name, None)
    return marks
