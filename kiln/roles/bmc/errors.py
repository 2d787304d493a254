"""What can go wrong talking to a BMC, one class per thing a caller handles differently.

Every message starts with the BMC it is about, as `BMC <address> (<protocol>, node <name>)`,
so a line in a run's output says which machine needs a person. No message carries a
credential: values that reach an error are scrubbed of the password first.
"""

from __future__ import annotations

from kiln.core.errors import KilnError


class BMCError(KilnError):
    """Anything the BMC client reports; the message names the BMC and what failed."""


class BMCAuthError(BMCError):
    """The BMC rejected the credentials (HTTP 401/403, RMCP+ RAKP refusal). Never retried:
    retrying cannot fix a password, and a BMC may lock the account after a few failures."""


class BMCUnavailable(BMCError):
    """No usable answer (connection refused, timeouts, 5xx) within the retry bound."""


class BMCTLSError(BMCError):
    """The BMC's certificate did not verify against the CA bundle: a configuration fault,
    not a transient one, so it is not retried."""


class BMCUnsupported(BMCError):
    """The BMC does not offer what was asked (a reset type, boot device, log service, an
    IPMI firmware update)."""


class BMCTimeout(BMCError):
    """A wait on the BMC ran out: power state not reached, update task still running."""


class BMCTaskFailed(BMCError):
    """A BMC task (SimpleUpdate) ended in Exception, Killed or Cancelled; the message
    carries the task's own messages."""


class TransientBMCError(BMCError):
    """One failed attempt that another attempt may fix; the retry policy's business.

    `certainly_not_applied` is True when the request cannot have reached the BMC (connect
    refused, connect timeout) or the BMC answered that it did not act (502/503/504): only
    then is a write retried, since a reset or an update that did reach the BMC must not be
    sent twice. `retry_after` is the BMC's Retry-After header, when it sent one.
    """

    def __init__(self, message: str, *, certainly_not_applied: bool,
                 retry_after: str | None = None):
        super().__init__(message)
        self.certainly_not_applied = certainly_not_applied
        self.retry_after = retry_after
