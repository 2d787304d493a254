"""Retrying a BMC call: exponential backoff, a bound, and only what is safe to repeat.

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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from kiln.roles.bmc.errors import BMCUnavailable, TransientBMCError

logger = logging.getLogger("kiln.bmc")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient BMC failure is tried again."""

    attempts: int = 4  # in all, the first try included
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 20.0
    # Injected so tests run without waiting; under pyinfra, gevent makes time.sleep yield.
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")
        if self.first_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError("RetryPolicy: delays must be >= 0 and factor >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return min(self.first_delay * self.factor ** (attempt - 1), self.max_delay)

    def run(self, action: Callable[[], T], *, bmc: str, what: str, write: bool = False) -> T:
        """`action()`, tried again on TransientBMCError as the rules above allow.

        Raises BMCUnavailable naming `bmc` and `what` once the bound is reached (or at once
        for a write that may have been applied); every other error passes through.
        """
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except TransientBMCError as exc:
                if write and not exc.certainly_not_applied:
                    raise BMCUnavailable(
                        f"{bmc}: {what}: {exc}; not retried: the request may have reached "
                        "the BMC, so read its state before trying again"
                    ) from None
                if attempt == self.attempts:
                    seconds = time.monotonic() - started
                    raise BMCUnavailable(
                        f"{bmc}: {what}: no usable answer after {attempt} attempt"
                        f"{'s' if attempt > 1 else ''} over {seconds:.0f} s; last: {exc}"
                    ) from None
                wait = self.delay(attempt)
                logger.warning("%s: %s: %s (attempt %d of %d); retrying in %.1f s",
                               bmc, what, exc, attempt, self.attempts, wait)
                self.sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")
