"""Telling the application: a job's ``notify_task`` gets the job on every change.

``enqueue_recording(..., notify_task="myapp.on_recording")`` (and ``stop_recording``) makes the
project send that Celery task, on ``RECORDER_NOTIFY_QUEUE`` (``celery``, Celery's default queue),
one positional argument: the job's ``to_dict()`` (the contract's fields plus ``kind``,
``recording`` and the rest) each time its ``status`` or its ``recording.status`` changes. So the
application stores the file URL when ``recording.status`` becomes ``stopped`` without polling.
Delivery is at least once and in order per job as far as Celery keeps order; a notification
that cannot be sent (Redis down) is logged and dropped, never failing the job.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from tasks.errors import ValidationError
from tasks.job import Job

logger = logging.getLogger(__name__)

#: a Celery task name: dotted Python-like words (``myapp.tasks.on_recording``)
TASK_NAME = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")
TASK_NAME_MAX_CHARS = 200
Send = Callable[[str, dict[str, Any]], None]


def check_notify_task(name: object) -> str | None:
    """``notify_task`` as given (None stays None); raises ValidationError naming it."""
    if name is None:
        return None
    if not isinstance(name, str) or len(name) > TASK_NAME_MAX_CHARS or not TASK_NAME.match(name):
        raise ValidationError(
            "notify_task", "must be a Celery task name such as myapp.on_recording"
        )
    return name


def changed(before: Job | None, after: Job | None) -> bool:
    """Whether ``after`` differs from ``before`` in ``status`` or ``recording.status``."""
    if after is None:
        return False
    if before is None:
        return True
    was = (before.recording or {}).get("status")
    now = (after.recording or {}).get("status")
    return before.status is not after.status or was != now


class Notifier:
    """Sends a job to its ``notify_task`` with ``send`` (Celery's, ``worker.publish``)."""

    def __init__(self, send: Send | None = None) -> None:
        self.send = send

    def __call__(self, job: Job) -> None:
        if job.notify_task is None or self.send is None:
            return
        try:
            self.send(job.notify_task, job.to_dict())
        except (ConnectionError, OSError) as exc:
            logger.warning(
                "job %s: %s not told of %s: %s",
                job.id,
                job.notify_task,
                job.status.value,
                exc,
                extra={"job_id": job.id, "room_id": job.room_id},
            )
