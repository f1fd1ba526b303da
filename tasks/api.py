"""The public Python API of jobs: enqueue, look up, cancel and replay them.

Needs only ``REDIS_URL``: nothing here touches the VideoSDK secret. With ``tasks.cli``, the one
module of ``tasks`` that imports the Celery app (``worker``): it publishes through it. Schedules'
API is ``tasks.schedules.api``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tasks import runtime
from tasks.delivery.producer import Producer
from tasks.errors import ValidationError
from tasks.job import Job, Status
from tasks.request import UNENCODABLE, is_utf8
from worker.publish import publish_job

__all__ = ["cancel_job", "enqueue_recording", "get_job", "list_jobs", "producer", "retry_job"]

LIST_LIMIT_MAX = 1000


def producer() -> Producer:
    """The process's producer: the job store, publishing through the Celery app."""
    return Producer(
        store=runtime.store(), publish=publish_job, start_window_s=runtime.config().start_window_s
    )


def enqueue_recording(
    room_id: str,
    *,
    template_url: str | None = None,
    transcription: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    webhook_url: str | None = None,
    aws_dir_path: str | None = None,
    idempotency_key: str | None = None,
    run_at: datetime | None = None,
    start_window_s: float | None = None,
    schedule: str | None = None,
) -> Job:
    """Enqueue a "start recording" job and return its record at once.

    Raises ValidationError (nothing stored) for bad input, BrokerUnavailable (nothing stored)
    when Redis cannot take the job. With ``idempotency_key``, a live job with the same key is
    returned instead and nothing is enqueued. With ``run_at`` in the future the job is
    ``scheduled`` until then. Start attempts are made until ``start_window_s`` (seconds;
    default ``RECORDER_START_WINDOW``, 600) after the due time (``run_at``, else now); a job not
    started by then ends ``expired`` (see :mod:`tasks.window`).
    """
    return producer().enqueue(
        room_id,
        template_url=template_url,
        transcription=transcription,
        summary=summary,
        config=config,
        webhook_url=webhook_url,
        aws_dir_path=aws_dir_path,
        idempotency_key=idempotency_key,
        run_at=run_at,
        start_window_s=start_window_s,
        schedule=schedule,
    )


def get_job(job_id: str) -> Job | None:
    """The job's record, or None if no such job exists (or it has expired)."""
    return runtime.store().get(job_id)


def list_jobs(
    room_id: str | None = None, status: str | Status | None = None, limit: int = 50
) -> list[Job]:
    """Jobs, newest first, optionally of one room and/or one status."""
    wanted = _check_status(status)
    if room_id is not None and (not isinstance(room_id, str) or not is_utf8(room_id)):
        raise ValidationError("room_id", UNENCODABLE)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValidationError("limit", f"must be an integer from 1 to {LIST_LIMIT_MAX}")
    return runtime.store().list(room_id=room_id, status=wanted, limit=limit)


def cancel_job(job_id: str) -> Job:
    """Cancel a job that has not started; a started or finished job is returned unchanged.

    Raises JobNotFound (a LookupError) for an unknown id.
    """
    return producer().cancel(job_id)


def retry_job(job_id: str) -> Job:
    """Put a failed job back on the queue: same id, attempts kept, a fresh attempt budget.

    Raises JobNotFound for an unknown id; a job that has not failed is returned unchanged.
    """
    return producer().retry(job_id)


def _check_status(status: str | Status | None) -> Status | None:
    if status is None:
        return None
    try:
        return Status(status)
    except ValueError:
        raise ValidationError(
            "status", "unknown status", allowed=[s.value for s in Status]
        ) from None
