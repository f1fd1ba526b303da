"""Delivery guarantees proven by fault injection: kill -9 workers, restart Redis, redeliver.

Bounds used here follow from the test settings: read timeout 3 s, connect 1 s, inline wait 1 s,
so a lease lasts 1 + 1 + 3 + 5 = 10 s; the sweeper runs every second. A job whose worker was
SIGKILLed is thus running again within lease + sweep + dispatch, about 12 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

import tasks
from tasks import runtime
from tasks.job import Status
from tasks.sandbox.server import SandboxServer
from tests.conftest import RedisServer, WorkerProcess, finished, wait_for
from worker.publish import publish_job as publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartWorker = Callable[..., WorkerProcess]
FAULT_ENV = {
    "RECORDER_READ_TIMEOUT": "3",
    "RECORDER_CONNECT_TIMEOUT": "1",
    "RECORDER_INLINE_WAIT_MAX": "1",
    "RECORDER_SWEEP_INTERVAL": "1",
}
RECOVERY_BOUND_S = 10 + 1 + 1 + 5  # lease + sweep + dispatch + a margin for a loaded machine


def successful_starts(sandbox: SandboxServer) -> Counter[str]:
    return Counter(
        c["room_id"] for c in sandbox.calls() if c["path"].endswith("/start") and c["status"] == 200
    )


def arrived(sandbox: SandboxServer, room: str) -> bool:
    return any(c["room_id"] == room for c in sandbox.calls())


def holder_pid(job_id: str) -> int:
    job = tasks.get_job(job_id)
    assert job is not None and job.extra.get("_holder"), "the job is held by a delivery"
    return int(job.extra["_holder"].rsplit(":", 3)[1])


def test_sigkill_of_the_child_mid_call_starts_the_recording_once(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a prefork worker whose child is in the middle of a slow API call
    sandbox.faults.latency_s = 1.5
    worker = start_worker("-c", "2", RECORDER_POOL="prefork", **FAULT_ENV)
    job_id = tasks.enqueue_recording("room-1").id
    wait_for(lambda: arrived(sandbox, "room-1"), timeout_s=10)
    child = holder_pid(job_id)
    assert child != worker.pid
    # When the child is killed with SIGKILL
    os.kill(child, signal.SIGKILL)
    # Then the message comes back, the dead holder's lease is taken over, and the job succeeds
    done = wait_for(lambda: finished([job_id]), timeout_s=30)[0]
    assert done.status is Status.SUCCEEDED
    assert done.lost_deliveries == 1 and done.maybe_started
    assert successful_starts(sandbox)["room-1"] == 1
    assert worker.proc.poll() is None, "the worker survived its child"


def test_sigkill_of_the_main_process_mid_call_is_recovered_by_the_next_worker(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a worker in the middle of a slow API call
    sandbox.faults.latency_s = 1.5
    first = start_worker(**FAULT_ENV)
    job_id = tasks.enqueue_recording("room-1").id
    wait_for(lambda: arrived(sandbox, "room-1"), timeout_s=10)
    # When the whole worker is killed and a new one started
    first.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    start_worker(**FAULT_ENV)
    # Then the new worker's sweeper finds the job once its lease has expired, and it succeeds
    done = wait_for(lambda: finished([job_id]), timeout_s=RECOVERY_BOUND_S + 15)[0]
    assert time.monotonic() - killed_at <= RECOVERY_BOUND_S
    assert done.status is Status.SUCCEEDED and done.lost_deliveries == 1
    assert successful_starts(sandbox)["room-1"] == 1


def test_a_redelivered_message_of_a_succeeded_job_makes_no_second_call(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    worker = start_worker()
    job_id = tasks.enqueue_recording("room-1").id
    wait_for(lambda: finished([job_id]), timeout_s=15)
    publish(job_id, "room-1")  # the broker delivers it again
    wait_for(lambda: f"job {job_id} skipped: finished" in worker.log(), timeout_s=15)
    assert len([c for c in sandbox.calls() if c["path"].endswith("/start")]) == 1


def test_a_job_that_kills_its_worker_every_time_fails_after_a_few_deliveries(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    worker = start_worker("-c", "2", app="tests.integration.poison_app", RECORDER_POOL="prefork")
    job_id = tasks.enqueue_recording("poison-room").id
    done = wait_for(lambda: finished([job_id]), timeout_s=60)[0]
    assert done.status is Status.FAILED
    assert done.error is not None and done.error["type"] == "worker_lost"
    assert done.lost_deliveries == 3 and done.attempts == 3
    # and the worker is still healthy: a normal job goes through
    ok = tasks.enqueue_recording("room-ok").id
    assert wait_for(lambda: finished([ok]), timeout_s=20)[0].status is Status.SUCCEEDED
    assert worker.proc.poll() is None


def test_sigterm_lets_the_call_in_flight_finish_and_its_record_be_written(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    sandbox.faults.latency_s = 1.5
    worker = start_worker(**FAULT_ENV)
    job_id = tasks.enqueue_recording("room-1").id
    wait_for(lambda: arrived(sandbox, "room-1"), timeout_s=10)
    assert worker.stop(signal.SIGTERM, timeout_s=30) == 0
    job = tasks.get_job(job_id)
    assert job is not None and job.status is Status.SUCCEEDED and job.lost_deliveries == 0


def test_producer_gets_a_clear_error_and_nothing_half_stored_when_redis_is_down(
    on_private_redis: RedisServer,
) -> None:
    private_redis = on_private_redis
    private_redis.stop()
    started = time.monotonic()
    with pytest.raises(tasks.BrokerUnavailable):
        tasks.enqueue_recording("room-1")
    assert time.monotonic() - started < 15
    private_redis.start()
    assert runtime.redis_conn().dbsize() == 0


def test_a_redis_restart_loses_no_job_and_starts_none_twice(
    on_private_redis: RedisServer,
    start_worker: StartWorker,
    sandbox: SandboxServer,
) -> None:
    # Given 2 jobs in flight and 20 queued on a Redis with AOF on
    private_redis = on_private_redis
    sandbox.faults.latency_s = 1.0
    start_worker("-c", "2", REDIS_URL=private_redis.url, **FAULT_ENV)
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(22)]
    wait_for(lambda: len(sandbox.calls()) >= 2, timeout_s=10)
    # When Redis restarts
    private_redis.restart()
    # Then every job finishes, each room started exactly once
    jobs = wait_for(lambda: finished(ids), timeout_s=90, interval_s=0.5)
    assert Counter(j.status for j in jobs) == {Status.SUCCEEDED: 22}
    starts = successful_starts(sandbox)
    assert len(starts) == 22 and set(starts.values()) == {1}
