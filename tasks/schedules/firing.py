"""Recurring schedules: validation, and what one firing does.

A schedule names a room, the recording options of ``enqueue_recording``, and either a cron
expression evaluated in an IANA time zone (:class:`tasks.schedules.cron.ZonedCron`) or a fixed
interval ``every_s``. Schedules are stored by :class:`tasks.schedules.store.ScheduleStore` in
Redis, so they change at run time without restarting beat; beat (``worker.schedule``) fires the
due ones with :func:`fire_due`, each as an ordinary job.

Firing is enqueue-then-record: the job's idempotency key is the *scheduled* time, and the firing
is recorded only after the job is stored, so a crash, a second beat or a failed record between
the two fires the same time again and gets the same job back. Celery's ``Scheduler.apply_async``
does it the other way round (advance, then send), which loses the firing on a crash in between.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks.delivery.producer import check_max_duration, publish_stored
from tasks.errors import BrokerUnavailable, ValidationError
from tasks.job import Job, utc_iso, whole
from tasks.notify import check_notify_task
from tasks.request import RECORDING_OPTIONS, RecordingRequest
from tasks.schedules.cron import parse_cron, parse_every, zone
from tasks.schedules.store import Entry, Mark, Schedule, ScheduleStore
from tasks.window import check_start_window

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")
#: schedules loaded, fired and recorded together
FIRE_CHUNK = 200

Enqueue = Callable[..., Job]


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
    start_window_s: object = None,
    max_duration_s: object = None,
    notify_task: object = None,
    options: Mapping[str, Any],
) -> Schedule:
    """A checked :class:`Schedule` (``next_run_at`` not yet known); raises ValidationError.

    Its ``options`` are what every firing passes to ``enqueue_recording``: the recording
    options given, and ``start_window_s``, ``max_duration_s`` and ``notify_task`` when given.
    """
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
    window_s = check_start_window(start_window_s)
    if window_s is not None:
        given["start_window_s"] = whole(window_s)
    stop_after_s = check_max_duration(max_duration_s)
    if stop_after_s is not None:
        given["max_duration_s"] = whole(stop_after_s)
    if check_notify_task(notify_task) is not None:
        given["notify_task"] = notify_task
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


@dataclass(frozen=True, slots=True)
class Firing:
    """What one due schedule does now: fire ``fire_at`` (None: nothing), then wait for
    ``next_at`` (None: never again)."""

    entry: Entry
    fire_at: datetime | None
    next_at: datetime | None

    def mark(self) -> Mark:
        fired = self.fire_at or self.entry.last_run_at
        return Mark(self.entry.name, self.entry.revision, fired, self.next_at)


@dataclass(frozen=True, slots=True)
class Fired:
    """What :func:`fire_due` did: times fired (a job stored or found already there, or the
    time skipped because the options no longer validate), and firings left to the next tick
    because enqueueing failed."""

    fired: int = 0
    failed: int = 0


def plan(entry: Entry, now: datetime) -> Firing:
    """The firing of ``entry`` at ``now``: its latest due time (the latest missed one after
    downtime, only once), and the time after it."""
    fire_at, next_at = entry.times().due(entry.last_run_at, now, first=entry.next_at)
    return Firing(entry, fire_at, next_at)


def fire(firing: Firing, enqueue: Enqueue) -> bool:
    """Enqueue the firing's job; False when it must be tried again (Redis refused it).

    Options that no longer validate are logged and the time skipped (True): retrying could not
    help. The scheduled time is also the job's ``due_at``: its start window opens then, so a
    time fired long after it (beat was down) leaves an ``expired`` job, never a late start.
    """
    if firing.fire_at is None:
        return True
    name, at = firing.entry.name, firing.fire_at
    try:
        job = enqueue(
            **firing.entry.kwargs(), idempotency_key=fire_key(name, at), schedule=name, due_at=at
        )
    except ValidationError as exc:
        logger.error("schedule %s: firing at %s skipped: %s", name, _iso(at), exc)
        return True
    except BrokerUnavailable as exc:
        logger.warning("schedule %s: firing at %s not yet stored: %s", name, _iso(at), exc)
        return False
    except Exception:  # one schedule's surprise must not stop the others
        logger.exception("schedule %s: firing at %s failed", name, _iso(at))
        return False
    logger.info(
        "schedule %s fired for %s: job %s",
        name,
        _iso(at),
        job.id,
        extra={"job_id": job.id, "room_id": job.room_id, "schedule": name},
    )
    return True


def fire_due(
    store: ScheduleStore,
    *,
    now: datetime,
    enqueue: Enqueue,
    heartbeat: Callable[[], None] = lambda: None,
    chunk: int = FIRE_CHUNK,
) -> Fired:
    """Fire every schedule due at ``now``, ``chunk`` at a time, and record each firing.

    A firing whose job Redis refused is not recorded, so the next tick tries the same time
    again; one whose schedule was replaced or removed meanwhile leaves the new state alone.
    ``heartbeat`` runs before each chunk is read and before each firing (beat keeps its lock
    there, however slow the machine).
    """
    names = store.due_names(now)
    fired = failed = 0
    for start in range(0, len(names), chunk):
        heartbeat()
        some = names[start : start + chunk]
        entries = store.entries(some)
        firings = [plan(entry, now) for entry in entries]
        done = []
        for firing in firings:
            heartbeat()
            done.append(fire(firing, enqueue))
        marks = [f.mark() for f, ok in zip(firings, done, strict=True) if ok]
        for mark, applied in zip(marks, store.mark_fired_many(marks), strict=True):
            if not applied:
                logger.info("schedule %s changed or was removed while firing", mark.name)
        # removed between the two reads, or left behind: the mark drops it from the due set
        gone = set(some) - {entry.name for entry in entries}
        store.mark_fired_many(Mark(name, "", now, None) for name in gone)
        fired += sum(1 for f, ok in zip(firings, done, strict=True) if ok and f.fire_at)
        failed += done.count(False)
    return Fired(fired, failed)


def publish_all(
    pending: Sequence[tuple[str, str]],
    publish: Callable[[str, str], None],
    *,
    heartbeat: Callable[[], None] = lambda: None,
) -> int:
    """Publish the messages of jobs already stored, ``(job_id, room_id)`` each; how many failed.

    Beat stores every due job first and publishes their messages after (see
    ``worker.schedule``). A message that cannot be published is logged and left to the sweeper,
    as the producer leaves it: its job is stored ``queued``, so it is not lost, only later.
    ``heartbeat`` runs before each message.
    """

    def one(item: tuple[str, str]) -> bool:
        try:
            return publish_stored(publish, *item)
        except Exception:  # one message's surprise must not stop the others
            logger.exception("job %s stored, its message not published", item[0])
            return False

    failed = 0
    for item in pending:
        heartbeat()
        failed += not one(item)
    return failed


def _iso(moment: datetime) -> str:
    return utc_iso(moment.timestamp())
