"""Redis full (``maxmemory`` with ``noeviction``): workers stay up, and every job finishes once
memory is freed. Enqueueing while full refuses cleanly (tests/integration/test_faults.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

import tasks
from tasks.sandbox.server import SandboxServer
from tests.conftest import RedisServer, WorkerProcess, finished, wait_for
from tests.integration.test_faults import FAULT_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartWorker = Callable[..., WorkerProcess]
ENV = FAULT_ENV


class Filler:
    """Fills a Redis up to its ``maxmemory`` with junk keys, and frees it again."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def fill(self) -> None:
        i = 0
        try:
            while True:
                self.client.set(f"junk:{i}", "x" * 20_000)
                i += 1
        except redis.exceptions.OutOfMemoryError:
            return

    def free(self) -> None:
        keys = list(self.client.scan_iter("junk:*", count=1000))
        if keys:
            self.client.delete(*keys)


@pytest.fixture
def small_redis(on_private_redis: RedisServer) -> RedisServer:
    client = redis.Redis.from_url(on_private_redis.url)
    client.config_set("maxmemory", "20mb")
    client.close()
    return on_private_redis


def rooms_started(sandbox: SandboxServer) -> Counter[str]:
    return Counter(c["room_id"] for c in sandbox.calls() if c["status"] == 200)


def test_a_worker_started_while_redis_is_full_stays_up_and_runs_every_job_once_freed(
    small_redis: RedisServer,
    recorder_env: dict[str, str],
    sandbox: SandboxServer,
    tmp_path: Path,
) -> None:
    # Given 20 queued jobs and a Redis that is full
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(20)]
    filler = Filler(small_redis.url)
    filler.fill()
    # When a worker starts, it waits (a full Redis is not fatal: it cannot get ready yet)
    env = {**recorder_env, "REDIS_URL": small_redis.url, **ENV}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        time.sleep(5)
        assert worker.proc.poll() is None, worker.log()
        # Then once memory is freed, it gets ready and every job finishes, each room once
        filler.free()
        worker.wait_ready(timeout_s=30)
        jobs = wait_for(lambda: finished(ids), timeout_s=60, interval_s=0.5)
        assert {j.status.value for j in jobs} == {"succeeded"}
        assert set(rooms_started(sandbox).values()) == {1} and len(rooms_started(sandbox)) == 20
        assert worker.proc.poll() is None
    finally:
        worker.stop()


def test_a_running_worker_rides_out_redis_filling_up_mid_drain(
    small_redis: RedisServer, start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a worker draining 40 jobs against a 0.2 s API
    sandbox.faults.latency_s = 0.2
    worker = start_worker("-c", "4", REDIS_URL=small_redis.url, **ENV)
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(40)]
    wait_for(lambda: len(sandbox.calls()) >= 5, timeout_s=20)
    # When Redis fills up for a few seconds
    filler = Filler(small_redis.url)
    filler.fill()
    time.sleep(4)
    assert worker.proc.poll() is None, worker.log()
    filler.free()
    # Then every job finishes and no room is started twice
    jobs = wait_for(lambda: finished(ids), timeout_s=90, interval_s=0.5)
    assert {j.status.value for j in jobs} == {"succeeded"}
    started = rooms_started(sandbox)
    assert len(started) == 40 and set(started.values()) == {1}
    assert worker.proc.poll() is None
