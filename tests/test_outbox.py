"""The job's message is written by the store's script: kombu must still read it as its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from kombu import Connection

import tasks
from tasks import outbox, runtime
from tasks.recording import TASK_NAME
from worker.config import QUEUE


def _take_message(redis_url: str) -> tuple[dict[str, object], list[object]]:
    """One message off the recorder queue, through kombu, as a worker would take it."""
    with Connection(redis_url) as conn:
        queue = conn.SimpleQueue(QUEUE)
        message = queue.get(timeout=2)
        message.ack()
        queue.close()
    return message.headers, message.decode()


def test_an_enqueued_job_has_exactly_one_message_that_kombu_reads_back(
    recorder_env: dict[str, str], rdb: redis.Redis, redis_url: str
) -> None:
    job = tasks.enqueue_recording("room-1", idempotency_key="once")
    assert tasks.enqueue_recording("room-1", idempotency_key="once").id == job.id
    assert rdb.llen(QUEUE) == 1
    headers, body = _take_message(redis_url)
    assert headers["id"] == job.id and headers["task"] == TASK_NAME
    assert body[0] == [job.id] and body[1] == {"room_id": "room-1"}
    assert headers["argsrepr"] == repr([job.id])


def test_the_task_sent_event_goes_out_with_the_job(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    commands = outbox.message_commands("job-1", "room-1")
    assert [name for name, _, _ in commands] == ["lpush", "publish"]
    assert commands[0][1] == QUEUE and commands[1][1].endswith("celeryev/task.sent")
    assert rdb.llen(QUEUE) == 0  # building it published nothing


def test_a_scheduled_job_has_no_message_until_it_is_due(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    tasks.enqueue_recording("room-1", run_at=datetime.now(UTC) + timedelta(hours=1))
    assert rdb.llen(QUEUE) == 0


def test_a_message_that_cannot_be_built_stores_nothing(
    recorder_env: dict[str, str], rdb: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(job_id: str, room_id: str) -> list[outbox.Command]:
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(outbox, "message_commands", broken)
    with pytest.raises(tasks.BrokerUnavailable):
        tasks.enqueue_recording("room-1")
    assert runtime.redis_conn().keys("recorder:*") == []
