"""Recurring schedules: validation, and what one firing does.

A schedule names a room, the recording options of ``enqueue_recording``, and either a cron
expression evaluated in an IANA time zone (:class:`tasks.schedules.cron.ZonedCron`) or a fixed
interval ``every_s``. Schedules are stored by :class:`tasks.schedules.store.ScheduleStore` as
celery-redbeat entries, so they change at run time without restarting beat; beat
(``worker.schedule``) fires each due one with :func:`fire_due`, which makes it an ordinary job.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from tasks.errors import ValidationError
from tasks.job import Job, utc_iso
from tasks.request import RecordingRequest
from tasks.schedules.cron import FireTimes, parse_cron, parse_every, zone
from tasks.schedules.store import Schedule, ScheduleStore

logger = logging.getLogger(__name__)

RECORDING_OPTIONS = (
    "template_url",
    "transcription",
    "summary",
    "config",
    "webhook_url",
    "aws_dir_path",
)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")


def fire_key(name: str, fire_at: datetime) -> str:
    """The idempotency key of one firing: the same scheduled time gives the same job."""
    return f"schedule:{name}:{utc_iso(fire_at.timestamp())}"


def validated(
    name: object,
    room_id: object,
    *,
    cron: object = None,
    every_s: object = None,
    timezone: object = "UTC",
    enabled: object = True,
    options: Mapping[str, Any],
) -> Schedule:
    """A checked :class:`Schedule` (``next_run_at`` not yet known); raises ValidationError."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValidationError(
            "name", "must be 1-100 letters, digits or . _ : @ -, starting with a letter or digit"
        )
    unknown = sorted(set(options) - set(RECORDING_OPTIONS))
    if unknown:
        raise ValidationError(
            unknown[0], "is not a recording option", allowed=list(RECORDING_OPTIONS)
        )
    given = {k: v for k, v in options.items() if v is not None}
    RecordingRequest.build(room_id, **given)  # type: ignore[arg-type]
    if (cron is None) == (every_s is None):
        raise ValidationError("cron", "give exactly one of cron and every_s")
    zone(timezone)
    if cron is not None:
        parse_cron(cron, timezone)
    else:
        parse_every(every_s)
    if not isinstance(enabled, bool):
        raise ValidationError("enabled", "must be true or false")
    if isinstance(every_s, float) and every_s.is_integer():
        every_s = int(every_s)
    return Schedule(
        name=name,
        room_id=room_id,  # type: ignore[arg-type]
        cron=cron.strip() if isinstance(cron, str) else None,
        every_s=every_s,  # type: ignore[arg-type]
        timezone=timezone,  # type: ignore[arg-type]
        enabled=enabled,
        options=given,
        next_run_at=None,
    )


def fire_due(
    store: ScheduleStore,
    *,
    name: str,
    kwargs: Mapping[str, Any],
    spec: Mapping[str, Any],
    times: FireTimes,
    last_run_at: datetime | None,
    now: datetime,
    enqueue: Callable[..., Job],
) -> Job | None:
    """Fire the latest due time of one schedule: enqueue its job, then record the firing.

    The job's idempotency key is the scheduled time, and the firing is recorded only after the
    job is stored: a crash, a second beat or a failed record between the two fires the same
    time again, which gives back the same job. When Redis refuses the job (BrokerUnavailable,
    raised) nothing is recorded, so the next tick tries the same time. Options that no longer
    validate are logged and the time skipped: retrying could not help. An entry that has no
    ``last_run_at`` (written by something other than :class:`ScheduleStore`) is anchored at
    ``now`` without firing.
    """
    if last_run_at is None:
        store.mark_fired(name, spec["revision"], now, times.next_after(now))
        return None
    fire_at = times.latest_due(last_run_at, now)
    if fire_at is None:
        return None
    job: Job | None = None
    try:
        job = enqueue(**kwargs, idempotency_key=fire_key(name, fire_at), schedule=name)
    except ValidationError as exc:
        logger.error(
            "schedule %s: firing at %s skipped: %s", name, utc_iso(fire_at.timestamp()), exc
        )
    if not store.mark_fired(name, spec["revision"], fire_at, times.next_after(fire_at)):
        logger.info("schedule %s changed or was removed while firing", name)
    if job is not None:
        logger.info(
            "schedule %s fired for %s: job %s",
            name,
            utc_iso(fire_at.timestamp()),
            job.id,
            extra={"job_id": job.id, "room_id": job.room_id, "schedule": name},
        )
    return job
