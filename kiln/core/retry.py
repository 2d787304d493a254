"""Retrying a call to a remote endpoint (a BMC, MAAS, UFM): one policy for every client.

A transient failure (a refused connection, a timeout, a 502/503/504) is tried again after an
exponential backoff with a cap, up to a bound on the attempts; a server's Retry-After wins
over the backoff when the client has one (it is still capped). Every retry logs the same
line, naming the endpoint and what is retried; when the bound is reached the caller's error
class is raised with how many attempts were made, over how long, and the last failure.

What counts as transient is the caller's: it names the exception classes (`retry_on`) and,
where only some of them may be repeated, a predicate (`retry_if`; a write that may have
reached the server is not repeated). Anything else passes straight through, untouched.

The orchestration is tenacity's (stop, wait, retry, before_sleep); the sleep is injected:
tests pass `list.append` and wait for nothing, and the default looks `time.sleep` up at call
time, so under pyinfra (whose CLI monkey-patches with gevent) a wait yields to the other
hosts' greenlets. A gevent caller that is not monkey-patched passes `sleep=gevent.sleep`.

    policy = RetryPolicy(attempts=4, first_delay=1.0, factor=2.0, max_delay=20.0)
    answer = policy.call(fetch, endpoint="UFM https://ufm", what="GET ports",
                         retry_on=(UFMTransient,), error=UFMUnavailable)

    @retried(policy, endpoint="UFM https://ufm", what="GET ports", retry_on=(UFMTransient,))
    def fetch() -> dict: ...
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any, ParamSpec, TypeVar

import tenacity

from kiln.core.errors import KilnError

logger = logging.getLogger("kiln.retry")

T = TypeVar("T")
P = ParamSpec("P")
RetryAfter = str | float | int | None


def pause(seconds: float) -> None:
    """time.sleep, looked up when called: gevent's once pyinfra has monkey-patched it."""
    time.sleep(seconds)


class RetriesExhausted(KilnError):
    """No usable answer within the retry bound (callers usually name their own class)."""


def retry_after_seconds(value: RetryAfter, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header (delay-seconds or an HTTP date) asks for; None when
    there is none or it cannot be read. Never negative."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(float(value), 0.0)
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is tried again.

    Group data sets the four numbers per cluster (`kiln_bmc_retry`); each client has its own
    defaults (a BMC's are these).
    """

    attempts: int = 4  # in all, the first try included
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 20.0
    sleep: Callable[[float], None] = field(default=pause, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}")
        if self.first_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError("RetryPolicy: delays must be >= 0 and factor >= 1")

    def delay(self, attempt: int, retry_after: RetryAfter = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): the server's
        Retry-After when it gave one, else the backoff; never more than max_delay."""
        asked = retry_after_seconds(retry_after)
        if asked is not None:
            return min(asked, self.max_delay)
        backoff = tenacity.wait_exponential(multiplier=self.first_delay, exp_base=self.factor,
                                            max=self.max_delay)
        return float(backoff(SimpleNamespace(attempt_number=attempt)))  # type: ignore[arg-type]

    def call(
        self,
        action: Callable[[], T],
        *,
        endpoint: str,
        what: str,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        retry_if: Callable[[BaseException], bool] | None = None,
        retry_after: Callable[[BaseException], RetryAfter] | None = None,
        error: Callable[[str], Exception] = RetriesExhausted,
    ) -> T:
        """`action()`, tried again while it raises one of `retry_on` (and `retry_if` says
        yes) and attempts are left.

        `retry_after(exc)` gives the server's Retry-After for a failure; by default the
        exception's own `retry_after` attribute, if it has one. Once the bound is reached,
        raises `error(message)`, the message naming `endpoint`, `what` and the last failure.
        A failure not to be retried passes through as it was raised.
        """
        started = time.monotonic()

        def retriable(exc: BaseException) -> bool:
            return isinstance(exc, retry_on) and (retry_if is None or retry_if(exc))

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            asked = (retry_after(exc) if retry_after else getattr(exc, "retry_after", None)) \
                if exc is not None else None
            return self.delay(state.attempt_number, asked)

        def log(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait_for = state.next_action.sleep if state.next_action else 0.0
            logger.warning("%s: %s: %s (attempt %d of %d); retrying in %.1f s", endpoint,
                           what, exc, state.attempt_number, self.attempts, wait_for)

        def give_up(state: tenacity.RetryCallState) -> Any:
            exc = state.outcome.exception() if state.outcome else None
            tries = state.attempt_number
            raise error(
                f"{endpoint}: {what}: no usable answer after {tries} attempt"
                f"{'s' if tries > 1 else ''} over {time.monotonic() - started:.0f} s; "
                f"last: {exc}"
            ) from None

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(retriable),
            sleep=self.sleep,
            before_sleep=log,
            retry_error_callback=give_up,
        )
        return retrying(action)


def retried(
    policy: RetryPolicy,
    *,
    endpoint: str,
    what: str,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    retry_if: Callable[[BaseException], bool] | None = None,
    retry_after: Callable[[BaseException], RetryAfter] | None = None,
    error: Callable[[str], Exception] = RetriesExhausted,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A decorator: every call of the function goes through `policy.call` with these rules."""

    def decorate(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return policy.call(lambda: function(*args, **kwargs), endpoint=endpoint, what=what,
                               retry_on=retry_on, retry_if=retry_if, retry_after=retry_after,
                               error=error)

        return wrapper

    return decorate
