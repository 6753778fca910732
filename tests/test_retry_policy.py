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


# --- the back-off wait ---------------------------------------------------------------


def _wait(delay=5.0):
    from twisted.internet.task import Clock

    from rawsvc.client.retry import RetryWait

    clock = Clock()
    wait = RetryWait(clock, delay)
    fired = []
    wait.deferred.addBoth(fired.append)
    return clock, wait, fired


def test_a_wait_ends_after_its_delay():
    clock, wait, fired = _wait(5.0)
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [None] and not wait.now()


def test_now_ends_a_wait_early_and_its_timer_with_it():
    clock, wait, fired = _wait()
    assert wait.now() is True
    assert fired == [None] and clock.getDelayedCalls() == []
    assert wait.now() is False and wait.stop(RuntimeError()) is False


def test_stop_fails_a_wait_with_the_error_given():
    clock, wait, fired = _wait()
    assert wait.stop(ValueError("stopping")) is True
    [failure] = fired
    assert failure.check(ValueError) and clock.getDelayedCalls() == []


def test_cancelling_a_wait_cancels_its_timer():
    from twisted.internet.defer import CancelledError

    clock, wait, fired = _wait()
    wait.deferred.cancel()
    assert fired[0].check(CancelledError) and clock.getDelayedCalls() == []


def test_policy_wait_uses_the_back_off_delay():
    from twisted.internet.task import Clock

    clock = Clock()
    wait = RetryPolicy(retry_delay=2.0, max_retry_delay=3.0).wait(clock, 5)
    assert 3.0 <= wait.delay <= 3.5
    [call] = clock.getDelayedCalls()
    assert call.getTime() == wait.delay
    wait.now()


def test_exhausted_counts_retries_and_time_whatever_the_outcome():
    policy = RetryPolicy(retries=1, retry_for=10.0)
    assert not policy.exhausted(1, 9.9)
    assert policy.exhausted(2, 0.0) and policy.exhausted(1, 10.0)
