"""A job's Celery message as the Redis commands that publish it, for the job store to run.

``enqueue_recording`` stores the record and queues its message in one atomic Lua script
(:data:`tasks.store_scripts.CREATE_LUA`): the job exists with its message or not at all, so a
producer that dies between two writes leaves nothing for the sweeper to find, and an enqueue is
one Redis round trip instead of three (record, message, Flower's ``task-sent`` event).

The message itself is Celery's and kombu's own: ``app.send_task`` builds it exactly as always
(protocol headers, body, delivery tag, the ``task-sent`` event when enabled), on a producer
whose publishes go to kombu's publish-batch hook (kombu >= 5.7: the Redis channel hands each
final command to the batch's ``add``). We keep those commands instead of running them.
"""

from __future__ import annotations

from typing import Any

#: what kombu's Redis channel runs to publish: a queue push, a fanout (events), a queue expiry
ALLOWED = frozenset({"lpush", "publish", "pexpire"})

Command = tuple[str, str, str]


class _Collector:
    """Stands in for kombu's Redis publish batch on one producer: collects, runs nothing."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        return channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        if name not in ALLOWED or len(args) != 2:
            raise RuntimeError(f"kombu asked to publish with an unexpected command: {name}")
        self.commands.append((name, str(args[0]), str(args[1])))


def send_task_options(job_id: str, room_id: str) -> dict[str, Any]:
    """``app.send_task`` arguments of a job's message: the one place its shape is written.

    The task id is the job id; ``room_id`` rides along only so Flower shows it. The reprs are
    the ones Celery would build, without its slower safe-repr.
    """
    from tasks.recording import TASK_NAME

    args, kwargs = [job_id], {"room_id": room_id}
    return {
        "name": TASK_NAME,
        "args": args,
        "kwargs": kwargs,
        "task_id": job_id,
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
    }


def message_commands(job_id: str, room_id: str) -> list[Command]:
    """The Redis commands that would publish the job's Celery message (task id = job id)."""
    from worker.app import app

    collector = _Collector()
    with app.producer_or_acquire() as producer:
        local = producer._batch_local  # kombu's per-thread batch slot; the producer is ours
        local.current = collector
        try:
            app.send_task(
                **send_task_options(job_id, room_id),
                producer=producer,
                # the queue is declared by the workers; a push needs no declaration first
                declare=[],
            )
        finally:
            del local.current
    if not any(name == "lpush" for name, _, _ in collector.commands):
        raise RuntimeError("kombu built no queue push for the job's message")
    return collector.commands
