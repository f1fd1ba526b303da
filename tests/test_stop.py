"""Stop jobs, max_duration_s, idempotency conflicts, notifications: real Runner, Redis, sandbox."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tasks.delivery.producer import Producer
from tasks.errors import IdempotencyConflict, ValidationError
from tasks.job import Job, Kind, Status
from tasks.sandbox.server import SandboxServer
from tasks.store.jobs import JobStore
from tests.conftest import wait_for
from tests.test_runner import MakeRunner, job, make_runner, store

__all__ = ["make_runner", "store"]  # fixtures shared with test_runner


@pytest.fixture
def producer(store: JobStore) -> Producer:
    return Producer(store=store, publish=lambda job_id, room: None)


def ends(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return [c for c in sandbox.calls() if c["path"].endswith("/end")]


def test_a_stop_job_ends_the_rooms_recording(
    make_runner: MakeRunner, producer: Producer, sandbox: SandboxServer, store: JobStore
) -> None:
    runner = make_runner()
    start = producer.enqueue("room-1")
    assert runner.run(start.id).word == "succeeded"
    stop = producer.stop("room-1")
    assert stop.kind is Kind.STOP and stop.request == {"roomId": "room-1"}
    assert runner.run(stop.id).word == "succeeded"
    assert len(ends(sandbox)) == 1 and "room-1" not in sandbox.recording_rooms()
    assert job(store, stop.id).to_dict()["kind"] == "stop"


def test_a_stop_of_a_room_not_recording_fails_as_not_recording(
    make_runner: MakeRunner, producer: Producer, store: JobStore
) -> None:
    stop = producer.stop("room-idle")
    assert make_runner().run(stop.id).word == "failed"
    assert job(store, stop.id).error["type"] == "not_recording"  # type: ignore[index]


def test_a_stop_refused_after_an_ambiguous_attempt_succeeds(
    make_runner: MakeRunner, producer: Producer, sandbox: SandboxServer, store: JobStore
) -> None:
    # Given an earlier attempt of the stop whose outcome nobody saw (its worker died mid-call),
    # and which did stop the recording
    runner = make_runner()
    assert runner.run(producer.enqueue("room-1").id).word == "succeeded"
    stop = producer.stop("room-1")
    assert store.update(stop.id, {"maybe_started": True, "attempts": 1}).applied
    sandbox.end_session("room-1")
    # When the retry is refused "Recording not started for this room"
    assert runner.run(stop.id).word == "succeeded"
    # Then the stop counts as done: the earlier attempt may have stopped it
    done = job(store, stop.id)
    assert done.status is Status.SUCCEEDED and done.http_status == 400


def test_max_duration_schedules_the_stop_when_the_start_succeeds(
    make_runner: MakeRunner, producer: Producer, store: JobStore
) -> None:
    start = producer.enqueue("room-1", max_duration_s=45 * 60)
    t0 = time.time()
    assert make_runner().run(start.id).word == "succeeded"
    started = job(store, start.id)
    assert started.stop_job_id is not None
    stop = job(store, started.stop_job_id)
    assert stop.kind is Kind.STOP and stop.status is Status.SCHEDULED
    assert stop.run_at is not None
    due_s = store.client.zscore(store.key("due"), stop.id) / 1000  # type: ignore[operator]
    assert 45 * 60 - 1 <= due_s - t0 <= 45 * 60 + 5


@pytest.mark.parametrize("bad", [0, -1, "1h", True])
def test_a_bad_max_duration_is_refused_before_anything_is_stored(
    producer: Producer, rdb: redis.Redis, bad: Any
) -> None:
    with pytest.raises(ValidationError, match="max_duration_s"):
        producer.enqueue("room-1", max_duration_s=bad)
    assert rdb.keys("t:*") == []


def test_an_idempotency_key_reused_for_another_room_or_body_is_a_conflict(
    producer: Producer, store: JobStore
) -> None:
    first = producer.enqueue("room-1", idempotency_key="k1")
    assert producer.enqueue("room-1", idempotency_key="k1").id == first.id
    for other in (
        lambda: producer.enqueue("room-2", idempotency_key="k1"),
        lambda: producer.enqueue("room-1", idempotency_key="k1", config={"quality": "high"}),
        lambda: producer.stop("room-1", idempotency_key="k1"),
    ):
        with pytest.raises(IdempotencyConflict) as caught:
            other()
        assert caught.value.field == "idempotency_key" and caught.value.job_id == first.id
    assert len(store.list(limit=10)) == 1


def test_the_notify_task_is_told_of_every_status_change(
    make_runner: MakeRunner, producer: Producer, sandbox: SandboxServer
) -> None:
    told: list[Job] = []
    sandbox.script({"status": 503})
    runner = make_runner(notify=told.append)
    start = producer.enqueue("room-1", notify_task="myapp.on_recording")
    assert runner.run(start.id).word == "succeeded"
    assert [j.status.value for j in told] == ["running", "retrying", "running", "succeeded"]
    with pytest.raises(ValidationError, match="notify_task"):
        producer.enqueue("room-2", notify_task="not a task name")


def test_a_stop_after_the_recording_ended_by_itself_succeeds_not_fails(
    make_runner: MakeRunner, producer: Producer, sandbox: SandboxServer, store: JobStore
) -> None:
    # Given a recording the webhooks said stopped (the host ended the meeting) before its
    # max_duration_s stop came due
    runner = make_runner()
    assert runner.run(producer.enqueue("room-1").id).word == "succeeded"
    sandbox.end_session("room-1")
    store.apply_event("room-1", "recording-started", session_id="s1")
    store.apply_event("room-1", "recording-stopped", session_id="s1", file_url="https://f/1.mp4")
    # When the stop is refused "Recording not started for this room"
    stop = producer.stop("room-1")
    assert runner.run(stop.id).word == "succeeded"
    # Then it is done, not a false failure; without that knowledge it would be not_recording
    assert job(store, stop.id).http_status == 400
    other = producer.stop("room-never")
    assert runner.run(other.id).word == "failed"


def test_the_worker_adds_its_webhook_url_to_a_start_stored_without_one(
    make_runner: MakeRunner, producer: Producer, sandbox: SandboxServer, store: JobStore
) -> None:
    hook = "http://127.0.0.1:9/webhooks/videosdk"  # nobody listens: the sandbox logs the try
    start = producer.enqueue("room-hooked")
    assert "webhookUrl" not in start.request
    assert make_runner(webhook_url=hook).run(start.id).word == "succeeded"
    sent = wait_for(lambda: [w for w in sandbox.webhooks() if w["url"] == hook], timeout_s=10)
    assert {w["meetingId"] for w in sent} == {"room-hooked"}
