"""The Celery task ``tasks.start_recording``: thin, it runs one delivery and reports its outcome.

Celery's state of the task (what Flower shows) follows the job's:

- the job ``succeeded``: the task returns, SUCCESS;
- the job ended ``failed`` (or ``cancelled``, ``expired``, or its record is gone): the task raises a
  :class:`JobFailed` subclass named for the job's ``error.type``, FAILURE, with the job's error
  message (e.g. ``RoomNotFound('HTTP 404: room not found')``). The exception is expected
  (``throws``), so Celery logs it as one line, without a traceback;
- the job waits in Redis for its next attempt, or another delivery has it: the task raises
  Celery's :class:`~celery.exceptions.Retry` without sending a new message (the job's own due
  time brings it back), RETRY;
- Redis did not take the claim, even after half a minute of retries (an outage, a full
  memory): nothing is stored, so the task raises Celery's ``Reject(requeue=True)`` and the
  message goes back to the queue instead of being acked.

Acks are late in every case, and Celery acks a failed or retried task's message rather than
redelivering it: the job record already says what happens next.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import Reject, Retry

from tasks import runtime
from tasks.delivery.runner import Delivered
from tasks.errors import ClaimFailed
from tasks.job import Job, Status
from worker.app import app
from worker.publish import TASK_NAME, send_notification


class JobFailed(Exception):
    """Raised by the task when its job ended without a recording; subclasses name the type."""


#: error types with an exception class of their own (others raise :class:`JobFailed`)
ERROR_TYPES = (
    "already_recording",
    "attempts_exhausted",
    "cancelled",
    "connection_error",
    "expired",
    "forbidden",
    "http_error",
    "internal_error",
    "invalid_object",
    "invalid_params",
    "missing",
    "not_live",
    "not_recording",
    "rate_limit_cooldown",
    "rate_limit_wait",
    "rate_limited",
    "recording_limit",
    "room_not_found",
    "server_error",
    "session_processing",
    "timeout",
    "unauthorized",
    "worker_lost",
)


def _class_name(error_type: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^a-zA-Z0-9]+", error_type) if part)


#: classes at module level, so a prefork child's exception unpickles in the parent
EXCEPTIONS: dict[str, type[JobFailed]] = {}
for _type in ERROR_TYPES:
    _cls = type(_class_name(_type), (JobFailed,), {"__module__": __name__, "__doc__": _type})
    EXCEPTIONS[_type] = globals()[_cls.__name__] = _cls


def job_exception(job: Job | None, default_type: str = "missing") -> JobFailed:
    """The exception that stands for the job's error in Celery and Flower."""
    error = (job.error if job is not None else None) or {}
    error_type = str(error.get("type") or default_type)
    message = str(error.get("message") or error_type.replace("_", " "))
    return EXCEPTIONS.get(error_type, JobFailed)(message)


def _retry(job: Job, why: str) -> Retry:
    when: datetime | None = None
    if job.next_attempt_at:
        when = datetime.fromisoformat(job.next_attempt_at.replace("Z", "+00:00")).astimezone(UTC)
    return Retry(why, exc=job_exception(job, "deferred") if job.error else None, when=when)


@app.task(
    bind=True,
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    throws=(JobFailed,),
)
def start_recording(self: Any, job_id: str, room_id: str | None = None) -> str:
    """Run one delivery of job ``job_id``; ``room_id`` rides along only so Flower shows it.

    Returns ``"succeeded"``; raises :class:`JobFailed` or Celery's ``Retry`` (module docstring).
    """
    try:
        delivered: Delivered = runtime.runner(send_notification).run(job_id)
    except ClaimFailed as exc:
        # nothing of this delivery is stored: the message goes back to the queue, never acked
        raise Reject(str(exc), requeue=True) from exc
    job = delivered.job
    if job is None:
        raise EXCEPTIONS["missing"](f"no record of job {job_id} (expired or never stored)")
    if job.status is Status.SUCCEEDED:
        return "succeeded"
    if job.status is Status.CANCELLED:
        raise EXCEPTIONS["cancelled"]("the job was cancelled before it started")
    if job.status.terminal:
        raise job_exception(job, "failed")
    raise _retry(job, delivered.word)
