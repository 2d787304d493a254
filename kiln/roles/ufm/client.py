"""The UFM Enterprise REST client: the calls kiln makes, on one requests Session.

Authentication (reference §1): HTTP Basic under `/ufmRest`, or an access token under
`/ufmRestV3`, sent as `Authorization: Basic <token>` (the raw token, as NVIDIA's doc and
SDK send it; not base64 of user:password). TLS is verified, against the inventory's CA
bundle when it names one (UFM's stock certificate is self-signed: give its CA);
`verify_tls: false` is honoured and reported at every connect (kiln.roles.ufm.settings).

Retries (core/retry.py's policy): connection failures, timeouts and 5xx answers are tried
again with backoff, a GET always, a write only when it certainly did not reach UFM (a
refused connection, a connect timeout, a 502/503/504 answer); a write whose answer was
lost raises at once, since UFM may have applied it. 401/403 and certificate failures are
never retried.

Every error names the UFM endpoint and the call; UFM's answers are scrubbed of the
credentials before they reach a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from urllib3.exceptions import NewConnectionError

from kiln.core.retry import RetryPolicy
from kiln.core.secrets import MASK, Secret
from kiln.roles.ufm.errors import (
    TransientUFMError,
    UFMAuthError,
    UFMError,
    UFMRequestError,
    UFMTLSError,
    UFMUnavailable,
)
from kiln.roles.ufm.resources import Event, Partition, Port, UnhealthyPort

BASIC_PREFIX = "ufmRest"
TOKEN_PREFIX = "ufmRestV3"
RETRIED_WRITES = frozenset({502, 503, 504})
# UFM answers a big fabric's port list slowly (tens of MB for ~20k ports).
DEFAULT_TIMEOUT = (10.0, 120.0)
DEFAULT_RETRY = RetryPolicy(attempts=5, first_delay=1.0, factor=2.0, max_delay=30.0)
# GUIDs per DELETE .../guids/<g1>,<g2>: keeps the URL well under common limits.
REMOVE_BATCH = 64


def server_root(url: str) -> str:
    """`https://ufm.example/` (or with `/ufmRest/` already on it) -> `https://ufm.example/`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UFMError(f"UFM URL {url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    for prefix in (TOKEN_PREFIX, BASIC_PREFIX):
        path = path.removesuffix("/" + prefix)
    return f"{parts.scheme}://{parts.netloc}{path}/"


def _certainly_not_sent(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    return isinstance(getattr(reason, "reason", None), NewConnectionError)


class UFMClient:
    """One UFM's REST API. Give `username` and `password`, or `token`."""

    def __init__(
        self,
        url: str,
        *,
        username: Secret | str | None = None,
        password: Secret | str | None = None,
        token: Secret | str | None = None,
        credentials_source: str = "the credentials given",
        verify: bool | str = True,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        self.url = server_root(url)
        self._secrets = [s if isinstance(s, Secret) else Secret(s)
                         for s in (token, username, password) if s]
        self._session = session or requests.Session()
        if token:
            self.prefix = TOKEN_PREFIX
            self._session.headers["Authorization"] = f"Basic {_reveal(token)}"
        elif username and password:
            self.prefix = BASIC_PREFIX
            self._session.auth = (_reveal(username), _reveal(password))
        else:
            raise UFMError(f"UFM {self.url}: give a token, or a username and a password")
        self.auth_kind = "token" if token else "basic"
        self.credentials_source = credentials_source
        self.verify = verify
        self.retry = retry if sleep is None else replace(retry, sleep=sleep)
        self.timeout = timeout
        self.api_root = f"{self.url}{self.prefix}/"

    def __repr__(self) -> str:
        return f"UFMClient({self.url!r}, {self.auth_kind})"

    def close(self) -> None:
        self._session.close()

    @property
    def endpoint(self) -> str:
        return f"UFM {self.url}"

    # -- transport -------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            value = secret.reveal()
            if value:
                text = text.replace(value, MASK)
        return text

    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                body: Any = None) -> Any:
        """One call: `path` below the prefix (`resources/ports`); the JSON answer or None."""
        where = f"{method} /{self.prefix}/{path}"
        if params:
            where += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        write = method != "GET"

        def attempt() -> requests.Response:
            try:
                response = self._session.request(
                    method, self.api_root + path, params=params, json=body,
                    verify=self.verify, timeout=self.timeout, allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise UFMTLSError(
                    f"{self.endpoint}: {where}: TLS certificate not trusted "
                    f"(verify: {self.verify}): {self.scrub(str(exc))}"
                ) from None
            except requests.RequestException as exc:
                raise TransientUFMError(
                    f"{type(exc).__name__}: {self.scrub(str(exc))}",
                    certainly_not_applied=_certainly_not_sent(exc),
                ) from None
            if response.status_code >= 500:
                raise TransientUFMError(
                    f"HTTP {response.status_code} {self._text(response)}",
                    certainly_not_applied=response.status_code in RETRIED_WRITES,
                    retry_after=response.headers.get("Retry-After"),
                )
            return response

        def repeatable(exc: BaseException) -> bool:
            return not write or getattr(exc, "certainly_not_applied", False)

        try:
            response = self.retry.call(attempt, endpoint=self.endpoint, what=where,
                                       retry_on=TransientUFMError, retry_if=repeatable,
                                       error=UFMUnavailable)
        except TransientUFMError as exc:  # a write that may have reached UFM
            raise UFMUnavailable(
                f"{self.endpoint}: {where}: {exc}; not retried: the request may have reached "
                "UFM, so read the state before trying again"
            ) from None
        return self._answer(response, where)

    def _text(self, response: requests.Response, limit: int = 500) -> str:
        text = self.scrub(response.text.strip())
        return text if len(text) <= limit else text[:limit] + " …"

    def _answer(self, response: requests.Response, where: str) -> Any:
        status = response.status_code
        if status in (401, 403):
            what = "rejected the credentials" if status == 401 else "refused (permission)"
            raise UFMAuthError(f"{self.endpoint}: {where}: HTTP {status}: UFM {what} "
                               f"({self.auth_kind} auth from {self.credentials_source})")
        if 300 <= status < 400:
            raise UFMRequestError(
                f"{self.endpoint}: {where} was redirected ({status}) to "
                f"{response.headers.get('Location')!r}: a UFM standby or login page? Give "
                "the UFM (HA virtual) address", status, "")
        if status >= 400:
            text = self._text(response)
            raise UFMRequestError(f"{self.endpoint}: {where}: HTTP {status}: "
                                  f"{text or '(no text)'}", status, text)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            # An HA standby answers with its login page (reference §1.7).
            raise UFMError(f"{self.endpoint}: {where}: the answer is not JSON (a UFM "
                           "standby or a login page?)") from None

    # -- reads -----------------------------------------------------------------------------

    def version(self) -> str:
        answer = self.request("GET", "app/ufm_version")
        if not isinstance(answer, dict) or "ufm_release_version" not in answer:
            raise UFMError(f"{self.endpoint}: GET app/ufm_version: no ufm_release_version")
        return str(answer["ufm_release_version"])

    def ports(self) -> list[Port]:
        where = f"{self.endpoint}: GET resources/ports"
        return Port.parse_list(self.request("GET", "resources/ports"), where)

    def unhealthy_ports(self) -> list[UnhealthyPort]:
        where = f"{self.endpoint}: GET app/unhealthy_ports"
        return UnhealthyPort.parse_list(self.request("GET", "app/unhealthy_ports"), where)

    def events(self) -> list[Event]:
        """The event log. UFM documents no time filter (reference §4.3): callers filter on
        each event's timestamp."""
        where = f"{self.endpoint}: GET app/events"
        return Event.parse_list(self.request("GET", "app/events"), where)

    def partition(self, pkey: str) -> Partition | None:
        """A PKey and its members; None when UFM has no such PKey (it answers `{}`)."""
        path = f"resources/pkeys/{quote(pkey)}"
        answer = self.request("GET", path, params={"guids_data": "true"})
        if answer in ({}, None):
            return None
        return Partition.parse(answer, f"{self.endpoint}: GET {path}")

    # -- writes ----------------------------------------------------------------------------

    def create_partition(self, pkey: str, name: str, *, index0: bool = False,
                         ip_over_ib: bool = True) -> None:
        self.request("POST", "resources/pkeys/add", body={
            "pkey": pkey, "partition_name": name, "index0": index0, "ip_over_ib": ip_over_ib,
        })

    def add_guids(self, pkey: str, members: Mapping[str, str], *, index0: bool = False,
                  ip_over_ib: bool = True) -> None:
        """Add (or re-add with another membership) port GUIDs: one call, per-GUID
        memberships (`memberships`, reference §5.3)."""
        guids = sorted(members)
        if not guids:
            return
        self.request("POST", "resources/pkeys", body={
            "pkey": pkey, "guids": guids, "memberships": [members[g] for g in guids],
            "index0": index0, "ip_over_ib": ip_over_ib,
        })

    def remove_guids(self, pkey: str, guids: Iterable[str]) -> None:
        ordered = sorted(guids)
        for start in range(0, len(ordered), REMOVE_BATCH):
            batch = ",".join(ordered[start:start + REMOVE_BATCH])
            self.request("DELETE", f"resources/pkeys/{quote(pkey)}/guids/{batch}")


def _reveal(value: Secret | str) -> str:
    return value.reveal() if isinstance(value, Secret) else value
