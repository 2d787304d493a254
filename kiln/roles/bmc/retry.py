"""Which BMC failures are tried again: kiln's rules on top of the shared policy (core/retry.py).

BMCs drop connections while they reboot themselves, answer 503 while busy and time out under
load; one more try a little later usually works. What is retried:

- reads, after any transient failure (connection refused or reset, timeouts, 5xx);
- writes (a reset, a boot override, an update), only when the failure shows the request did
  not reach the BMC or the BMC said it did not act (`certainly_not_applied`): a reset or an
  update sent twice is not harmless.

Authentication failures are not transient and are never retried (BMCAuthError passes
straight through): a wrong password stays wrong, and many BMCs lock an account after a few
failed logins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from kiln.core.retry import RetryPolicy
from kiln.roles.bmc.errors import BMCUnavailable, TransientBMCError

T = TypeVar("T")


def call_bmc(policy: RetryPolicy, action: Callable[[], T], *, bmc: str, what: str,
             write: bool = False) -> T:
    """`action()`, tried again on TransientBMCError as the rules above allow.

    Raises BMCUnavailable naming `bmc` and `what` once the bound is reached (or at once
    for a write that may have been applied); every other error passes through.
    """
    def repeatable(exc: BaseException) -> bool:
        return not write or getattr(exc, "certainly_not_applied", False)

    try:
        return policy.call(action, endpoint=bmc, what=what, retry_on=TransientBMCError,
                           retry_if=repeatable, error=BMCUnavailable)
    except TransientBMCError as exc:  # a write that may have reached the BMC
        raise BMCUnavailable(
            f"{bmc}: {what}: {exc}; not retried: the request may have reached "
            "the BMC, so read its state before trying again"
        ) from None
