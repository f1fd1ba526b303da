"""Producer: validate a job, store it, publish its message; cancel and replay jobs.

Works with any ``publish(job_id, room_id)`` (the public API passes Celery's, ``worker.publish``;
beat passes the same), so it is tested without Celery and imports none of it.

A new job due now is stored, then published. A producer that dies in between (or whose publish
fails) leaves a ``queued`` job with no message; the sweeper of every worker's dispatcher finds
it (its message is evidently gone: the queue is empty, or jobs stored after it have been
claimed) and publishes it, within about 25 s of that evidence (``tasks.delivery.dispatcher``).
A second message is harmless: the claim skips a job another delivery holds or has finished.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import redis

from tasks.delivery.dispatcher import Publish
from tasks.errors import BrokerUnavailable, IdempotencyConflict, JobNotFound, ValidationError
from tasks.job import CANCELLABLE, DEFAULT_START_WINDOW_S, Job, Kind, Status, utc_iso, whole
from tasks.notify import check_notify_task
from tasks.request import UNENCODABLE, RecordingRequest, is_utf8
from tasks.store.jobs import JobStore
from tasks.window import check_start_window, too_late_message, window_fields

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX_CHARS = 200


class Producer:
    """Enqueues, cancels and replays jobs in ``store``, publishing with ``publish``."""

    def __init__(
        self,
        *,
        store: JobStore,
        publish: Publish,
        start_window_s: float = DEFAULT_START_WINDOW_S,
        webhook_url: str | None = None,
    ) -> None:
        """``start_window_s``: the window of jobs that give none (``RECORDER_START_WINDOW``);
        ``webhook_url``: the ``webhookUrl`` of starts that give none (``RECORDER_WEBHOOK_URL``)."""
        self.store = store
        self.publish = publish
        self.start_window_s = start_window_s
        self.webhook_url = webhook_url

    def enqueue(
        self,
        room_id: str,
        *,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        schedule: str | None = None,
        start_window_s: float | None = None,
        due_at: datetime | None = None,
        max_duration_s: float | None = None,
        notify_task: str | None = None,
        **options: Any,
    ) -> Job:
        """Store a job (see ``tasks.enqueue_recording``) and publish it if it is due now.

        The start window (:mod:`tasks.window`) opens at ``run_at``, else ``due_at`` (a
        schedule's firing time), else now. A job whose window has already closed is stored
        ``expired`` and never published: a missed schedule slot still leaves its answer.
        Raises ValidationError (nothing stored; IdempotencyConflict when the key names a job of
        another room or body) or BrokerUnavailable (Redis did not take it).
        """
        if options.get("webhook_url") is None and self.webhook_url:
            options["webhook_url"] = self.webhook_url
        request = RecordingRequest.build(room_id, **options)
        _check_key(idempotency_key)
        stop_after_s = check_max_duration(max_duration_s)
        check_notify_task(notify_task)
        window_s = check_start_window(start_window_s) or self.start_window_s
        now_s = self.store.clock()
        run_at_s = _check_run_at(run_at, now_s=now_s, ttl_s=self.store.ttl_s)
        opens_at = run_at if run_at is not None else due_at
        if due_at is not None and not (isinstance(due_at, datetime) and due_at.tzinfo):
            raise ValidationError("due_at", "must be a timezone-aware datetime")
        window = window_fields(opens_at.timestamp() if opens_at else now_s, window_s)
        deadline_s = window["_deadline"] / 1000
        late_s = now_s - deadline_s
        expired = None
        if late_s > 0:
            event = "was fired by its schedule" if schedule is not None else "was enqueued"
            deadline = utc_iso(deadline_s)
            message = too_late_message(window_s, deadline, late_s, event=event)
            expired = {"type": "expired", "message": message}
        try:
            job, created = self.store.create(
                room_id=room_id,
                request=request.to_body(),
                idempotency_key=idempotency_key,
                run_at_s=run_at_s,
                schedule=schedule,
                job_id=uuid.uuid4().hex,
                fields={  # no kind: a record without one is a start (writes.DEFAULTS)
                    **window,
                    "max_duration_s": whole(stop_after_s),
                    "notify_task": notify_task,
                },
                expired=expired,
            )
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis did not take the job: {exc}") from exc
        return self._created(job, created, Kind.START, request.to_body())

    def stop(
        self,
        room_id: str,
        *,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        notify_task: str | None = None,
    ) -> Job:
        """Store a stop job (see ``tasks.stop_recording``) and publish it if it is due now."""
        request = RecordingRequest.build(room_id)
        _check_key(idempotency_key)
        check_notify_task(notify_task)
        run_at_s = _check_run_at(run_at, now_s=self.store.clock(), ttl_s=self.store.ttl_s)
        body = {"roomId": request.to_body()["roomId"]}
        try:
            job, created = self.store.create(
                room_id=room_id,
                request=body,
                idempotency_key=idempotency_key,
                run_at_s=run_at_s,
                job_id=uuid.uuid4().hex,
                fields={"kind": Kind.STOP.value, "notify_task": notify_task},
            )
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis did not take the job: {exc}") from exc
        return self._created(job, created, Kind.STOP, body)

    def _created(self, job: Job, created: bool, kind: Kind, body: dict[str, Any]) -> Job:
        """Publish a new job that is due now; an existing one must be the same request."""
        if not created and (job.kind is not kind or job.request != body):
            raise IdempotencyConflict(job.id)
        if created and job.status is Status.QUEUED:
            self._publish_new(job)
        room_id = job.room_id
        logger.info(
            "job %s %s room=%s",
            job.id,
            job.status.value if created else "exists",
            room_id,
            extra={"job_id": job.id, "room_id": room_id, "status": job.status.value},
        )
        return job

    def _publish_new(self, job: Job) -> None:
        """Publish a new job's message; if that fails, the sweeper publishes it later."""
        publish_stored(self.publish, job.id, job.room_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job that has not started (see ``tasks.cancel_job``); raises JobNotFound."""
        result = self.store.update(
            job_id, {"status": Status.CANCELLED.value}, allowed_from=CANCELLABLE, clear_due=True
        )
        if result.job is None:
            raise JobNotFound(job_id)
        return result.job

    def retry(self, job_id: str) -> Job:
        """Put a failed job back on the queue (see ``tasks.retry_job``); raises JobNotFound."""
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.status is not Status.FAILED:
            return job
        result = self.store.update(
            job_id,
            {
                "status": Status.QUEUED.value,
                "finished_at": None,
                "error": None,
                "next_attempt_at": None,
                "_base": job.attempts,
                # a replay by hand is a new decision: its window opens now
                **window_fields(self.store.clock(), job.start_window_s or self.start_window_s),
            },
            allowed_from={Status.FAILED},
        )
        if not result.applied or result.job is None:
            return result.job or job
        self.publish(job_id, job.room_id)
        return result.job


def _check_key(key: str | None) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key.strip() or len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise ValidationError(
            "idempotency_key", f"must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX_CHARS}"
        )
    if not is_utf8(key):
        raise ValidationError("idempotency_key", UNENCODABLE)


def check_max_duration(value: object) -> float | None:
    """``max_duration_s`` as seconds (None stays None); raises ValidationError naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86400 * 7:
        raise ValidationError("max_duration_s", "must be a number of seconds, more than 0")
    return float(value)


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


def publish_stored(publish: Publish, job_id: str, room_id: str) -> bool:
    """Publish the message of a job already stored; whether it went out. A broker failure is
    logged, not raised: the job is not lost, only later (the sweeper finds a job with no
    message and publishes it)."""
    try:
        publish(job_id, room_id)
    except (redis.RedisError, OSError) as exc:  # OSError: ConnectionError of a publish
        logger.warning(
            "job %s stored, its message not yet published (the sweeper will): %s",
            job_id,
            exc,
            extra={"job_id": job_id, "room_id": room_id},
        )
        return False
    return True
