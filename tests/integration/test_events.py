"""Every task event of the worker reaches the event channel Flower reads, in batches."""

from __future__ import annotations

import base64
import json
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

import tasks
from tests.conftest import WorkerProcess, finished, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]
JOBS = 30


class EventTap:
    """Everything published on the Celery event channels of one db, as (messages, events)."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(f"/{db}.celeryev/*")
        self.messages = 0
        self.events: list[dict[str, object]] = []
        #: each message's events, as (type, task id) pairs
        self.batches: list[list[tuple[object, object]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is None:
                continue
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            events = body if isinstance(body, list) else [body]
            self.messages += 1
            self.events.extend(events)
            self.batches.append([(e.get("type"), e.get("uuid")) for e in events])

    def task_events(self, job_ids: set[str]) -> list[str]:
        return [str(e["type"]) for e in self.events if e.get("uuid") in job_ids]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


def test_every_task_event_arrives_and_the_worker_sends_them_in_batches(
    start_worker: StartWorker, redis_url: str
) -> None:
    tap = EventTap(redis_url)
    try:
        worker = start_worker()
        ids = {tasks.enqueue_recording(f"room-{i}").id for i in range(JOBS)}
        wait_for(lambda: finished(sorted(ids)), timeout_s=30)
        assert worker.stop(signal.SIGTERM, timeout_s=30) == 0
        types = wait_for(
            lambda: (t := tap.task_events(ids)) and len(t) >= 4 * JOBS and t, timeout_s=10
        )
        for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
            assert types.count(kind) == JOBS, kind
        # one message per task-sent (the producer's); the worker's 3 x JOBS events travel in
        # batches: on average more than three per message (unbatched: about one per message)
        assert tap.messages - JOBS < JOBS
    finally:
        tap.close()


def test_due_jobs_task_sent_events_leave_the_dispatcher_in_batches(
    start_worker: StartWorker, redis_url: str
) -> None:
    tap = EventTap(redis_url)
    try:
        # Given jobs all due at one instant, which the worker's dispatcher publishes
        due = datetime.now(UTC) + timedelta(seconds=1)
        ids = {tasks.enqueue_recording(f"due-{i}", run_at=due).id for i in range(JOBS)}
        worker = start_worker()
        wait_for(lambda: finished(sorted(ids)), timeout_s=30)
        assert worker.stop(signal.SIGTERM, timeout_s=30) == 0
        # Then each job's task-sent event arrives once, the lot in a message per batch of due
        # jobs (the dispatcher takes them in one or two passes), not one message per job
        sent = wait_for(
            lambda: (t := tap.task_events(ids)) and t.count("task-sent") == JOBS and t,
            timeout_s=10,
        )
        assert sent.count("task-succeeded") == JOBS
        carrying = [b for b in tap.batches if any(k == "task-sent" and u in ids for k, u in b)]
        assert 1 <= len(carrying) <= 3, [len(b) for b in carrying]
    finally:
        tap.close()
