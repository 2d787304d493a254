"""kiln's MAAS client against a scripted MAAS on loopback (a real HTTP server, real sockets).

The server plays MAAS's side only: it checks the OAuth PLAINTEXT signature, parses the
multipart body as MAAS (Django) would, and answers what each test scripts. What is under
test is the client: its requests (each one checked against MAAS's OpenAPI document with
openapi-core), its retries, its errors, and the waiting of the lifecycle functions.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from oauthlib.oauth1.rfc5849 import utils as oauth_utils
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from kiln.core.errors import KilnError
from kiln.core.retry import RetryPolicy
from kiln.core.secrets import MissingCredential
from kiln.roles.maas import (
    ImageMismatch,
    MAASAuthError,
    MAASClient,
    MAASRequestError,
    MAASTimeout,
    MAASUnavailable,
    MachineFailed,
    MachineStateError,
    Status,
    Waiter,
    commissioned,
    deployed,
    released,
    tagged,
)
from kiln.roles.maas.apicheck import RequestRecorder, SpecValidator, split_api_url
from kiln.roles.maas.client import SentRequest, api_root
from kiln.roles.maas.errors import MAASError
from kiln.roles.maas.settings import client_for_host
from kiln.roles.maas.userdata import AptMirror, AptSource, cloud_config, lab_vendor_mirror

ROOT = Path(__file__).resolve().parents[4]
SPEC = ROOT / "tests/fixtures/specs/maas-api-2.0-openapi.yaml"
CONSUMER, TOKEN = "Cq5hX3nPZ2mQwLr7Ty", "Hk2nV8bRt4sWz9QxLm"
TOKEN_SECRET = "s3cr3tS3cr3tS3cr3tS3cr3tS3cr3t01"
API_KEY = f"{CONSUMER}:{TOKEN}:{TOKEN_SECRET}"
FAST = RetryPolicy(attempts=4, first_delay=0.0, factor=2.0, max_delay=0.0)
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEkeyEXAMPLEkeyEXAMPLEkeyEXAMPLEk kiln@lab"
PGP_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZexample\n-----END PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class Image:
    osystem: str = "ubuntu"
    distro_series: str = "jammy"
    hwe_kernel: str = "hwe-22.04"


@dataclass
class Received:
    method: str
    path: str  # under /MAAS/api/2.0/
    op: str | None
    form: dict[str, list[str]]
    query: dict[str, list[str]]
    oauth: dict[str, str]


Handler = Callable[["ScriptedMAAS", Received], tuple[int, Any]]


@dataclass
class ScriptedMAAS:
    """MAAS's side of the wire: machines as documents, answers scripted per (method, path, op).

    `advance[system_id]` lists the statuses a machine shows on successive reads once a POST
    has acted on it, so a test scripts what MAAS's workers would do between polls.
    """

    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    handlers: dict[tuple[str, str, str | None], Handler] = field(default_factory=dict)
    advance: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    failures: list[int] = field(default_factory=list)  # statuses to answer before the script
    received: list[Received] = field(default_factory=list)
    tags: dict[str, list[str]] = field(default_factory=dict)
    acted_on: set[str] = field(default_factory=set)  # machines a POST has changed

    def add_machine(self, system_id: str, hostname: str, status: Status, **extra: Any) -> None:
        self.machines[system_id] = {
            "system_id": system_id, "hostname": hostname, "status": int(status),
            "status_name": STATUS_NAMES[status], "status_message": None, "osystem": "",
            "distro_series": "", "hwe_kernel": None, "power_state": "off", "tag_names": [],
            "ip_addresses": [], **extra,
        }

    def set_status(self, system_id: str, status: Status, message: str = "") -> None:
        self.machines[system_id].update(status=int(status), status_name=STATUS_NAMES[status],
                                        status_message=message or None)

    def wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        response = self.respond(request)
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        prefix = "/MAAS/api/2.0/"
        if not request.path.startswith(prefix):
            return Response("Not Found", 404)
        oauth = _oauth_params(request.headers.get("Authorization", ""))
        path = request.path[len(prefix):]
        op = request.args.get("op")
        received = Received(
            request.method, path, op,
            {k: request.form.getlist(k) for k in request.form.keys()},
            {k: request.args.getlist(k) for k in request.args.keys() if k != "op"},
            oauth,
        )
        self.received.append(received)
        if oauth.get("oauth_signature") != f"&{TOKEN_SECRET}" or \
                oauth.get("oauth_consumer_key") != CONSUMER or oauth.get("oauth_token") != TOKEN:
            return Response(f"Authorization Error: 'Invalid signature' &{TOKEN_SECRET}", 401)
        if self.failures:
            status = self.failures.pop(0)
            return Response("Service Unavailable", status, headers={"Retry-After": "0"})
        handler = self.handlers.get((request.method, path, op)) or DEFAULT_HANDLERS.get(
            (request.method, _shape(path), op)
        )
        if handler is None:
            return Response(f"Unrecognised signature: method={request.method} op={op}", 400)
        status, body = handler(self, received)
        if isinstance(body, str):
            return Response(body, status, content_type="text/plain; charset=utf-8")
        return Response(json.dumps(body), status, content_type="application/json")


STATUS_NAMES = {status: status.name.replace("_", " ").capitalize() for status in Status}
STATUS_NAMES.update({Status.FAILED_RELEASING: "Releasing failed"})


def _oauth_params(header: str) -> dict[str, str]:
    if not header.startswith("OAuth "):
        return {}
    return {k: oauth_utils.unescape(v) for k, v in oauth_utils.parse_authorization_header(header)}


def _shape(path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[0] in ("machines", "tags") and len(parts) == 2:
        return f"{parts[0]}/{{id}}/"
    return path


def _system_id(received: Received) -> str:
    return received.path.split("/")[1]


def _read(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
    system_id = _system_id(received)
    if system_id not in maas.machines:
        return 404, "No Machine matches the given query."
    script = maas.advance.get(system_id)
    if script and system_id in maas.acted_on:
        status, message = script.pop(0)
        maas.set_status(system_id, Status(status), message)
    return 200, maas.machines[system_id]


def _list(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
    wanted = received.query.get("hostname")
    return 200, [m for m in maas.machines.values() if not wanted or m["hostname"] in wanted]


def _transition(status: Status, **fields: Any) -> Handler:
    def handle(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
        system_id = _system_id(received)
        maas.set_status(system_id, status)
        maas.machines[system_id].update(fields)
        maas.acted_on.add(system_id)
        return 200, maas.machines[system_id]

    return handle


def _deploy(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
    system_id = _system_id(received)
    form = {k: v[-1] for k, v in received.form.items()}
    maas.set_status(system_id, Status.DEPLOYING)
    maas.acted_on.add(system_id)
    maas.machines[system_id].update(osystem=form["osystem"], distro_series=form["distro_series"],
                                    hwe_kernel=form.get("hwe_kernel"))
    return 200, maas.machines[system_id]


def _update_nodes(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
    name = _system_id(received)
    if name not in maas.tags:
        return 404, "No Tag matches the given query."
    for system_id in received.form.get("add", []):
        maas.tags[name].append(system_id)
        maas.machines[system_id]["tag_names"].append(name)
    return 200, {"added": len(received.form.get("add", [])), "removed": 0}


def _create_tag(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
    name = received.form["name"][-1]
    if name in maas.tags:
        return 400, json.dumps({"name": ["Tag with this Name already exists."]})
    maas.tags[name] = []
    return 200, {"name": name, "definition": "", "comment": "", "kernel_opts": ""}


def _read_tag(maas: ScriptedMAAS, received: Received) -> tuple[int, Any]:
    name = _system_id(received)
    if name not in maas.tags:
        return 404, "No Tag matches the given query."
    return 200, {"name": name, "definition": "", "comment": "", "kernel_opts": ""}


DEFAULT_HANDLERS: dict[tuple[str, str, str | None], Handler] = {
    ("GET", "version/", None): lambda m, r: (200, {"version": "3.6.4", "subversion": "",
                                                  "capabilities": ["authenticate-api"]}),
    ("GET", "machines/", None): _list,
    ("GET", "machines/{id}/", None): _read,
    ("POST", "machines/{id}/", "commission"): _transition(Status.COMMISSIONING),
    ("POST", "machines/{id}/", "deploy"): _deploy,
    ("POST", "machines/{id}/", "release"): _transition(Status.DISK_ERASING),
    ("POST", "machines/{id}/", "abort"): _transition(Status.ALLOCATED),
    ("POST", "machines/{id}/", "mark_broken"): _transition(Status.BROKEN),
    ("POST", "machines/{id}/", "power_on"): _transition(Status.READY, power_state="on"),
    ("POST", "machines/{id}/", "power_off"): _transition(Status.READY, power_state="off"),
    ("GET", "machines/{id}/", "query_power_state"): lambda m, r: (
        200, {"state": m.machines[_system_id(r)]["power_state"]}
    ),
    ("GET", "tags/", None): lambda m, r: (200, [{"name": n} for n in m.tags]),
    ("POST", "tags/", None): _create_tag,
    ("GET", "tags/{id}/", None): _read_tag,
    ("POST", "tags/{id}/", "update_nodes"): _update_nodes,
    ("GET", "tags/{id}/", "machines"): lambda m, r: (
        200, [m.machines[s] for s in m.tags.get(_system_id(r), [])]
    ),
}


@pytest.fixture
def maas():
    scripted = ScriptedMAAS()
    server = make_server("127.0.0.1", 0, scripted.wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    scripted.url = f"http://127.0.0.1:{server.server_port}/MAAS/"
    yield scripted
    server.shutdown()
    thread.join()


@pytest.fixture
def recorder() -> RequestRecorder:
    return RequestRecorder()


@pytest.fixture
def client(maas, recorder) -> MAASClient:
    return MAASClient(maas.url, API_KEY, key_source="KILN_MAAS_API_KEY", retry=FAST,
                      sleep=lambda s: None, on_request=recorder)


@pytest.fixture(scope="module")
def spec() -> SpecValidator:
    return SpecValidator(SPEC)


class FakeClock:
    """Time for the lifecycle's waits: each sleep advances it, nothing really waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lines: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def waiter(self, poll: float = 10.0) -> Waiter:
        return Waiter(poll_interval=poll, progress=self.lines.append, clock=lambda: self.now,
                      wall_clock=lambda: self.now, sleep=self.sleep)


# --- every request, validated against MAAS's OpenAPI document ------------------------------


def test_every_call_validates_against_maas_openapi_document(maas, client, recorder, spec):
    maas.add_machine("4y3h7n", "gpu-003", Status.NEW)
    maas.tags["kiln-pool"] = []
    assert client.version()["version"] == "3.6.4"
    assert [m.hostname for m in client.machines()] == ["gpu-003"]
    assert client.machine_by_hostname("gpu-003").system_id == "4y3h7n"
    assert client.machine("4y3h7n").status == Status.NEW
    client.commission("4y3h7n")
    client.deploy("4y3h7n", osystem="ubuntu", distro_series="jammy", hwe_kernel="hwe-22.04",
                  user_data=cloud_config([SSH_KEY]), comment="kiln bring-up")
    client.abort("4y3h7n")
    client.release("4y3h7n", erase=True, quick_erase=True, comment="kiln release")
    client.release("4y3h7n")
    client.power_on("4y3h7n")
    client.power_off("4y3h7n", soft=True)
    assert client.query_power_state("4y3h7n") == "off"
    client.mark_broken("4y3h7n", comment="HCA mlx5_3 link down")
    client.create_tag("kiln-burnin", comment="burning in")
    assert client.update_tag_nodes("kiln-pool", add=["4y3h7n"]) == {"added": 1, "removed": 0}
    assert [m.system_id for m in client.tagged_machines("kiln-pool")] == ["4y3h7n"]
    assert {t["name"] for t in client.tags()} == {"kiln-pool", "kiln-burnin"}
    client.tag("kiln-pool")

    assert recorder.calls() == [
        "GET version/", "GET machines/", "GET machines/?hostname=gpu-003",
        "GET machines/4y3h7n/", "POST machines/4y3h7n/?op=commission",
        "POST machines/4y3h7n/?op=deploy", "POST machines/4y3h7n/?op=abort",
        "POST machines/4y3h7n/?op=release", "POST machines/4y3h7n/?op=release",
        "POST machines/4y3h7n/?op=power_on", "POST machines/4y3h7n/?op=power_off",
        "GET machines/4y3h7n/?op=query_power_state", "POST machines/4y3h7n/?op=mark_broken",
        "POST tags/", "POST tags/kiln-pool/?op=update_nodes", "GET tags/kiln-pool/?op=machines",
        "GET tags/", "GET tags/kiln-pool/",
    ]
    assert spec.check_all(recorder.requests) == []
    # MAAS (the server side) read the fields the client meant.
    deploy = next(r for r in maas.received if r.op == "deploy")
    assert base64.b64decode(deploy.form["user_data"][0]).decode().startswith("#cloud-config\n")
    assert deploy.form["hwe_kernel"] == ["hwe-22.04"]
    release = [r for r in maas.received if r.op == "release"]
    assert release[0].form["erase"] == ["true"] and release[0].form["quick_erase"] == ["true"]
    assert release[1].form == {"erase": ["false"]}


def test_spec_validator_finds_what_departs_from_the_document(spec):
    """The check can fail: a wrong type, an unknown op, a missing body, a missing field."""

    def sent(method: str, url: str, fields: list[tuple[str, str]] | None) -> SentRequest:
        from urllib3.filepost import encode_multipart_formdata

        body, content_type = encode_multipart_formdata(fields) if fields is not None else (
            None, "")
        return SentRequest(method, "http://maas:5240/MAAS/api/2.0/" + url, content_type, body)

    assert spec.problems(sent("POST", "machines/abc/?op=release", [("erase", "true")])) == []
    bad_type = spec.problems(sent("POST", "machines/abc/?op=release", [("erase", "maybe")]))
    assert len(bad_type) == 1 and "boolean" in bad_type[0] and "maybe" in bad_type[0]
    assert spec.problems(sent("POST", "machines/abc/?op=redeploy", []))
    assert spec.problems(sent("POST", "machines/abc/?op=deploy", None))  # body required
    assert spec.problems(sent("POST", "tags/", [("comment", "no name")]))  # name required
    assert spec.problems(sent("GET", "machines/?cpu_count=many", None))


def test_op_moves_into_the_path_as_the_document_writes_it():
    assert split_api_url("http://m:5240/MAAS/api/2.0/machines/x/?op=deploy") == (
        "http://m:5240", "/machines/x/op-deploy", []
    )
    assert split_api_url("http://m/MAAS/api/2.0/machines/?hostname=a&hostname=b") == (
        "http://m", "/machines/", [("hostname", "a"), ("hostname", "b")]
    )


def test_api_root_from_the_maas_url():
    assert api_root("http://10.231.0.1:5240/MAAS/") == "http://10.231.0.1:5240/MAAS/api/2.0/"
    assert api_root("http://10.231.0.1:5240/MAAS") == "http://10.231.0.1:5240/MAAS/api/2.0/"
    assert api_root("https://maas/MAAS/api/2.0/") == "https://maas/MAAS/api/2.0/"
    with pytest.raises(MAASError, match="not an http"):
        api_root("maas:5240/MAAS/")


def test_requests_are_signed_oauth_plaintext_with_a_fresh_nonce(maas, client):
    client.version()
    client.version()
    first, second = (r.oauth for r in maas.received)
    assert first["oauth_signature_method"] == "PLAINTEXT"
    assert first["oauth_signature"] == f"&{TOKEN_SECRET}"
    assert (first["oauth_consumer_key"], first["oauth_token"]) == (CONSUMER, TOKEN)
    assert first["oauth_nonce"] != second["oauth_nonce"]


# --- retries and errors ----------------------------------------------------------------------


def test_503_twice_then_an_answer_succeeds_each_attempt_signed_afresh(maas, client, recorder):
    maas.add_machine("4y3h7n", "gpu-003", Status.READY)
    maas.failures = [503, 503]
    assert client.machine("4y3h7n").status == Status.READY
    assert len(maas.received) == 3
    assert len({r.oauth["oauth_nonce"] for r in maas.received}) == 3
    assert recorder.calls() == ["GET machines/4y3h7n/"] * 3


def test_post_answered_502_and_504_is_retried(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.NEW)
    maas.failures = [502, 504]
    assert client.commission("4y3h7n").status == Status.COMMISSIONING
    assert [r.op for r in maas.received] == ["commission"] * 3


def test_retries_are_bounded(maas, client):
    maas.failures = [503] * 10
    with pytest.raises(MAASUnavailable, match=r"after 4 attempts.*HTTP 503"):
        client.version()
    assert len(maas.received) == FAST.attempts


def test_backoff_grows_and_honours_retry_after(maas):
    slept: list[float] = []
    policy = RetryPolicy(attempts=4, first_delay=1.0, factor=2.0, max_delay=3.0)
    client = MAASClient(maas.url, API_KEY, retry=policy, sleep=slept.append)
    maas.failures = [503] * 10
    with pytest.raises(MAASUnavailable):
        client.version()
    assert slept == [0.0, 0.0, 0.0]  # the scripted MAAS says Retry-After: 0
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, "120") == 3.0


def test_401_is_one_request_and_names_the_maas_url_not_the_key(maas, recorder):
    wrong = f"{CONSUMER}:{TOKEN}:wrongwrongwrongwrongwrongwrong12"
    client = MAASClient(maas.url, wrong, key_source="KILN_MAAS_API_KEY", retry=FAST,
                        sleep=lambda s: None, on_request=recorder)
    with pytest.raises(MAASAuthError) as caught:
        client.machine("4y3h7n")
    message = str(caught.value)
    assert message.startswith("MAAS rejected the API key")
    assert maas.url in message and "KILN_MAAS_API_KEY" in message
    assert len(maas.received) == 1
    # MAAS's answer echoed a secret; the message does not carry any part of either key.
    for part in (TOKEN_SECRET, "wrongwrongwrong", TOKEN, CONSUMER):
        assert part not in message


def test_409_and_400_carry_maas_response_text(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.NEW)
    maas.handlers[("POST", "machines/4y3h7n/", "release")] = lambda m, r: (
        409, "Node cannot be released in its current state ('New')."
    )
    with pytest.raises(MAASRequestError) as caught:
        client.release("4y3h7n", erase=True)
    assert caught.value.status == 409
    assert "Node cannot be released in its current state ('New')." in str(caught.value)
    assert "POST machines/4y3h7n/?op=release" in str(caught.value)
    maas.handlers[("POST", "machines/4y3h7n/", "deploy")] = lambda m, r: (
        400, '{"distro_series": ["\'noble\' is not a valid distro_series."]}'
    )
    with pytest.raises(MAASRequestError, match="is not a valid distro_series"):
        client.deploy("4y3h7n", osystem="ubuntu", distro_series="noble")
    assert len([r for r in maas.received if r.op == "deploy"]) == 1  # no retry


def test_connection_refused_is_retried_then_reported():
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    slept: list[float] = []
    client = MAASClient(f"http://127.0.0.1:{port}/MAAS/", API_KEY, retry=FAST,
                        sleep=slept.append)
    with pytest.raises(MAASUnavailable, match=r"after 4 attempts.*ConnectionError"):
        client.commission("4y3h7n")  # a POST that never got through is safe to retry
    assert len(slept) == FAST.attempts - 1


def test_the_client_does_not_show_its_key(client):
    for text in (repr(client), str(client), repr(vars(client))):
        assert TOKEN_SECRET not in text


def test_bad_api_key_shape_is_refused_without_printing_it(maas):
    with pytest.raises(MAASError, match="not consumer_key:token_key:token_secret") as caught:
        MAASClient(maas.url, "just-a-password", key_source="KILN_MAAS_API_KEY")
    assert "just-a-password" not in str(caught.value)


def test_unknown_machine_is_named(maas, client):
    with pytest.raises(MAASError, match="knows no machine with hostname 'gpu-404'"):
        client.machine_by_hostname("gpu-404")
    with pytest.raises(MAASError, match="HTTP 404"):
        client.machine("nope42")


# --- the lifecycle: waiting, progress, failure states -------------------------------------------


def test_commissioned_waits_and_shows_each_status_change(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.NEW)
    maas.advance["4y3h7n"] = [(Status.COMMISSIONING, "Loading ephemeral"),
                              (Status.TESTING, ""), (Status.READY, "")]
    clock = FakeClock()
    outcome = commissioned(client, {"system_id": "4y3h7n"}, waiter=clock.waiter())
    assert outcome.changed and outcome.machine.status == Status.READY
    assert clock.lines == [
        "gpu-003: New → Commissioning (0 s)",
        "gpu-003: Commissioning → Testing (20 s)",
        "gpu-003: Testing → Ready (30 s)",
    ]
    assert [(c.before, c.after) for c in outcome.changes] == [
        ("New", "Commissioning"), ("Commissioning", "Testing"), ("Testing", "Ready")]


def test_deployed_sends_the_image_and_user_data_then_waits(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.READY)
    maas.advance["4y3h7n"] = [(Status.DEPLOYING, "Installing OS"), (Status.DEPLOYED, "")]
    clock = FakeClock()
    user_data = cloud_config([SSH_KEY], lab_vendor_mirror("http://10.231.0.1:8081/", PGP_KEY))
    outcome = deployed(client, {"hostname": "gpu-003"}, Image(), user_data,
                       waiter=clock.waiter(poll=37.0))
    assert outcome.changed and outcome.machine.status == Status.DEPLOYED
    assert clock.lines[-1] == "gpu-003: Deploying → Deployed (74 s)"
    deploy = next(r for r in maas.received if r.op == "deploy")
    assert {k: v[-1] for k, v in deploy.form.items() if k != "user_data"} == {
        "osystem": "ubuntu", "distro_series": "jammy", "hwe_kernel": "hwe-22.04",
        "comment": "kiln bring-up"}
    assert base64.b64decode(deploy.form["user_data"][0]).decode() == user_data


def test_deployed_is_a_no_op_on_a_machine_deployed_with_the_same_image(maas, client, recorder):
    maas.add_machine("4y3h7n", "gpu-003", Status.DEPLOYED, osystem="ubuntu",
                     distro_series="jammy", hwe_kernel="hwe-22.04")
    outcome = deployed(client, {"hostname": "gpu-003"}, Image(), cloud_config([SSH_KEY]),
                       waiter=FakeClock().waiter())
    assert not outcome.changed
    assert "already Deployed with ubuntu/jammy (hwe-22.04)" in outcome.summary
    assert [r.method for r in maas.received] == ["GET"]
    assert all(sent.method == "GET" for sent in recorder.requests)


def test_deployed_with_another_image_is_an_error_not_a_reimage(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.DEPLOYED, osystem="ubuntu",
                     distro_series="focal", hwe_kernel="ga-20.04")
    with pytest.raises(ImageMismatch, match=r"gpu-003.*ubuntu/focal \(ga-20.04\).*"
                                            r"ubuntu/jammy \(hwe-22.04\).*reprovision"):
        deployed(client, {"hostname": "gpu-003"}, Image(), None, waiter=FakeClock().waiter())
    assert all(r.method == "GET" for r in maas.received)


@pytest.mark.parametrize(
    ("start", "call", "failure", "message"),
    [
        (Status.NEW, "commission", Status.FAILED_COMMISSIONING,
         "Commissioning failed, see the commissioning log"),
        (Status.READY, "deploy", Status.FAILED_DEPLOYMENT,
         "Installation failed (refer to the installation log for more information)."),
        (Status.DEPLOYED, "release", Status.FAILED_DISK_ERASING, "Failed to erase disks."),
        (Status.DEPLOYED, "release", Status.FAILED_RELEASING, "Failed to power off node."),
    ],
)
def test_failure_state_is_an_error_with_maas_status_message(maas, client, start, call,
                                                            failure, message):
    maas.add_machine("4y3h7n", "gpu-003", start, osystem="ubuntu", distro_series="jammy")
    maas.advance["4y3h7n"] = [(failure, message)]
    waiter = FakeClock().waiter()
    with pytest.raises(MachineFailed) as caught:
        if call == "commission":
            commissioned(client, {"hostname": "gpu-003"}, waiter=waiter)
        elif call == "deploy":
            deployed(client, {"hostname": "gpu-003"}, Image(), None, waiter=waiter)
        else:
            released(client, {"hostname": "gpu-003"}, waiter=waiter)
    text = str(caught.value)
    assert text.startswith("gpu-003: ") and message in text and STATUS_NAMES[failure] in text
    assert caught.value.status_message == message


def test_a_machine_found_broken_is_an_error_and_nothing_is_sent(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.BROKEN)
    maas.set_status("4y3h7n", Status.BROKEN, "PSU 2 failed")
    with pytest.raises(MachineFailed, match="gpu-003: cannot deploy.*Broken: PSU 2 failed"):
        deployed(client, {"hostname": "gpu-003"}, Image(), None, waiter=FakeClock().waiter())
    with pytest.raises(MachineStateError, match="cannot deploy from New.*commission it first"):
        maas.set_status("4y3h7n", Status.NEW)
        deployed(client, {"hostname": "gpu-003"}, Image(), None, waiter=FakeClock().waiter())
    assert all(r.method == "GET" for r in maas.received)


def test_wait_is_bounded(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.READY)
    maas.advance["4y3h7n"] = [(Status.DEPLOYING, "Installing OS")] * 1000
    clock = FakeClock()
    with pytest.raises(MAASTimeout, match=r"gpu-003: still Deploying: Installing OS 120 s "
                                          r"after deploying ubuntu/jammy \(hwe-22.04\)"):
        deployed(client, {"hostname": "gpu-003"}, Image(), None, timeout=120,
                 waiter=clock.waiter(poll=50))
    assert clock.now == 1120.0


def test_leaving_the_path_is_an_error(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.READY)
    maas.advance["4y3h7n"] = [(Status.ALLOCATED, "")]  # someone aborted the deployment
    with pytest.raises(MachineStateError, match="moved it to Allocated while kiln waited"):
        deployed(client, {"hostname": "gpu-003"}, Image(), None, waiter=FakeClock().waiter())


def test_released_erases_and_waits_for_ready_and_is_idempotent(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.DEPLOYED)
    maas.advance["4y3h7n"] = [(Status.DISK_ERASING, ""), (Status.READY, "")]
    clock = FakeClock()
    outcome = released(client, {"hostname": "gpu-003"}, waiter=clock.waiter())
    assert outcome.changed and outcome.machine.status == Status.READY
    assert clock.lines == ["gpu-003: Deployed → Disk erasing (0 s)",
                           "gpu-003: Disk erasing → Ready (20 s)"]
    release = next(r for r in maas.received if r.op == "release")
    assert release.form["erase"] == ["true"] and release.form["quick_erase"] == ["true"]
    again = released(client, {"hostname": "gpu-003"}, waiter=clock.waiter())
    assert not again.changed
    assert [r.op for r in maas.received].count("release") == 1


def test_commissioned_is_a_no_op_once_ready_unless_asked_again(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.READY)
    assert not commissioned(client, {"hostname": "gpu-003"}, waiter=FakeClock().waiter()).changed
    assert not any(r.op == "commission" for r in maas.received)
    maas.advance["4y3h7n"] = [(Status.READY, "")]
    outcome = commissioned(client, {"hostname": "gpu-003"}, recommission=True,
                           waiter=FakeClock().waiter())
    assert outcome.changed
    assert [r.op for r in maas.received].count("commission") == 1


def test_tagged_creates_the_tag_once_and_adds_the_machine(maas, client):
    maas.add_machine("4y3h7n", "gpu-003", Status.DEPLOYED)
    outcome = tagged(client, {"hostname": "gpu-003"}, "kiln-pool", waiter=FakeClock().waiter())
    assert outcome.changed and "kiln-pool" in outcome.machine.tag_names
    assert maas.tags == {"kiln-pool": ["4y3h7n"]}
    again = tagged(client, {"hostname": "gpu-003"}, "kiln-pool", waiter=FakeClock().waiter())
    assert not again.changed
    assert [(r.method, r.path, r.op) for r in maas.received if r.method == "POST"] == [
        ("POST", "tags/", None), ("POST", "tags/kiln-pool/", "update_nodes")]


# --- user_data ------------------------------------------------------------------------------------


def test_user_data_is_cloud_config_with_kiln_key_and_the_mirror():
    text = cloud_config([SSH_KEY], lab_vendor_mirror("http://10.231.0.1:8081", PGP_KEY))
    assert text.splitlines()[0] == "#cloud-config"
    document = yaml.safe_load(text)
    assert document["ssh_authorized_keys"] == [SSH_KEY]
    sources = document["apt"]["sources"]
    assert [s["source"] for s in sources.values()] == [
        "deb [signed-by=$KEY_FILE] http://10.231.0.1:8081/apt kilnlab main",
        "deb [signed-by=$KEY_FILE] http://10.231.0.1:8081/os bookworm main",
    ]
    assert all(s["key"].strip() == PGP_KEY for s in sources.values())


def test_user_data_keeps_sources_with_the_same_last_segment_apart():
    mirror = AptMirror((AptSource("http://a/ubuntu", "jammy"), AptSource("http://b/ubuntu",
                                                                          "jammy")), PGP_KEY)
    sources = yaml.safe_load(cloud_config([SSH_KEY], mirror))["apt"]["sources"]
    assert [s["source"].split()[2] for s in sources.values()] == ["http://a/ubuntu",
                                                                "http://b/ubuntu"]


def test_user_data_without_a_mirror_still_carries_the_key():
    document = yaml.safe_load(cloud_config([SSH_KEY]))
    assert document == {"ssh_authorized_keys": [SSH_KEY]}


@pytest.mark.parametrize(
    ("keys", "mirror", "error"),
    [
        ([], None, "no SSH key"),
        (["not a key"], None, "SSH key 1 is not an OpenSSH public key"),
        ([SSH_KEY], AptMirror((AptSource("http://m/apt", "kilnlab"),), "not a key"),
         "not an ASCII-armoured"),
        ([SSH_KEY], AptMirror((AptSource("ftp://m/apt", "kilnlab"),), PGP_KEY), "bad source"),
    ],
)
def test_user_data_refuses_bad_input(keys, mirror, error):
    with pytest.raises(KilnError, match=error):
        cloud_config(keys, mirror)


# --- settings from host data -------------------------------------------------------------------


def _host_data(maas_url: str, secrets_file: Path | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kiln_node": "gpu-003",
        "kiln_maas": {"system_id": None, "hostname": "gpu-003"},
        "kiln_maas_server": {"url": maas_url, "verify_tls": True, "ca_bundle": None,
                             "credentials": "maas"},
    }
    if secrets_file:
        data["kiln_secrets_file"] = str(secrets_file)
    return data


def test_client_for_host_reads_the_key_environment_first(maas, tmp_path):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(yaml.safe_dump({"maas": {"api_key": "a:b:c"}}))
    secrets.chmod(0o600)
    data = _host_data(maas.url, secrets)
    from_env = client_for_host(data, env={"KILN_MAAS_API_KEY": API_KEY}, retry=FAST)
    assert from_env.version()["version"] == "3.6.4"
    from_file = client_for_host(data, env={}, retry=FAST, sleep=lambda s: None)
    with pytest.raises(MAASAuthError, match=f"entry 'maas' of {secrets}"):
        from_file.machine("4y3h7n")


def test_client_for_host_names_what_is_missing(maas):
    with pytest.raises(MAASError, match="gpu-003: no MAAS server in the inventory"):
        client_for_host({"kiln_node": "gpu-003"}, env={})
    with pytest.raises(MissingCredential, match="KILN_MAAS_API_KEY"):
        client_for_host(_host_data(maas.url), env={})
