"""A job's Celery message: its one shape, publishing it, and the queue it waits in.

Messages are built and sent by Celery itself (``app.send_task``, on the app's producer pool, as
``Task.delay`` does). The task id is the job id, so Flower's task page and our job record name
the same thing.

It imports nothing of ``tasks`` (whose public API imports it), so either can be imported first;
a failed publish is a ``ConnectionError``, which the producer and the dispatcher handle.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.entity import Exchange, Queue
from kombu.exceptions import BatchPublishError, ChannelError, LimitExceeded, OperationalError

from worker.app import app
from worker.events import SentEventBuffer

logger = logging.getLogger(__name__)

#: the task's name (fixed by the contract): producers publish by name, never importing the task
TASK_NAME = "tasks.start_recording"
BROKER_ERRORS = (OperationalError, redis.RedisError, OSError)
#: how long :func:`queue_depth` waits for a free connection of the app's broker pool, seconds
POOL_ACQUIRE_TIMEOUT_S = 5.0


def send_task_options(job_id: str, room_id: str) -> dict[str, Any]:
    """``app.send_task`` arguments of a job's message: the one place its shape is written.

    ``room_id`` rides along only so Flower shows it; the worker reads the job from Redis. The
    reprs Flower shows are given as Celery would build them, without its slower safe-repr.
    """
    args, kwargs = [job_id], {"room_id": room_id}
    return {
        "name": TASK_NAME,
        "args": args,
        "kwargs": kwargs,
        "task_id": job_id,
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
    }


def publish_job(job_id: str, room_id: str, **send_options: Any) -> None:
    """Put one delivery of the job on the queue; raises ConnectionError when Redis fails.

    ``send_options`` go to ``app.send_task`` as they are (``producer``, ``event_dispatcher``).
    """
    try:
        app.send_task(**send_task_options(job_id, room_id), **send_options)
    except BROKER_ERRORS as exc:
        raise ConnectionError(f"the job's message was not published: {exc}") from exc


@contextmanager
def due_job_batch() -> Iterator[Callable[[str, str], None]]:
    """Publish a dispatcher's batch of due jobs: ``with due_job_batch() as publish: ...``.

    Every ``publish(job_id, room_id)`` of the batch is :func:`publish_job` on one producer taken
    from the app's pool, inside kombu's ``Producer.batch()`` (kombu 5.7): on Redis the messages
    are held in one pipeline and written in one round trip when the batch closes, where one
    ``LPUSH`` each cost a round trip, and in a busy worker a wait for the GIL after it. So a
    message is out only once the batch has closed without error; a batch that raised may have
    published none, some or all of its jobs. Broker errors, also from closing, are raised as
    ``ConnectionError``; kombu raises ``RuntimeError`` if the producer's channel was replaced
    mid-batch (a reconnect), which the dispatcher treats as any failed batch.
    A transport without batches (or a Redis connection set to retry on timeout, where kombu
    refuses to batch) publishes each message at once instead.

    Their ``task-sent`` events are held until the messages are out and leave then as one
    ``task.multi`` message (Flower reads it as single events; a dispatcher's batch holds at most
    ``tasks.delivery.dispatcher.BATCH`` jobs, 50). Events that cannot be sent then are logged and
    dropped, never raised: the jobs' messages are out, and an error here would make the
    dispatcher publish them again.
    """
    with app.producer_or_acquire() as producer:
        events = SentEventBuffer(
            app=app,
            connection=producer.connection,
            enabled=bool(app.conf.task_send_sent_event),
            buffer_group=["task"],
            buffer_limit=sys.maxsize,  # never flushed inside a publish: only when the batch ends
            buffer_while_offline=False,
        )

        def publish(job_id: str, room_id: str) -> None:
            publish_job(job_id, room_id, producer=producer, event_dispatcher=events)

        try:
            try:
                # kombu's default size, 1,000 Redis commands (one LPUSH a message), holds a
                # dispatcher's 200: each batch is one round trip
                with producer.batch():
                    yield publish
            except ConnectionError:  # a publish_job of the batch
                raise
            except (BatchPublishError, *BROKER_ERRORS) as exc:  # closing: the pipeline's write
                raise ConnectionError(f"a batch of due jobs was not published: {exc}") from exc
            try:
                events.flush()
            except Exception as exc:  # Flower's view only: never fail the batch for it
                logger.warning("task-sent events of due jobs not sent (Flower only): %s", exc)
        finally:
            events.close()


def send_notification(task_name: str, job: dict[str, Any], *, queue: str) -> None:
    """Send the application's ``task_name`` one argument, the job's dict, on ``queue``.

    Raises ConnectionError when Redis fails (the caller logs it: a notification never fails a
    job). No task events: the application's workers report their own task.
    """
    try:
        app.send_task(task_name, args=[job], queue=queue, routing_key=queue)
    except BROKER_ERRORS as exc:
        raise ConnectionError(f"{task_name} was not sent: {exc}") from exc


def queue_depth() -> int:
    """Messages waiting on the queue our workers consume (``RECORDER_QUEUE``), by kombu's
    passive declare; 0 when it does not exist yet.

    On a connection of the app's broker pool (``app.pool``), kept between calls: a dispatcher
    holding back a backlog asks after every batch. Raises ConnectionError when no connection of
    the pool is free within :data:`POOL_ACQUIRE_TIMEOUT_S` (the pool's limit is
    ``broker_pool_limit``), as when Redis fails.
    """
    queue = str(app.conf.task_default_queue)
    try:
        pooled = app.pool.acquire(block=True, timeout=POOL_ACQUIRE_TIMEOUT_S)
    except LimitExceeded as exc:
        raise ConnectionError(
            f"no broker connection free within {POOL_ACQUIRE_TIMEOUT_S:g} s "
            f"(broker_pool_limit {exc})"
        ) from exc
    with pooled as connection:
        try:
            return int(connection.default_channel.queue_declare(queue=queue, passive=True)[1])
        except ChannelError:  # kombu's Redis transport: no list yet means an empty queue
            return 0


def delete_queue(queue: str, *, broker_url: str | None = None) -> None:
    """Delete ``queue`` and its bindings (the demo's own queue, after it ran).

    Declared first, as Celery declares it (exchange and routing key named after the queue), so
    kombu knows the bindings it deletes with it.
    """
    with app.connection_for_write(broker_url) as connection:
        bound = Queue(queue, Exchange(queue), routing_key=queue)(connection.default_channel)
        bound.declare()
        bound.delete()
