"""OAuth 1.0 PLAINTEXT, checked the way MAAS checks it on every authenticated request.

MAAS API keys are `consumer_key:token_key:token_secret`; the consumer secret is empty, so a
PLAINTEXT signature is `&<token_secret>` (both parts percent-encoded). The header is parsed
with oauthlib; the checks follow piston3's OAuthServer, which MAAS uses, in its order:
consumer, token, timestamp (at most 300 s old), nonce (not seen before: MAAS stores nonces,
so a client that replays a signed request verbatim, e.g. an HTTP-level retry, is refused),
signature method, signature. The 401 texts are MAAS's ("Authorization Error: ..."), with two
deliberate differences: the token key a client sent is not echoed back, and a bad signature
does not print the expected signature base string, which for PLAINTEXT is the secret itself.

A request with no OAuth header at all gets piston's challenge: 401 "Forbidden".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from oauthlib.common import safe_string_equals
from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

TIMESTAMP_THRESHOLD = 300  # seconds; piston3's OAuthServer.timestamp_threshold
REQUIRED = ("oauth_consumer_key", "oauth_token", "oauth_signature", "oauth_signature_method",
            "oauth_timestamp", "oauth_nonce")


class AuthError(Exception):
    """A request MAAS would refuse: `status` 401 (or 400 for a malformed timestamp)."""

    def __init__(self, message: str, status: int = 401, challenge: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.challenge = challenge


@dataclass(frozen=True)
class ApiKey:
    consumer_key: str
    token_key: str
    token_secret: str

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKey:
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(
                f"{source}: maas.api_key is not consumer_key:token_key:token_secret"
            )
        return cls(*parts)


class OAuthChecker:
    def __init__(self, key: ApiKey, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self._nonces: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> None:
        """Return when the header authenticates the lab's API user; raise AuthError if not."""
        params = self._parse(authorization)
        if params.get("oauth_version", "1.0") != "1.0":
            raise AuthError(self._text(f"OAuth version {params['oauth_version']} not supported."))
        if not safe_string_equals(params["oauth_consumer_key"], self._key.consumer_key):
            raise AuthError("Authorization Error: Invalid API key.")
        if not safe_string_equals(params["oauth_token"], self._key.token_key):
            raise AuthError(self._text("Invalid access token."))
        self._check_timestamp(params["oauth_timestamp"])
        self._check_nonce(params["oauth_token"], params["oauth_nonce"])
        method = params["oauth_signature_method"]
        if method != "PLAINTEXT":
            raise AuthError(self._text(
                f"Signature method {method} not supported try one of the following: PLAINTEXT"
            ))
        expected = oauth_signature.sign_plaintext("", self._key.token_secret)
        if not safe_string_equals(params["oauth_signature"], expected):
            raise AuthError(self._text("Invalid signature."))

    @staticmethod
    def _text(message: str) -> str:
        return f"Authorization Error: {message!r}"

    @staticmethod
    def _parse(authorization: str | None) -> dict[str, str]:
        if not authorization or not authorization.strip().lower().startswith("oauth"):
            raise AuthError("Forbidden")
        try:
            pairs = oauth_utils.parse_authorization_header(authorization.strip())
        except ValueError:
            raise AuthError("Forbidden") from None
        params = {k: oauth_utils.unescape(v) for k, v in pairs if k != "realm"}
        if any(name not in params for name in REQUIRED):
            raise AuthError("Forbidden")
        return params

    def _check_timestamp(self, value: str) -> None:
        try:
            timestamp = int(value)
        except ValueError:
            raise AuthError(
                "Bad Request: the following problems were found among the auth params: "
                "oauth_timestamp has an unexpected type", status=400, challenge=False,
            ) from None
        now = int(self._clock())
        if now - timestamp > TIMESTAMP_THRESHOLD:
            raise AuthError(self._text(
                f"Expired timestamp: given {timestamp} and now {now} has a greater "
                f"difference than threshold {TIMESTAMP_THRESHOLD}"
            ))

    def _check_nonce(self, token: str, nonce: str) -> None:
        now = self._clock()
        with self._lock:
            # A nonce older than the timestamp window can never be accepted again anyway.
            for seen, when in list(self._nonces.items()):
                if now - when > 2 * TIMESTAMP_THRESHOLD:
                    del self._nonces[seen]
            if (token, nonce) in self._nonces:
                raise AuthError(self._text(f"Nonce already used: {nonce}"))
            self._nonces[(token, nonce)] = now
