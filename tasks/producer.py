"""Producer API: validate, store, publish; and look jobs up, cancel them, replay them.

Needs only ``REDIS_URL``: nothing here touches the VideoSDK secret. The runtime (and so the
settings) is imported when first used, so ``import tasks`` stays cheap and cycle-free.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import redis
from kombu.exceptions import OperationalError

from tasks import outbox
from tasks.errors import BrokerUnavailable, JobNotFound, ValidationError
from tasks.job import CANCELLABLE, Job, Status
from tasks.request import RecordingRequest

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX_CHARS = 200
LIST_LIMIT_MAX = 1000


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
    schedule: str | None = None,
) -> Job:
    """Enqueue a "start recording" job and return its record at once.

    Raises ValidationError (nothing stored) for bad input, BrokerUnavailable (nothing left
    claiming to be queued) when Redis cannot take the job. With ``idempotency_key``, a live job
    with the same key is returned instead and nothing is enqueued. With ``run_at`` in the future
    the job is ``scheduled`` until then.
    """
    from tasks import runtime

    request = RecordingRequest.build(
        room_id,
        template_url=template_url,
        transcription=transcription,
        summary=summary,
        config=config,
        webhook_url=webhook_url,
        aws_dir_path=aws_dir_path,
    )
    _check_key(idempotency_key)
    store = runtime.store()
    run_at_s = _check_run_at(run_at, now_s=store.clock(), ttl_s=store.ttl_s)
    job_id = uuid.uuid4().hex
    try:
        # a job due now is stored together with its message, in one atomic step
        message = [] if run_at_s is not None else outbox.message_commands(job_id, room_id)
        job, created = store.create(
            room_id=room_id,
            request=request.to_body(),
            idempotency_key=idempotency_key,
            run_at_s=run_at_s,
            schedule=schedule,
            job_id=job_id,
            publish=message,
        )
    except (redis.RedisError, OperationalError, OSError) as exc:
        raise BrokerUnavailable(f"Redis did not take the job: {exc}") from exc
    logger.info(
        "job %s %s room=%s",
        job.id,
        job.status.value if created else "exists",
        room_id,
        extra={"job_id": job.id, "room_id": room_id, "status": job.status.value},
    )
    return job


def publish(job_id: str, room_id: str) -> None:
    """Put one delivery of the job on the Celery queue (the task id is the job id)."""
    from worker.app import app

    app.send_task(**outbox.send_task_options(job_id, room_id))


def get_job(job_id: str) -> Job | None:
    """The job's record, or None if no such job exists (or it has expired)."""
    from tasks import runtime

    return runtime.store().get(job_id)


def list_jobs(
    room_id: str | None = None, status: str | Status | None = None, limit: int = 50
) -> list[Job]:
    """Jobs, newest first, optionally of one room and/or one status."""
    from tasks import runtime

    wanted = _check_status(status)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValidationError("limit", f"must be an integer from 1 to {LIST_LIMIT_MAX}")
    return runtime.store().list(room_id=room_id, status=wanted, limit=limit)


def cancel_job(job_id: str) -> Job:
    """Cancel a job that has not started; a started or finished job is returned unchanged.

    Raises JobNotFound (a LookupError) for an unknown id.
    """
    from tasks import runtime

    result = runtime.store().update(
        job_id, {"status": Status.CANCELLED.value}, allowed_from=CANCELLABLE, clear_due=True
    )
    if result.job is None:
        raise JobNotFound(job_id)
    return result.job


def retry_job(job_id: str) -> Job:
    """Put a failed job back on the queue: same id, attempts kept, a fresh attempt budget.

    Raises JobNotFound for an unknown id; a job that has not failed is returned unchanged.
    """
    from tasks import runtime

    store = runtime.store()
    job = store.get(job_id)
    if job is None:
        raise JobNotFound(job_id)
    if job.status is not Status.FAILED:
        return job
    result = store.update(
        job_id,
        {
            "status": Status.QUEUED.value,
            "finished_at": None,
            "error": None,
            "next_attempt_at": None,
            "_base": job.attempts,
        },
        allowed_from={Status.FAILED},
    )
    if not result.applied or result.job is None:
        return result.job or job
    publish(job_id, job.room_id)
    return result.job


def _check_key(key: str | None) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise ValidationError(
            "idempotency_key", f"must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX_CHARS}"
        )


def _check_run_at(run_at: datetime | None, *, now_s: float, ttl_s: int) -> float | None:
    """``run_at`` as epoch seconds, or None when it is absent or not in the future."""
    if run_at is None:
        return None
    if not isinstance(run_at, datetime) or run_at.tzinfo is None:
        raise ValidationError("run_at", "must be a timezone-aware datetime")
    when = run_at.timestamp()
    if when - now_s > ttl_s:
        raise ValidationError("run_at", f"must be within RECORDER_JOB_TTL ({ttl_s}s) from now")
    return when if when > now_s else None


def _check_status(status: str | Status | None) -> Status | None:
    if status is None:
        return None
    try:
        return Status(status)
    except ValueError:
        raise ValidationError(
            "status", "unknown status", allowed=[s.value for s in Status]
        ) from None
