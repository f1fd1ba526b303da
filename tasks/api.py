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
from tasks.store.recordings import EventApplied
from worker.publish import publish_job, send_notification

__all__ = [
    "cancel_job",
    "enqueue_recording",
    "get_job",
    "get_recording",
    "handle_webhook",
    "list_jobs",
    "producer",
    "retry_job",
    "stop_recording",
]

LIST_LIMIT_MAX = 1000


def producer() -> Producer:
    """The process's producer: the job store, publishing through the Celery app."""
    return runtime.producer(publish_job)


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
    max_duration_s: float | None = None,
    notify_task: str | None = None,
    schedule: str | None = None,
) -> Job:
    """Enqueue a "start recording" job and return its record at once.

    Raises ValidationError (nothing stored) for bad input, BrokerUnavailable (nothing stored)
    when Redis cannot take the job. With ``idempotency_key``, a live job with the same key is
    returned instead and nothing is enqueued. With ``run_at`` in the future the job is
    ``scheduled`` until then. Start attempts are made until ``start_window_s`` (seconds;
    default ``RECORDER_START_WINDOW``, 600) after the due time (``run_at``, else now); a job not
    started by then ends ``expired`` (see :mod:`tasks.window`). With ``max_duration_s`` a stop
    job is scheduled that long after the start succeeds (``stop_job_id``). ``webhook_url``
    defaults to ``RECORDER_WEBHOOK_URL``. ``notify_task`` (a Celery task name) is sent the job's
    dict on every change of its status or recording status (:mod:`tasks.notify`). Raises
    IdempotencyConflict (a ValidationError) when the key names a job of another room or body.
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
        max_duration_s=max_duration_s,
        notify_task=notify_task,
        schedule=schedule,
    )


def stop_recording(
    room_id: str,
    *,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    notify_task: str | None = None,
) -> Job:
    """Enqueue a job of kind ``stop``: ``POST {api}/v2/recordings/end`` with ``{"roomId"}``.

    Same validation, claim, retries, global rate limit, records and lookup as a start. A stop
    refused as "not recording" ends ``succeeded`` when an earlier attempt may have stopped it,
    else ``failed`` with ``error.type == "not_recording"``. Raises as ``enqueue_recording``.
    """
    return producer().stop(
        room_id, run_at=run_at, idempotency_key=idempotency_key, notify_task=notify_task
    )


def handle_webhook(raw_body: bytes, signature: str | None) -> EventApplied:
    """Verify and apply one VideoSDK webhook (``tasks.webhooks.receiver``), for mounting the
    receiver in an application's own route.

    ``signature`` is the ``videosdk-signature`` header. Raises InvalidWebhookSignature (a
    ValueError: answer 401, nothing stored), InvalidWebhookBody (400), WebhookTooLarge (413) or
    WebhookKeyUnavailable (503). Any verified event is accepted (answer 2xx), also one for an
    unknown room or type; the result says what it did.
    """
    return runtime.webhook_receiver(send_notification).handle(raw_body, signature)


def get_recording(room_id: str) -> dict[str, Any] | None:
    """What is known of the room's latest recording: the ``recording`` of the start job its
    events apply to (one that succeeded or is running, before a refused duplicate), else the
    state of webhooks that matched no job, else None."""
    store = runtime.store()
    start = store.latest_start(room_id)
    if start is not None and start.recording is not None:
        return start.recording
    return store.orphan_recording(room_id)


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
