"""A dispatcher's batch of due jobs (``worker.publish.due_job_batch``): its messages in one
pipeline and its ``task-sent`` events in one message when the batch closes, a clear error when
the messages could not be written, and never an error for the events."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
import redis

from tasks.settings import settings
from tests.conftest import RedisServer
from worker import publish
from worker.app import app
from worker.events import SentEventBuffer
from worker.publish import due_job_batch


def event_messages(pubsub: Any) -> list[list[dict[str, Any]]]:
    """The event messages published so far, each as its list of events."""
    found = []
    while (message := pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)) is not None:
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        found.append(body if isinstance(body, list) else [body])
    return found


@pytest.fixture
def events_tap(rdb: redis.Redis) -> Any:
    db = rdb.connection_pool.connection_kwargs.get("db", 0)
    pubsub = rdb.pubsub()
    pubsub.psubscribe(f"/{db}.celeryev/*")
    event_messages(pubsub)  # the subscription's own reply
    yield pubsub
    pubsub.close()


def test_a_batch_sends_its_messages_and_then_its_events_when_it_closes(
    recorder_env: dict[str, str], rdb: redis.Redis, events_tap: Any
) -> None:
    ids = [f"batch-{i}" for i in range(250)]
    with due_job_batch() as publish:
        for job_id in ids:
            publish(job_id, "room-1")
        # held in kombu's pipeline: neither a message nor an event has left yet
        assert rdb.llen(settings().queue) == 0
        assert event_messages(events_tap) == []
    queued = [json.loads(m)["headers"]["id"] for m in rdb.lrange(settings().queue, 0, -1)]
    assert queued[::-1] == ids  # LPUSHed in order, consumed from the other end
    (events,) = event_messages(events_tap)
    assert [e["uuid"] for e in events] == ids
    assert {e["type"] for e in events} == {"task-sent"}
    assert {e["hostname"] for e in events} == {events[0]["hostname"]}
    assert events[0]["hostname"].startswith("producer@")


def test_a_batch_whose_messages_cannot_be_written_raises_connection_error(
    on_private_redis: RedisServer,
) -> None:
    expected = pytest.raises(ConnectionError, match="a batch of due jobs was not published")
    with expected, due_job_batch() as publish:
        publish("batch-y", "room-1")
        on_private_redis.stop()  # Redis gone before the batch is written


def test_a_failed_publish_inside_a_batch_is_raised_as_it_is(
    recorder_env: dict[str, str], rdb: redis.Redis
) -> None:
    refused = ConnectionError("the job's message was not published: refused")
    with pytest.raises(ConnectionError) as raised, due_job_batch() as publish:
        publish("batch-z", "room-1")
        raise refused
    assert raised.value is refused
    assert rdb.llen(settings().queue) == 0  # the batch was dropped with it


def test_events_that_cannot_be_sent_are_logged_and_never_fail_the_batch(
    recorder_env: dict[str, str],
    rdb: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused(self: SentEventBuffer, *args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(SentEventBuffer, "flush", refused)  # our class: Redis gone at the end
    with caplog.at_level(logging.WARNING, logger="worker.publish"), due_job_batch() as publish:
        publish("batch-x", "room-1")
    assert rdb.llen(settings().queue) == 1
    assert "task-sent events of due jobs not sent" in caplog.text


def test_the_queue_depth_gives_up_with_connection_error_when_the_broker_pool_is_taken(
    recorder_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "POOL_ACQUIRE_TIMEOUT_S", 0.2)
    assert publish.queue_depth() == 0
    taken = [app.pool.acquire(block=False) for _ in range(app.pool.limit)]
    try:
        with pytest.raises(ConnectionError, match=r"no broker connection free within 0\.2 s"):
            publish.queue_depth()
    finally:
        for connection in taken:
            connection.release()
    assert publish.queue_depth() == 0
