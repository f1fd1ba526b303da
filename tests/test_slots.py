"""Rate slots against a real Redis limiter: a wake too late for its slot gives the slot up."""

from __future__ import annotations

import time

import redis

from tasks.delivery.outcomes import Outcomes
from tasks.delivery.slots import LATE_WAKE_MIN_S, RateSlots
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter

RATE_PER_S = 200  # an interval of 5 ms: LATE_WAKE_MIN_S (10 ms) is the late bound


def slots_oversleeping_once(rdb: redis.Redis, extra_s: float) -> tuple[RateSlots, list[float]]:
    """Slots whose first sleep ends ``extra_s`` later than asked, while other threads take the
    next 100 ms of slots (so a new slot is a wait again)."""
    limiter = RedisRateLimiter(client=rdb, rate_per_s=RATE_PER_S, prefix="t")
    for _ in range(10):  # the first take waits ~50 ms: room for the other threads' takes
        limiter.acquire(max_wait_s=1)
    sleeps: list[float] = []

    def sleep(wait_s: float) -> None:
        wake_at = time.monotonic() + wait_s
        sleeps.append(wait_s)
        if len(sleeps) == 1:
            for _ in range(20):
                limiter.acquire(max_wait_s=1)
            wake_at += extra_s
        time.sleep(max(wake_at - time.monotonic(), 0.0))

    store = JobStore(client=rdb, prefix="t", ttl_s=60)
    outcomes = Outcomes(store=store, inline_wait_max_s=1)
    return RateSlots(limiter=limiter, outcomes=outcomes, inline_wait_max_s=1, sleep=sleep), sleeps


def test_a_wake_on_time_holds_its_slot(rdb: redis.Redis) -> None:
    slots, sleeps = slots_oversleeping_once(rdb, 0.0)
    assert slots.wait({}) is None
    assert len(sleeps) == 1


def test_a_wake_later_than_the_bound_takes_a_new_slot_instead_of_calling_late(
    rdb: redis.Redis,
) -> None:
    slots, sleeps = slots_oversleeping_once(rdb, LATE_WAKE_MIN_S * 5)
    assert slots.wait({}) is None
    # the late wake asked again: a new slot, after the ones the other threads took meanwhile
    assert len(sleeps) == 2
    assert sleeps[1] > 0
