"""The Lua limiter against a real Redis (its TIME is the clock, so counts use real time)."""

from __future__ import annotations

import time

import pytest
import redis

from tasks.store.ratelimit import MIN_FACTOR, RATE_MARGIN, RedisRateLimiter


def admitted_now(limiter: RedisRateLimiter, tries: int) -> int:
    return sum(limiter.acquire(max_wait_s=0).reserved for _ in range(tries))


def test_burst_is_admitted_at_once_then_the_rate_holds(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=10, burst=3, prefix="t")
    assert admitted_now(limiter, 10) == 3
    wait = limiter.acquire(max_wait_s=0).wait_s
    assert 0.05 < wait <= 0.1 / RATE_MARGIN


def test_burst_one_admits_exactly_one(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=5, burst=1, prefix="t")
    assert admitted_now(limiter, 5) == 1


def test_reserved_slots_are_spaced_by_the_emission_interval(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=20, burst=1, prefix="t")
    waits = [limiter.acquire(max_wait_s=10).wait_s for _ in range(5)]
    assert waits[0] == 0
    for i in range(1, 5):
        assert waits[i] == pytest.approx(i * 0.05 / RATE_MARGIN, abs=0.01)


def test_no_second_sees_more_calls_than_the_rate_whatever_the_jitter(rdb: redis.Redis) -> None:
    # The spacing leaves RATE_MARGIN of room: a call sent up to that much of a second late
    # still lands in a second that holds at most rate_per_s calls.
    limiter = RedisRateLimiter(client=rdb, rate_per_s=200, burst=1, prefix="t")
    slots = [time.monotonic() + limiter.acquire(max_wait_s=10).wait_s for _ in range(400)]
    spacing_s = (slots[-1] - slots[0]) / 399
    assert 1 / spacing_s <= 200 * RATE_MARGIN + 0.5
    assert 1 / spacing_s >= 200 * RATE_MARGIN - 2


def test_a_wait_beyond_max_wait_reserves_nothing(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=1, burst=1, prefix="t")
    assert limiter.acquire(max_wait_s=0).reserved
    refused = limiter.acquire(max_wait_s=0.5)
    assert not refused.reserved and 0.9 < refused.wait_s <= 1 / RATE_MARGIN
    # nothing was reserved, so the next wait is still about one interval, not two
    assert limiter.acquire(max_wait_s=0).wait_s <= 1 / RATE_MARGIN


def test_admissions_over_a_window_never_exceed_rate_plus_burst(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=50, burst=2, prefix="t")
    admitted, deadline = 0, time.monotonic() + 0.5
    while time.monotonic() < deadline:
        admitted += limiter.acquire(max_wait_s=0).reserved
    assert admitted <= 50 * 0.5 + 2 + 1  # +1: the window's edge slot


def test_deleted_keys_restart_with_one_burst_not_a_flood(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=10, burst=2, prefix="t")
    assert admitted_now(limiter, 10) == 2
    rdb.flushdb()
    assert admitted_now(limiter, 10) == 2


def test_retry_after_pauses_every_caller_until_it_passes(rdb: redis.Redis) -> None:
    a = RedisRateLimiter(client=rdb, rate_per_s=100, prefix="t")
    b = RedisRateLimiter(client=rdb, rate_per_s=100, prefix="t")  # another worker
    a.on_rate_limited(0.3)
    refused = b.acquire(max_wait_s=0)
    assert refused.cooldown and not refused.reserved and 0.2 < refused.wait_s <= 0.3
    time.sleep(0.32)
    assert b.acquire(max_wait_s=0).reserved


def test_a_shorter_retry_after_never_shortens_the_cooldown(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=100, prefix="t")
    limiter.on_rate_limited(5)
    limiter.on_rate_limited(0.1)
    assert limiter.peek().wait_s > 4


def test_429_without_retry_after_halves_the_rate_then_recovers(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=100, prefix="t")
    limiter.on_rate_limited(None)
    assert limiter.peek().factor == pytest.approx(0.5, abs=0.01)
    limiter.on_rate_limited(None)
    assert limiter.peek().factor == pytest.approx(0.25, abs=0.01)
    for _ in range(10):
        limiter.on_rate_limited(None)
    assert limiter.peek().factor == pytest.approx(MIN_FACTOR, abs=0.01)
    time.sleep(0.5)  # recovers 0.05 per second
    assert limiter.peek().factor == pytest.approx(MIN_FACTOR + 0.025, abs=0.01)
    # the lowered rate is what admits: 20x the interval at factor 0.05
    limiter.acquire(max_wait_s=0)
    assert limiter.acquire(max_wait_s=1).wait_s > 0.1


def test_a_zero_retry_after_still_slows_every_worker_down(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=100, prefix="t")
    limiter.on_rate_limited(0.0)
    state = limiter.peek()
    assert state.factor == pytest.approx(0.5, abs=0.01) and not state.cooldown


def test_a_huge_retry_after_pauses_every_worker_for_an_hour_at_most(rdb: redis.Redis) -> None:
    limiter = RedisRateLimiter(client=rdb, rate_per_s=100, prefix="t")
    limiter.on_rate_limited(9_999_999_999.0)
    state = limiter.peek()
    assert state.cooldown and 3590 < state.wait_s <= 3600
    assert state.factor == pytest.approx(1.0)  # a real pause does not also halve the rate
