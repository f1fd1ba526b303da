"""A Redis outage in the middle of a drain: no worker down, no job stuck, no room started twice.

Jobs drain at about 8/s (rate limit 8/s, the sandbox answering after 0.2-0.4 s) through two
workers of the default thread pool on a private Redis with AOF on. When a quarter of the rooms
have been started, Redis is stopped with SIGTERM (it writes its AOF) for 20 s (45 s in the long
variant), then started again on the same port from its AOF. Every worker process must still be
running, every job must be final within 90 s of Redis's return, no room started twice and no
API call made for a job after its ``finished_at``.

CI runs 60 jobs and the 20 s outage; ``RECORDER_SOAK_FULL=1`` runs 200 jobs and the 45 s outage
too (about 4 minutes more).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

import tasks
from tasks.job import Job
from tasks.sandbox.server import SandboxServer
from tests.conftest import RedisServer, WorkerProcess, wait_for
from tests.integration.soak import (
    CLOCK_SLACK_S,
    describe,
    down,
    epoch,
    poll_jobs,
    starts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FULL = os.environ.get("RECORDER_SOAK_FULL") == "1"
JOBS = 200 if FULL else 60
FINAL_AFTER_RETURN_S = 90.0
OUTAGE_ENV = {"RECORDER_RATE_LIMIT": "8/s"}


@pytest.mark.parametrize(
    "outage_s",
    [
        pytest.param(20, marks=pytest.mark.timeout(200)),
        pytest.param(
            45,
            marks=[
                pytest.mark.timeout(300),
                pytest.mark.skipif(not FULL, reason="long outage: RECORDER_SOAK_FULL=1"),
            ],
        ),
    ],
)
def test_workers_ride_out_a_redis_outage_and_every_job_finishes_once(
    outage_s: int,
    on_private_redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
    sandbox: SandboxServer,
) -> None:
    # Given jobs draining at about 8/s through two thread-pool workers on a Redis with AOF on
    private_redis = on_private_redis
    sandbox.faults.latency_s = 0.2
    sandbox.faults.latency_jitter_s = 0.2
    workers = [start_worker(REDIS_URL=private_redis.url, **OUTAGE_ENV) for _ in range(2)]
    ids = [tasks.enqueue_recording(f"outage-{i}").id for i in range(JOBS)]
    wait_for(lambda: len(starts(sandbox)) >= JOBS // 4, timeout_s=60, interval_s=0.05)

    # When Redis is stopped (SIGTERM) for outage_s and started again from its AOF
    private_redis.stop(signal.SIGTERM)
    stopped = time.time()
    started_before = len(starts(sandbox))
    time.sleep(outage_s)
    private_redis.start()
    back = time.time()

    # Then every job is final within 90 s of Redis's return, each room started once,
    # and no worker process has exited
    records: dict[str, Job | None] = dict.fromkeys(ids)
    deadline = time.monotonic() + FINAL_AFTER_RETURN_S
    while time.monotonic() < deadline:
        poll_jobs(records)
        if all(j is not None and j.finished for j in records.values()):
            break
        time.sleep(0.5)
    poll_jobs(records)
    jobs = [j for j in records.values() if j is not None]
    stuck = [j for j in jobs if not j.finished]
    late = [j for j in jobs if j.finished_at and epoch(j.finished_at) > back + FINAL_AFTER_RETURN_S]
    dead = [why for why in map(down, workers) if why]
    per_room = starts(sandbox)
    twice = sorted(room for room, n in per_room.items() if n > 1)
    finished_at = {j.room_id: epoch(j.finished_at) for j in jobs if j.finished_at}
    after = [
        c
        for c in sandbox.calls()
        if c["room_id"] in finished_at and c["t"] > finished_at[c["room_id"]] + CLOCK_SLACK_S
    ]
    last = max(finished_at.values(), default=back)
    print(
        f"outage={outage_s}s jobs={JOBS} started_before_outage={started_before} "
        f"down={back - stopped:.1f}s final={len(jobs) - len(stuck)} stuck={len(stuck)} "
        f"late={len(late)} last_final_after_return={last - back:.1f}s "
        f"started_twice={len(twice)} calls_after_finish={len(after)} dead_workers={dead}"
    )
    assert not dead, f"worker processes exited: {dead}"
    assert len(jobs) == JOBS, f"{JOBS - len(jobs)} job records missing"
    assert not stuck, (
        f"{len(stuck)} jobs not final {FINAL_AFTER_RETURN_S:.0f}s after Redis returned: "
        + ", ".join(describe(j) for j in stuck[:5])
    )
    assert not late, [describe(j) for j in late[:5]]
    assert not twice, f"rooms started more than once: {twice[:10]}"
    assert not after, f"API calls after their job's finished_at: {after[:5]}"
