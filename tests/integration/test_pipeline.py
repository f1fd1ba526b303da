"""The whole pipeline with real processes: producer -> Redis -> celery worker -> sandbox API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

import tasks
from tasks.job import Status
from tasks.sandbox.server import SandboxServer
from tests.conftest import ROOT, SECRET, WorkerProcess, finished, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


def test_happy_path_every_job_succeeds_once(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    start_worker()
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(20)]
    jobs = wait_for(lambda: finished(ids), timeout_s=30)
    assert {j.status for j in jobs} == {Status.SUCCEEDED}
    assert all(j.attempts == 1 and j.http_status == 200 for j in jobs)
    assert sandbox.recording_rooms() == {f"room-{i}" for i in range(20)}


def test_api_faults_are_retried_until_every_job_succeeds(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    sandbox.faults.error_rate = 0.4
    start_worker()
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(20)]
    jobs = wait_for(lambda: finished(ids), timeout_s=60)
    assert {j.status for j in jobs} == {Status.SUCCEEDED}
    assert sum(j.attempts for j in jobs) > 20, "some calls were answered 5xx and retried"
    ok = [c for c in sandbox.calls() if c["status"] == 200]
    assert len(ok) == 20 and len({c["room_id"] for c in ok}) == 20


def test_a_long_retry_after_is_waited_out_in_redis_not_in_a_worker_slot(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given the API asks us to come back in 4 s, longer than a slot may be held (1 s)
    sandbox.script({"status": 429, "headers": {"Retry-After": "4"}})
    start_worker(RECORDER_INLINE_WAIT_MAX="1")
    job_id = tasks.enqueue_recording("room-1").id
    # Then the job waits as `retrying` while the worker is free for other jobs...
    wait_for(lambda: tasks.get_job(job_id).status is Status.RETRYING, timeout_s=10)  # type: ignore[union-attr]
    other = tasks.enqueue_recording("room-2").id
    # ...which the global cool-down holds back too; and both start once it has passed
    done = wait_for(lambda: finished([job_id, other]), timeout_s=20)
    assert [j.status for j in done] == [Status.SUCCEEDED, Status.SUCCEEDED]
    calls = [c for c in sandbox.calls() if c["path"].endswith("/start")]
    assert calls[1]["t"] - calls[0]["t"] >= 4.0


def test_idempotent_enqueue_starts_one_recording(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    start_worker()
    first = tasks.enqueue_recording("room-1", idempotency_key="standup-2026-11-24")
    second = tasks.enqueue_recording("room-1", idempotency_key="standup-2026-11-24")
    assert second.id == first.id
    wait_for(lambda: finished([first.id]), timeout_s=15)
    time.sleep(0.5)  # give a (wrong) second message time to arrive
    assert len([c for c in sandbox.calls() if c["path"].endswith("/start")]) == 1


def test_invalid_input_raises_and_leaves_nothing_behind(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    with pytest.raises(tasks.ValidationError) as err:
        tasks.enqueue_recording("room-1", config={"layout": {"gridSize": 9}})
    assert err.value.field == "config.layout.gridSize"
    with pytest.raises(tasks.ValidationError):
        tasks.enqueue_recording("  ")
    with pytest.raises(tasks.ValidationError):
        tasks.enqueue_recording("room-1", run_at=datetime(2030, 1, 1))  # naive
    assert rdb.dbsize() == 0


def test_jobs_are_found_by_id_and_by_room_newest_first(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    start_worker()
    a1 = tasks.enqueue_recording("room-a")
    b1 = tasks.enqueue_recording("room-b")
    wait_for(lambda: finished([a1.id, b1.id]), timeout_s=15)
    a2 = tasks.enqueue_recording("room-a")  # refused: room-a is already recording
    wait_for(lambda: finished([a2.id]), timeout_s=15)
    assert [j.id for j in tasks.list_jobs(room_id="room-a")] == [a2.id, a1.id]
    assert [j.id for j in tasks.list_jobs(room_id="room-a", status="failed")] == [a2.id]
    assert tasks.get_job(a2.id).error["type"] == "already_recording"  # type: ignore[union-attr,index]
    assert tasks.get_job("no-such-job") is None


def test_run_at_holds_the_job_until_it_is_due(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    start_worker()
    due = datetime.now(UTC) + timedelta(seconds=2)
    job = tasks.enqueue_recording("room-1", run_at=due)
    assert job.status is Status.SCHEDULED
    done = wait_for(lambda: finished([job.id]), timeout_s=15)[0]
    assert done.status is Status.SUCCEEDED
    first_call = next(c for c in sandbox.calls() if c["path"].endswith("/start"))
    assert due.timestamp() <= first_call["t"] <= due.timestamp() + 2.0


def test_a_cancelled_job_never_reaches_the_api(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    job = tasks.enqueue_recording("room-1")  # queued, no worker yet
    cancelled = tasks.cancel_job(job.id)
    assert cancelled.status is Status.CANCELLED and cancelled.finished_at is not None
    start_worker()
    marker = tasks.enqueue_recording("room-2")
    wait_for(lambda: finished([marker.id]), timeout_s=15)
    assert [c["room_id"] for c in sandbox.calls()] == ["room-2"]
    with pytest.raises(LookupError):
        tasks.cancel_job("no-such-job")


def test_the_secret_appears_nowhere_in_redis_or_the_worker_log(
    start_worker: StartWorker, sandbox: SandboxServer, rdb: redis.Redis
) -> None:
    sandbox.script({"status": 503}, {"status": 401}, {"status": 400})
    worker = start_worker("--loglevel=DEBUG")
    ids = [tasks.enqueue_recording(f"room-{i}").id for i in range(4)]
    wait_for(lambda: finished(ids), timeout_s=30)
    tokens = {c.get("token") for c in sandbox.calls()} - {None}
    dumped = b""
    for key in rdb.scan_iter():
        kind = rdb.type(key)
        if kind == b"string":
            dumped += rdb.get(key) or b""
        elif kind == b"hash":
            dumped += b"".join(k + v for k, v in rdb.hgetall(key).items())
        elif kind == b"list":
            dumped += b"".join(rdb.lrange(key, 0, -1))
        elif kind == b"zset":
            dumped += b"".join(rdb.zrange(key, 0, -1))
    log = worker.log()
    assert "room-0" in log, "the log is the worker's"
    assert SECRET.encode() not in dumped and SECRET not in log
    assert "eyJ" not in log, "no JWT in the log"
    for token in tokens:
        assert token not in log


def worker_that_stops_at_start_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A worker worker`` with ``env`` and expect it to stop by itself."""
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    return proc


def test_a_worker_without_credentials_stops_at_start_up_with_one_line(
    recorder_env: dict[str, str],
) -> None:
    proc = worker_that_stops_at_start_up({**recorder_env, "VIDEOSDK_SECRET": ""})
    assert "VIDEOSDK_SECRET (or VIDEOSDK_SECRET_FILE) is not set" in proc.stderr


@pytest.mark.parametrize("api_base", ["127.0.0.1:8080", "ftp://api.example.com"])
def test_a_worker_with_a_malformed_api_base_stops_at_start_up_naming_the_variable(
    recorder_env: dict[str, str], api_base: str
) -> None:
    proc = worker_that_stops_at_start_up({**recorder_env, "VIDEOSDK_API_BASE": api_base})
    assert "VIDEOSDK_API_BASE must be an http:// or https:// URL with a host" in proc.stderr


def test_a_worker_sizes_its_thread_pool_to_the_rate_limit_unless_told(
    start_worker: StartWorker,
) -> None:
    # 200/s against an API not measured yet (0.5 s assumed): 150 threads, not a fixed 32
    sized = start_worker(RECORDER_CONCURRENCY="auto", RECORDER_RATE_LIMIT="200/s")
    assert "concurrency: 150 (thread)" in sized.log()
    told = start_worker("--concurrency", "5", RECORDER_CONCURRENCY="auto")
    assert "concurrency: 5 (thread)" in told.log()
