"""The public API of recurring schedules: add, remove, look up (``tasks`` re-exports it)."""

from __future__ import annotations

from typing import Any

import redis

from tasks import runtime
from tasks.errors import BrokerUnavailable
from tasks.schedules.firing import validated
from tasks.schedules.store import Schedule, ScheduleStore


def store() -> ScheduleStore:
    """The process's schedule store, under the project's key prefix (``RECORDER_KEY_PREFIX``)."""
    return ScheduleStore(client=runtime.redis_conn(), prefix=runtime.config().key_prefix)


def add_schedule(
    name: str,
    room_id: str,
    *,
    cron: str | None = None,
    every_s: float | None = None,
    timezone: str = "UTC",
    enabled: bool = True,
    start_window_s: float | None = None,
    max_duration_s: float | None = None,
    notify_task: str | None = None,
    **recording_options: Any,
) -> Schedule:
    """Store a recurring schedule (replacing one of that name) and return it.

    Exactly one of ``cron`` (five fields, evaluated in ``timezone``) and ``every_s``. Each
    firing's job gets ``start_window_s`` (None: ``RECORDER_START_WINDOW``) from its scheduled
    time, ``max_duration_s`` (its stop, once it started) and ``notify_task``. Raises
    ValidationError naming the bad field (nothing stored), BrokerUnavailable when Redis fails.
    """
    schedule = validated(
        name,
        room_id,
        cron=cron,
        every_s=every_s,
        timezone=timezone,
        enabled=enabled,
        start_window_s=start_window_s,
        max_duration_s=max_duration_s,
        notify_task=notify_task,
        options=recording_options,
    )
    try:
        return store().put(schedule)
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"Redis did not take the schedule: {exc}") from exc


def remove_schedule(name: str) -> bool:
    """Remove the schedule; False if there was none of that name."""
    return store().delete(name)


def get_schedule(name: str) -> Schedule | None:
    return store().get(name)


def list_schedules() -> list[Schedule]:
    """Every schedule, by name (three Redis commands, however many there are)."""
    return store().all()
