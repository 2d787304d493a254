"""What can go wrong talking to UFM, one class per thing a caller handles differently.

Every message names the UFM endpoint (its URL and the call, never a credential); a refusal
carries UFM's own answer, scrubbed of the credentials first.
"""

from __future__ import annotations

from kiln.core.errors import KilnError


class UFMError(KilnError):
    """Anything the UFM client reports; the message says which UFM, which call, what."""


class UFMAuthError(UFMError):
    """401/403: wrong credentials, a revoked token, or a role that may not do this. Never
    retried: retrying cannot fix a password."""


class UFMRequestError(UFMError):
    """UFM refused the request (400, 404, ...); `text` is what UFM answered."""

    def __init__(self, message: str, status: int, text: str):
        super().__init__(message)
        self.status = status
        self.text = text


class UFMUnavailable(UFMError):
    """No usable answer (connection errors, timeouts, 5xx) within the retry bound."""


class UFMTLSError(UFMError):
    """UFM's certificate did not verify against the CA bundle: configuration, not a
    transient failure, so it is not retried."""


class TransientUFMError(UFMError):
    """One failed attempt another may fix; the retry policy's business, never seen by
    callers. `certainly_not_applied`: the request cannot have reached UFM, or UFM said it
    did not act (502/503/504); only then is a write repeated."""

    def __init__(self, message: str, *, certainly_not_applied: bool,
                 retry_after: str | None = None):
        super().__init__(message)
        self.certainly_not_applied = certainly_not_applied
        self.retry_after = retry_after
