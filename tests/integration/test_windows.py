"""Start windows with real processes: a late host, a room that never goes live, a backlog.

The sandbox requires a live session (``Faults.require_live``): a start for a room nobody has
joined is answered 400 "No active session found for this room", as VideoSDK does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import pytest
import redis

import tasks
from tasks.job import Job, Status
from tasks.sandbox.server import SandboxServer
from tasks.schedules.api import store
from tasks.schedules.firing import validated
from tasks.schedules.store import ScheduleStore
from tasks.window import WAITS_S
from tests.conftest import WorkerProcess, finished, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]


def _starts(sandbox: SandboxServer, room: str) -> list[dict[str, object]]:
    return [c for c in sandbox.calls() if c["path"].endswith("/start") and c["room_id"] == room]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _job(job_id: str) -> Job:
    found = tasks.get_job(job_id)
    assert found is not None
    return found


def test_a_late_host_is_recorded_within_one_poll_of_going_live(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a class at "now" whose host joins 5 s late, and a budget of one attempt
    sandbox.faults.require_live = True
    start_worker(RECORDER_MAX_ATTEMPTS="1")
    job_id = tasks.enqueue_recording("class-late", start_window_s=60).id
    # Then the job waits for the room, as not_live, without using up its attempt
    waiting = wait_for(
        lambda: (j := _job(job_id)).error and j.error["type"] == "not_live" and j,
        timeout_s=10,
        what="a not_live refusal",
    )
    assert waiting.status is Status.RETRYING
    time.sleep(4)
    live_at = time.time()
    sandbox.go_live("class-late")
    # When the host joins, the next poll starts the recording
    done = wait_for(lambda: finished([job_id]), timeout_s=40)[0]
    assert done.status is Status.SUCCEEDED
    started = [c for c in _starts(sandbox, "class-late") if c["status"] == 200]
    assert len(started) == 1
    refused_before = len(_starts(sandbox, "class-late")) - 1
    assert refused_before >= 2
    # one poll: at most the longest wait the poll had reached by then
    poll_s = WAITS_S["not_live"][0] * 2 ** (refused_before - 1)
    assert float(started[0]["t"]) - live_at <= min(poll_s, WAITS_S["not_live"][1]) + 1.0  # type: ignore[arg-type]


def test_a_room_that_never_goes_live_expires_with_no_call_after_its_window(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    sandbox.faults.require_live = True
    start_worker()
    job_id = tasks.enqueue_recording("class-empty", start_window_s=5).id
    done = wait_for(lambda: finished([job_id]), timeout_s=30)[0]
    assert done.status is Status.EXPIRED and done.error is not None
    assert done.error["type"] == "expired" and "never went live" in done.error["message"]
    deadline_s = _epoch(done.start_deadline)  # type: ignore[arg-type]
    calls = _starts(sandbox, "class-empty")
    assert len(calls) >= 2 and all(c["status"] == 400 for c in calls)
    assert all(float(c["t"]) <= deadline_s for c in calls)  # type: ignore[arg-type]
    assert _epoch(done.finished_at) - deadline_s < 2  # type: ignore[arg-type]


def test_jobs_reaching_a_worker_after_their_window_expire_with_zero_calls(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a backlog built while no worker ran (an outage) that outlived its 2 s windows
    ids = [tasks.enqueue_recording(f"stale-{i}", start_window_s=2).id for i in range(10)]
    fresh = tasks.enqueue_recording("fresh", start_window_s=600).id
    time.sleep(2.5)
    # When a worker comes back
    start_worker()
    jobs = wait_for(lambda: finished([*ids, fresh]), timeout_s=30)
    # Then every stale job is expired without a call, and the fresh one is recorded
    stale, recorded = jobs[:-1], jobs[-1]
    assert {j.status for j in stale} == {Status.EXPIRED}
    assert all(j.attempts == 0 and "reached a worker" in j.error["message"] for j in stale)  # type: ignore[index]
    assert recorded.status is Status.SUCCEEDED
    assert {c["room_id"] for c in sandbox.calls()} == {"fresh"}
    assert (
        tasks.list_jobs(status="expired", limit=50)
        and len(tasks.list_jobs(status="expired", limit=50)) == 10
    )


def test_beat_fires_a_missed_slot_only_while_its_window_is_open(
    start_worker: StartWorker,
    start_beat: Callable[..., object],
    sandbox: SandboxServer,
    rdb: redis.Redis,
) -> None:
    # Given two schedules whose latest slot passed 30 s ago while no beat ran
    backdated = ScheduleStore(client=rdb, prefix=store().prefix, clock=lambda: time.time() - 210)
    for name, window_s in (("class-open", 600), ("class-closed", 10)):
        backdated.put(validated(name, name, every_s=60, start_window_s=window_s, options={}))
    # When beat and a worker come back
    start_worker()
    start_beat()

    def slot_jobs() -> list[Job] | None:
        jobs = [j for j in tasks.list_jobs(limit=50) if j.schedule]
        return jobs if len(jobs) == 2 and all(j.finished for j in jobs) else None

    jobs = {j.schedule: j for j in wait_for(slot_jobs, timeout_s=30)}
    # Then the open window's slot is recorded once, the closed one's is expired with no call
    assert jobs["class-open"].status is Status.SUCCEEDED
    assert jobs["class-closed"].status is Status.EXPIRED
    assert "fired by its schedule" in jobs["class-closed"].error["message"]  # type: ignore[index]
    assert [c["room_id"] for c in sandbox.calls()] == ["class-open"]
