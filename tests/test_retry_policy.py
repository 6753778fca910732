"""L{rawsvc.client.retry.RetryPolicy}: which failures are retried, how long and how often."""

from __future__ import annotations

import pytest

from rawsvc.client.retry import RETRY_FOR, TRANSIENT, RetryPolicy


def test_back_off_doubles_from_retry_delay_up_to_the_cap_with_a_little_jitter():
    policy = RetryPolicy(retry_delay=1.0, max_retry_delay=30.0)
    for failed, base in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (50, 30)]:
        delays = [policy.delay(failed) for _ in range(50)]
        assert all(base <= d <= base + 0.25 for d in delays), (failed, delays)
    assert len({policy.delay(3) for _ in range(20)}) > 1  # jittered


@pytest.mark.parametrize("outcome", sorted(TRANSIENT))
def test_transient_failures_are_retried_for_a_week_by_default(outcome):
    policy = RetryPolicy()
    assert policy.retry_for == RETRY_FOR == 7 * 86400
    assert not policy.gives_up(outcome, 10_000, RETRY_FOR - 1)
    assert policy.gives_up(outcome, 10_000, RETRY_FOR)


@pytest.mark.parametrize("outcome", ["not_allowed", "source_error", "reply_timeout", "reset_draining", "error"])
def test_failures_that_never_heal_are_not_retried(outcome):
    assert RetryPolicy().gives_up(outcome, 1, 0.0)


def test_retries_caps_when_set():
    policy = RetryPolicy(retries=2)
    assert not policy.gives_up("refused", 2, 0.0)
    assert policy.gives_up("refused", 3, 0.0)
    assert RetryPolicy(retries=0).gives_up("connect_timeout", 1, 0.0)
    assert RetryPolicy(retry_for=0).gives_up("dns_failure", 1, 0.0)
