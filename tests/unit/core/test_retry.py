"""The shared retry policy (kiln/core/retry.py) on its own; the BMC and MAAS tests cover it
through their clients."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from kiln.core.errors import KilnError
from kiln.core.retry import RetriesExhausted, RetryPolicy, retried, retry_after_seconds


class Busy(Exception):
    def __init__(self, message: str, retry_after: str | None = None, applied: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.applied = applied


class Unavailable(KilnError):
    pass


def flaky(*failures: BaseException, answer: str = "ok"):
    """An action that raises `failures` in turn, then answers; `calls` counts the calls."""
    queue = list(failures)

    def action() -> str:
        action.calls += 1
        if queue:
            raise queue.pop(0)
        return answer

    action.calls = 0
    return action


def test_backoff_is_exponential_and_capped():
    policy = RetryPolicy(attempts=6, first_delay=0.5, factor=2.0, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(first_delay=0.0, max_delay=0.0).delay(3) == 0.0
    assert RetryPolicy(factor=10.0, max_delay=30.0).delay(400) == 30.0  # no overflow


def test_retry_after_wins_and_is_capped():
    policy = RetryPolicy(first_delay=1.0, max_delay=20.0)
    assert policy.delay(1, "7") == 7.0
    assert policy.delay(1, "120") == 20.0
    assert policy.delay(3, "-5") == 0.0
    assert policy.delay(2, "not a date") == 2.0  # unreadable: our own backoff


def test_retry_after_as_an_http_date():
    now = datetime(2025, 4, 5, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=12), usegmt=True),
                               now=now) == 12.0
    assert retry_after_seconds("Sat, 05 Apr 2025 09:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds(3) == 3.0


def test_the_policy_checks_its_numbers():
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="factor >= 1"):
        RetryPolicy(factor=0.5)


def test_transient_failures_are_retried_with_one_log_line_each(caplog):
    slept: list[float] = []
    policy = RetryPolicy(attempts=4, first_delay=0.25, sleep=slept.append)
    action = flaky(Busy("HTTP 503"), Busy("HTTP 503", retry_after="2"))
    with caplog.at_level(logging.WARNING, logger="kiln.retry"):
        answer = policy.call(action, endpoint="UFM https://ufm-001", what="GET ports",
                             retry_on=Busy)
    assert answer == "ok" and action.calls == 3
    assert slept == [0.25, 2.0]  # the second failure carried Retry-After: 2
    assert [r.getMessage() for r in caplog.records] == [
        "UFM https://ufm-001: GET ports: HTTP 503 (attempt 1 of 4); retrying in 0.2 s",
        "UFM https://ufm-001: GET ports: HTTP 503 (attempt 2 of 4); retrying in 2.0 s",
    ]


def test_the_bound_raises_the_callers_error_naming_endpoint_and_last_failure():
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, first_delay=0.1, sleep=slept.append)
    action = flaky(*(Busy(f"HTTP 50{n}") for n in range(2, 9)))
    with pytest.raises(Unavailable) as failure:
        policy.call(action, endpoint="MAAS http://maas:5240/MAAS/", what="GET version/",
                    retry_on=Busy, error=Unavailable)
    assert str(failure.value).startswith("MAAS http://maas:5240/MAAS/: GET version/: no usable "
                                         "answer after 3 attempts over 0 s; last: HTTP 504")
    assert action.calls == 3 and len(slept) == 2
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_one_attempt_is_singular_and_the_default_error_is_a_kiln_error():
    with pytest.raises(RetriesExhausted, match="after 1 attempt over"):
        RetryPolicy(attempts=1).call(flaky(Busy("down")), endpoint="x", what="y",
                                     retry_on=Busy)


def test_what_is_not_retried_passes_through_untouched():
    slept: list[float] = []
    policy = RetryPolicy(sleep=slept.append)
    refused = PermissionError("401")
    action = flaky(refused)
    with pytest.raises(PermissionError) as failure:
        policy.call(action, endpoint="x", what="y", retry_on=Busy)
    assert failure.value is refused and action.calls == 1 and slept == []
    # A retry_on class the predicate turns down (a write that may have been applied).
    applied = Busy("HTTP 500", applied=True)
    action = flaky(applied)
    with pytest.raises(Busy) as failure:
        policy.call(action, endpoint="x", what="y", retry_on=Busy,
                    retry_if=lambda exc: not exc.applied)
    assert failure.value is applied and action.calls == 1 and slept == []


def test_retry_after_can_come_from_the_caller():
    slept: list[float] = []
    policy = RetryPolicy(sleep=slept.append)
    policy.call(flaky(ConnectionError("reset")), endpoint="x", what="y",
                retry_on=ConnectionError, retry_after=lambda exc: "4")
    assert slept == [4.0]


def test_the_decorator():
    slept: list[float] = []
    action = flaky(Busy("HTTP 503"), answer="ports")

    @retried(RetryPolicy(first_delay=0.5, sleep=slept.append), endpoint="UFM u",
             what="GET ports", retry_on=Busy)
    def ports(prefix: str) -> str:
        return prefix + action()

    assert ports("all ") == "all ports" and slept == [0.5]
    assert ports.__name__ == "ports"


def test_the_default_sleep_is_looked_up_when_called(monkeypatch):
    # gevent's monkey-patching (pyinfra's CLI) replaces time.sleep after kiln is imported.
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    RetryPolicy(first_delay=0.5).call(flaky(Busy("x")), endpoint="e", what="w", retry_on=Busy)
    assert slept == [0.5]


def test_policies_compare_by_their_numbers():
    assert RetryPolicy(sleep=print) == RetryPolicy()
    assert "sleep" not in repr(RetryPolicy())
