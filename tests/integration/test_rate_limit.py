"""The global rate limit across real worker processes, judged by the sandbox's arrival log.

Every figure here is read from when calls *arrived* at the API (``SandboxServer.calls()``), not
from what the workers believe they did: that is what the real API would count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

import tasks
from tasks import runtime
from tasks.job import Job, Status
from tasks.sandbox.server import SandboxServer
from tests.conftest import WorkerProcess, finished, max_in_any_window, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]

RATE_PER_S = 5
INTERVAL_S = 1 / RATE_PER_S
BURST = 1
#: the most calls GCRA lets into any 1 s window: the rate, plus the burst that may go at once
MOST_PER_WINDOW = RATE_PER_S + BURST
LIMITER_WAITS = {"rate_limit_wait", "rate_limit_cooldown"}


def start_calls(sandbox: SandboxServer) -> list[dict[str, Any]]:
    """Start calls in order of arrival (the log is appended under a lock, so it is ordered)."""
    return [c for c in sandbox.calls() if c["path"].endswith("/start")]


def mean_gap_s(times_s: Sequence[float]) -> float:
    assert len(times_s) >= 2, f"too few calls to measure a spacing: {times_s}"
    return (times_s[-1] - times_s[0]) / (len(times_s) - 1)


def test_three_workers_share_one_rate_and_drain_at_that_rate(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given three worker processes of four threads each, 12 slots for a limit of 5/s
    for _ in range(3):
        start_worker("-c", "4", RECORDER_RATE_LIMIT=f"{RATE_PER_S}/s", RECORDER_RATE_BURST="1")
    # When 40 jobs for 40 rooms arrive at once
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(40)]
    jobs = wait_for(lambda: finished(ids), timeout_s=40, interval_s=0.2)
    # Then every job succeeds with one call...
    assert {j.status for j in jobs} == {Status.SUCCEEDED}
    assert [j.attempts for j in jobs] == [1] * 40
    times = [c["t"] for c in start_calls(sandbox)]
    assert len(times) == 40
    # ...no 1 s window ever holds more than rate + burst calls...
    assert max_in_any_window(times) <= MOST_PER_WINDOW
    # ...and the 40 calls take 39 intervals of 0.2 s (7.8 s): the limit is used, not wasted
    span_s = times[-1] - times[0]
    assert 7.0 < span_s < 14.0, f"40 calls at 5/s took {span_s:.2f}s"


def test_a_retry_after_pauses_every_worker_for_that_long(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given two workers draining a queue at 5/s, whose fourth call the API answers with a 429
    # asking for 3 s of quiet
    sandbox.script(*[{"status": 200}] * 3, {"status": 429, "headers": {"Retry-After": "3"}})
    for _ in range(2):
        start_worker("-c", "4", RECORDER_RATE_LIMIT=f"{RATE_PER_S}/s")
    # When twelve jobs arrive
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(12)]
    jobs = wait_for(lambda: finished(ids), timeout_s=30, interval_s=0.2)
    assert {j.status for j in jobs} == {Status.SUCCEEDED}
    calls = start_calls(sandbox)
    at = next(i for i, c in enumerate(calls) if c["status"] == 429)
    t_429 = calls[at]["t"]
    # Then no worker calls the API again until the 3 s have passed...
    early = [round(c["t"] - t_429, 2) for c in calls[at + 1 :] if c["t"] < t_429 + 3.0]
    assert not early, f"calls {early} s after a 429 with Retry-After: 3"
    # ...and afterwards the rate holds again
    assert max_in_any_window([c["t"] for c in calls]) <= MOST_PER_WINDOW


def test_a_429_without_retry_after_lowers_the_rate_until_it_recovers(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a steady flow at 5/s, whose sixth call the API refuses with a bare 429
    sandbox.script(*[{"status": 200}] * 5, {"status": 429})
    for _ in range(2):
        start_worker("-c", "2", RECORDER_RATE_LIMIT=f"{RATE_PER_S}/s")
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(60)]
    limiter = runtime.limiter()  # the same keys as the workers': only its factor is read here
    # When the 429 arrives, the effective rate drops at once (multiplicative decrease)
    wait_for(lambda: any(c["status"] == 429 for c in start_calls(sandbox)), timeout_s=15)
    lowered = wait_for(lambda: [f for f in [limiter.peek().factor] if f < 1], timeout_s=1)[0]
    assert lowered == pytest.approx(0.5, abs=0.05)
    # ...and then climbs back to the full rate (additive increase, 0.05 a second: 10 s)
    wait_for(lambda: limiter.peek().factor >= 1.0, timeout_s=13, interval_s=0.1)
    recovered_at = time.time()
    jobs = wait_for(lambda: finished(ids), timeout_s=30, interval_s=0.2)
    assert {j.status for j in jobs} == {Status.SUCCEEDED}

    calls = start_calls(sandbox)
    t_429 = next(c["t"] for c in calls if c["status"] == 429)
    times = [c["t"] for c in calls]
    # Then calls made on slots reserved after the 429 are spaced wider than 0.2 s (slots
    # reserved before it, at most 4 in flight x 0.2 s, are used first)...
    slowed = [t for t in times if t_429 + 1.0 <= t <= t_429 + 4.0]
    assert mean_gap_s(slowed) >= 1.4 * INTERVAL_S, f"spacing {mean_gap_s(slowed):.3f}s"
    # ...and those reserved after the recovery are back at the configured spacing
    restored = [t for t in times if t >= recovered_at + 1.0]
    assert mean_gap_s(restored) <= 1.15 * INTERVAL_S, f"spacing {mean_gap_s(restored):.3f}s"
    assert max_in_any_window(times) <= MOST_PER_WINDOW


#: the records of the jobs parked in the due set, read in one atomic step
# KEYS[1] due set; ARGV[1] key prefix
PARKED_LUA = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local raw = redis.call('GET', ARGV[1] .. ':job:' .. id)
  if raw then table.insert(out, raw) end
end
return out
"""


def test_jobs_waiting_on_the_limiter_say_so_and_keep_their_attempts(
    start_worker: StartWorker, sandbox: SandboxServer, rdb: redis.Redis
) -> None:
    # Given one worker that may hold a slot for only 0.5 s while waiting, and an API whose first
    # answer asks for 2 s of quiet (so jobs wait on a cool-down, then on the rate)
    sandbox.script({"status": 429, "headers": {"Retry-After": "2"}})
    start_worker("-c", "8", RECORDER_RATE_LIMIT=f"{RATE_PER_S}/s", RECORDER_INLINE_WAIT_MAX="0.5")
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(20)]
    store = runtime.store()
    parked_records = rdb.register_script(PARKED_LUA)
    # When we look at the jobs parked in the due set while the queue drains
    parked: list[Job] = []

    def drained() -> list[Job] | None:
        raw = parked_records(keys=[store.key("due")], args=[store.prefix])
        parked.extend(Job.from_record(r) for r in raw)
        return finished(ids)

    jobs = wait_for(drained, timeout_s=30, interval_s=0.05)
    refused = next(c["room_id"] for c in start_calls(sandbox) if c["status"] == 429)
    # Then every parked job says it waits, for the limit or for the cool-down, and is not failed
    # (the refused job, parked for its own Retry-After, says rate_limited)...
    assert parked, "no job was ever parked: the limiter never made anyone wait"
    for job in parked:
        assert job.status in {Status.QUEUED, Status.RETRYING}, job.to_dict()
        allowed = LIMITER_WAITS | ({"rate_limited"} if job.room_id == refused else set())
        assert job.error is not None and job.error["type"] in allowed, job.to_dict()
        # ...waiting used no attempt: only the call answered 429 cost one
        assert job.attempts == (1 if job.room_id == refused else 0), job.to_dict()
    assert {j.error["type"] for j in parked} >= LIMITER_WAITS  # type: ignore[index]
    assert {j.status for j in jobs} == {Status.SUCCEEDED}
    assert all(j.error is None for j in jobs)
    assert {j.room_id: j.attempts for j in jobs} == {
        f"room-{i}": 2 if f"room-{i}" == refused else 1 for i in range(20)
    }
