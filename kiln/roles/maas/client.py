"""The MAAS API 2.0 client: one method per MAAS call kiln makes, exactly as the API takes it.

Wire format, as MAAS's own CLI sends it: the operation in the query string
(`POST /MAAS/api/2.0/machines/<id>/?op=deploy`), parameters of a POST as a
multipart/form-data body (always a body, even with no fields: MAAS's OpenAPI document marks
every operation's request body required), parameters of a GET in the query string. Every
request is signed with OAuth 1.0 PLAINTEXT from the API key
`consumer_key:token_key:token_secret` (an empty consumer secret, so the signature is
`&token_secret`).

Retries (core/retry.py's policy): 502/503/504 and connection failures are retried with
exponential backoff (MAAS's Retry-After wins when it gives one), up to a bound. Each attempt
is signed afresh: MAAS refuses an OAuth nonce it has seen, so replaying a signed request
verbatim, as an HTTP library's own retry would, fails with 401. A POST is retried only when
it certainly did not reach MAAS (connection refused or connect timeout, or a 502/503/504
answer); one whose answer was lost may have been applied, and retrying a deploy is not
harmless. 401 is never retried; 400/403/404/409 raise with MAAS's response text.

The API key is a `Secret` and never appears in a message; response texts that reach an
error are scrubbed of it (MAAS's "invalid signature" answer can echo the signature base).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1
from urllib3.exceptions import NewConnectionError
from urllib3.filepost import encode_multipart_formdata

from kiln.core.retry import RetryPolicy
from kiln.core.secrets import MASK, Secret
from kiln.roles.maas.errors import (
    MAASAuthError,
    MAASError,
    MAASNotFound,
    MAASRequestError,
    MAASUnavailable,
)
from kiln.roles.maas.machine import Machine

API_PATH = "api/2.0/"
RETRIED_STATUSES = frozenset({502, 503, 504})
# A text field of a form is a string on the wire; MAAS reads booleans from these spellings.
FieldValue = str | int | bool


# MAAS's API server restarts (an upgrade, a region failover) take longer than a BMC's hiccup.
DEFAULT_RETRY = RetryPolicy(attempts=6, first_delay=1.0, factor=2.0, max_delay=30.0)


class TransientMAASError(MAASError):
    """One failed attempt that another attempt may fix; the retry policy's business, never
    seen by callers (they get MAASUnavailable).

    `certainly_not_applied`: the request cannot have reached MAAS (connection refused,
    connect timeout) or MAAS answered 502/503/504 (it did not act); only then is a POST
    retried. `retry_after` is MAAS's Retry-After header, when it sent one."""

    def __init__(self, message: str, *, certainly_not_applied: bool,
                 retry_after: str | None = None):
        super().__init__(message)
        self.certainly_not_applied = certainly_not_applied
        self.retry_after = retry_after


@dataclass(frozen=True)
class SentRequest:
    """What one attempt put on the wire, minus its headers (the Authorization header is
    the API key in clear for PLAINTEXT). For recording and checking against the spec."""

    method: str
    url: str
    content_type: str
    body: bytes | None


@dataclass(frozen=True)
class ApiKey:
    consumer_key: Secret
    token_key: Secret
    token_secret: Secret

    @classmethod
    def parse(cls, key: Secret | str, source: str) -> ApiKey:
        text = key.reveal() if isinstance(key, Secret) else key
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise MAASError(
                f"the MAAS API key from {source} is not consumer_key:token_key:token_secret "
                "(copy it from the MAAS UI: user preferences, API keys)"
            )
        return cls(*(Secret(part) for part in parts))

    def auth(self) -> OAuth1:
        return OAuth1(
            client_key=self.consumer_key.reveal(),
            client_secret="",
            resource_owner_key=self.token_key.reveal(),
            resource_owner_secret=self.token_secret.reveal(),
            signature_method=SIGNATURE_PLAINTEXT,
        )

    def scrub(self, text: str) -> str:
        for part in (self.token_secret, self.token_key, self.consumer_key):
            text = text.replace(part.reveal(), MASK)
        return text


def api_root(url: str) -> str:
    """`http://maas:5240/MAAS/` or its API root itself → `http://maas:5240/MAAS/api/2.0/`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MAASError(f"MAAS URL {url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise MAASError(f"MAAS URL {url!r} has a query or fragment; give the MAAS root")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    if not path.endswith("/" + API_PATH):
        path += API_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def form_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode_user_data(user_data: str | bytes) -> str:
    """MAAS takes user_data base64-encoded and hands the decoded bytes to cloud-init."""
    raw = user_data.encode() if isinstance(user_data, str) else user_data
    return base64.b64encode(raw).decode("ascii")


def _certainly_not_sent(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    return isinstance(getattr(reason, "reason", None), NewConnectionError)


class MAASClient:
    """One MAAS region's API. Methods return what MAAS answered, as `Machine` where a
    machine is answered; errors name the MAAS URL and the call."""

    def __init__(
        self,
        url: str,
        api_key: Secret | str,
        *,
        key_source: str = "the API key given",
        verify: bool | str = True,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: tuple[float, float] = (10.0, 90.0),
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,  # overrides the policy's sleep
        on_request: Callable[[SentRequest], None] | None = None,
    ):
        self.api_root = api_root(url)
        self.url = self.api_root.removesuffix(API_PATH)
        self._key = ApiKey.parse(api_key, key_source)
        self._key_source = key_source
        self._auth = self._key.auth()
        self.verify = verify
        self.retry = retry if sleep is None else replace(retry, sleep=sleep)
        # query_power_state asks the BMC and may take 30 s; deploy/commission answer fast.
        self.timeout = timeout
        self._session = session or requests.Session()
        self.on_request = on_request

    def __repr__(self) -> str:
        return f"MAASClient({self.url!r})"

    # --- transport --------------------------------------------------------------------

    def get(self, path: str, *, op: str | None = None,
            params: Iterable[tuple[str, FieldValue]] = ()) -> Any:
        return self._call("GET", path, op, [(k, form_value(v)) for k, v in params], None)

    def post(self, path: str, *, op: str | None = None,
             fields: Iterable[tuple[str, FieldValue]] = ()) -> Any:
        return self._call("POST", path, op, [], [(k, form_value(v)) for k, v in fields])

    def _call(self, method: str, path: str, op: str | None,
              params: list[tuple[str, str]], fields: list[tuple[str, str]] | None) -> Any:
        where = f"{method} {path}" + (f"?op={op}" if op else "")
        response = self._send(method, path, op, params, fields, where)
        return self._answer(response, where)

    def _send(self, method: str, path: str, op: str | None, params: list[tuple[str, str]],
              fields: list[tuple[str, str]] | None, where: str) -> requests.Response:
        query = ([("op", op)] if op else []) + params
        headers = {"Accept": "application/json"}
        body = None
        if fields is not None:
            body, headers["Content-Type"] = encode_multipart_formdata(fields)

        def attempt() -> requests.Response:
            # Prepared per attempt, so each attempt carries a fresh OAuth nonce and timestamp.
            prepared = self._session.prepare_request(
                requests.Request(method, self.api_root + path, params=query, data=body,
                                 headers=headers, auth=self._auth)
            )
            if self.on_request is not None:
                self.on_request(SentRequest(method, prepared.url or "",
                                            headers.get("Content-Type", ""), prepared.body))
            settings = self._session.merge_environment_settings(
                prepared.url, {}, None, self.verify, None
            )
            try:
                response = self._session.send(prepared, timeout=self.timeout,
                                              allow_redirects=False, **settings)
            except requests.RequestException as exc:
                raise TransientMAASError(f"{type(exc).__name__}: {self._key.scrub(str(exc))}",
                                         certainly_not_applied=_certainly_not_sent(exc)) from None
            if response.status_code in RETRIED_STATUSES:
                raise TransientMAASError(f"HTTP {response.status_code} {self._text(response)}",
                                         certainly_not_applied=True,
                                         retry_after=response.headers.get("Retry-After"))
            return response

        def repeatable(exc: BaseException) -> bool:
            return method == "GET" or getattr(exc, "certainly_not_applied", False)

        try:
            return self.retry.call(attempt, endpoint=f"MAAS {self.url}", what=where,
                                   retry_on=TransientMAASError, retry_if=repeatable,
                                   error=MAASUnavailable)
        except TransientMAASError as exc:  # a POST that may have reached MAAS
            raise MAASUnavailable(
                f"MAAS {self.url}: {where}: {exc}; not retried: the request may have "
                "reached MAAS, so read the machine's state before trying again"
            ) from None

    def _text(self, response: requests.Response, limit: int = 500) -> str:
        text = self._key.scrub(response.text.strip())
        return text if len(text) <= limit else text[:limit] + " …"

    def _answer(self, response: requests.Response, where: str) -> Any:
        status = response.status_code
        if status == 401:
            # MAAS's own 401 text is left out: for a bad signature it can show the expected
            # signature base, which for PLAINTEXT is the right token secret.
            raise MAASAuthError(
                f"MAAS rejected the API key: {self.url} answered {where} with 401; "
                f"check {self._key_source}"
            )
        if 300 <= status < 400:
            raise MAASRequestError(
                f"MAAS {self.url}: {where} was redirected ({status}) to "
                f"{response.headers.get('Location')!r}; is the MAAS URL right "
                "(http://<host>:5240/MAAS/)?",
                status, "",
            )
        if status >= 400:
            text = self._text(response)
            kind = MAASNotFound if status == 404 else MAASRequestError
            raise kind(f"MAAS {self.url}: {where}: HTTP {status}: {text or '(no text)'}",
                       status, text)
        if not response.content:
            return None
        if "json" not in response.headers.get("Content-Type", ""):
            return response.text
        try:
            return response.json()
        except ValueError:
            raise MAASError(f"MAAS {self.url}: {where}: answer is not JSON") from None

    def _machine(self, document: Any, where: str) -> Machine:
        return Machine.from_json(document, f"MAAS {self.url}: {where}")

    # --- calls --------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        answer = self.get("version/")
        if not isinstance(answer, dict) or "version" not in answer:
            raise MAASError(f"MAAS {self.url}: GET version/: not a MAAS version answer")
        return answer

    def machines(self, *, hostname: str | None = None) -> list[Machine]:
        params = [("hostname", hostname)] if hostname else []
        answer = self.get("machines/", params=params)
        if not isinstance(answer, list):
            raise MAASError(f"MAAS {self.url}: GET machines/: expected a list")
        return [self._machine(item, "GET machines/") for item in answer]

    def machine(self, system_id: str) -> Machine:
        return self._machine(self.get(f"machines/{system_id}/"), f"GET machines/{system_id}/")

    def machine_by_hostname(self, hostname: str) -> Machine:
        found = [m for m in self.machines(hostname=hostname) if m.hostname == hostname]
        if not found:
            raise MAASNotFound(f"MAAS {self.url} knows no machine with hostname {hostname!r}",
                               404, "")
        if len(found) > 1:
            ids = ", ".join(m.system_id for m in found)
            raise MAASError(f"MAAS {self.url}: {len(found)} machines have hostname "
                            f"{hostname!r} ({ids}); give the node's maas.system_id")
        return found[0]

    def find(self, identity: Any) -> Machine:
        """A machine from a MAASIdentity, host data's `kiln_maas` mapping, or a Machine."""
        if isinstance(identity, Machine):
            return self.machine(identity.system_id)
        get = identity.get if isinstance(identity, dict) else (
            lambda key: getattr(identity, key, None)
        )
        if get("system_id"):
            return self.machine(str(get("system_id")))
        if get("hostname"):
            return self.machine_by_hostname(str(get("hostname")))
        raise MAASError(f"no MAAS identity (system_id or hostname) in {identity!r}")

    def commission(self, system_id: str, *, enable_ssh: bool = False,
                   skip_networking: bool = False, skip_storage: bool = False,
                   testing_scripts: str | None = None) -> Machine:
        # enable_ssh and the skip_* fields are integers in MAAS's API ('1' = True).
        fields: list[tuple[str, FieldValue]] = [
            ("enable_ssh", int(enable_ssh)),
            ("skip_networking", int(skip_networking)),
            ("skip_storage", int(skip_storage)),
        ]
        if testing_scripts is not None:
            fields.append(("testing_scripts", testing_scripts))
        where = f"POST machines/{system_id}/?op=commission"
        return self._machine(self.post(f"machines/{system_id}/", op="commission",
                                       fields=fields), where)

    def deploy(self, system_id: str, *, osystem: str, distro_series: str,
               hwe_kernel: str | None = None, user_data: str | bytes | None = None,
               comment: str | None = None) -> Machine:
        """Deploy; MAAS allocates a Ready machine to the API user itself before deploying."""
        fields: list[tuple[str, FieldValue]] = [
            ("osystem", osystem), ("distro_series", distro_series),
        ]
        if hwe_kernel:
            fields.append(("hwe_kernel", hwe_kernel))
        if user_data is not None:
            fields.append(("user_data", encode_user_data(user_data)))
        if comment:
            fields.append(("comment", comment))
        where = f"POST machines/{system_id}/?op=deploy"
        return self._machine(self.post(f"machines/{system_id}/", op="deploy", fields=fields),
                             where)

    def release(self, system_id: str, *, erase: bool = False, quick_erase: bool = False,
                secure_erase: bool = False, comment: str | None = None) -> Machine:
        fields: list[tuple[str, FieldValue]] = [("erase", erase)]
        if erase:
            fields += [("quick_erase", quick_erase), ("secure_erase", secure_erase)]
        if comment:
            fields.append(("comment", comment))
        where = f"POST machines/{system_id}/?op=release"
        return self._machine(self.post(f"machines/{system_id}/", op="release", fields=fields),
                             where)

    def power_on(self, system_id: str, *, comment: str | None = None) -> Machine | None:
        answer = self.post(f"machines/{system_id}/", op="power_on",
                           fields=[("comment", comment)] if comment else [])
        return self._machine(answer, f"POST machines/{system_id}/?op=power_on") if answer else None

    def power_off(self, system_id: str, *, soft: bool = False,
                  comment: str | None = None) -> Machine | None:
        fields: list[tuple[str, FieldValue]] = [("stop_mode", "soft" if soft else "hard")]
        if comment:
            fields.append(("comment", comment))
        answer = self.post(f"machines/{system_id}/", op="power_off", fields=fields)
        return self._machine(answer, f"POST machines/{system_id}/?op=power_off") if answer else None

    def query_power_state(self, system_id: str) -> str:
        where = f"GET machines/{system_id}/?op=query_power_state"
        answer = self.get(f"machines/{system_id}/", op="query_power_state")
        if not isinstance(answer, dict) or "state" not in answer:
            raise MAASError(f"MAAS {self.url}: {where}: answer has no 'state'")
        return str(answer["state"])

    def abort(self, system_id: str, *, comment: str | None = None) -> Machine:
        where = f"POST machines/{system_id}/?op=abort"
        answer = self.post(f"machines/{system_id}/", op="abort",
                           fields=[("comment", comment)] if comment else [])
        return self._machine(answer, where)

    def mark_broken(self, system_id: str, *, comment: str) -> Machine:
        where = f"POST machines/{system_id}/?op=mark_broken"
        answer = self.post(f"machines/{system_id}/", op="mark_broken",
                           fields=[("comment", comment)])
        return self._machine(answer, where)

    def tags(self) -> list[dict[str, Any]]:
        answer = self.get("tags/")
        if not isinstance(answer, list):
            raise MAASError(f"MAAS {self.url}: GET tags/: expected a list")
        return answer

    def tag(self, name: str) -> dict[str, Any]:
        return self.get(f"tags/{name}/")

    def create_tag(self, name: str, *, comment: str = "", definition: str = "") -> dict[str, Any]:
        fields: list[tuple[str, FieldValue]] = [("name", name)]
        if comment:
            fields.append(("comment", comment))
        if definition:
            fields.append(("definition", definition))
        return self.post("tags/", fields=fields)

    def update_tag_nodes(self, name: str, *, add: Sequence[str] = (),
                         remove: Sequence[str] = ()) -> dict[str, Any]:
        """{"added": n, "removed": m}. MAAS takes `add`/`remove` once per system id."""
        if not add and not remove:
            raise MAASError(f"update_nodes of tag {name!r}: give add or remove")
        fields = [("add", system_id) for system_id in add]
        fields += [("remove", system_id) for system_id in remove]
        return self.post(f"tags/{name}/", op="update_nodes", fields=fields)

    def tagged_machines(self, name: str) -> list[Machine]:
        where = f"GET tags/{name}/?op=machines"
        answer = self.get(f"tags/{name}/", op="machines")
        if not isinstance(answer, list):
            raise MAASError(f"MAAS {self.url}: {where}: expected a list")
        return [self._machine(item, where) for item in answer]
