"""Schedule store: recurring schedules in Redis, in the project's own keys.

Key schema (``{p}`` is ``RECORDER_KEY_PREFIX``, ``recorder``); schedules live until removed:

==========================  ======  ==========================================================
key                         type    holds
==========================  ======  ==========================================================
``{p}:schedules``           hash    name -> the definition, JSON: ``room_id``, ``options`` (the
                                    recording options of every firing), ``cron`` and
                                    ``timezone`` or ``every_s``, ``enabled``, and a
                                    ``revision`` that changes whenever it is replaced
``{p}:schedules:last``      hash    name -> the last fire time, epoch s: the *scheduled* time,
                                    never the clock at firing (when it was stored, until then)
``{p}:schedules:due``       zset    name by next fire time, epoch s: enabled schedules only
==========================  ======  ==========================================================

Beat (``worker.schedule``) fires what ``due`` says is due and records each firing with
:data:`MARK_FIRED_LUA`; celery-redbeat serves beat for its lock only and none of its keys is
written here. A list of 10,000 schedules is three commands.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import redis

from tasks.job import utc_iso
from tasks.schedules.cron import Every, FireTimes, cached_cron

# KEYS[1] definitions hash, KEYS[2] last-fire hash, KEYS[3] due zset
# ARGV[1] name, ARGV[2] revision the firing was computed from, ARGV[3] fire time (epoch s),
# ARGV[4] next fire time (epoch s; "" for none)
# Records a firing only while the schedule still exists with that revision, so one replaced or
# removed meanwhile keeps its new state (a removed one is not brought back; a name left in the
# due set without a definition is dropped from it). Returns 1 or 0.
MARK_FIRED_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
local ok, def = pcall(cjson.decode, raw)
if not ok or type(def) ~= 'table' or def.revision ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One recurring schedule; ``next_run_at`` is ISO 8601 UTC, None while disabled."""

    name: str
    room_id: str
    cron: str | None
    every_s: float | None
    timezone: str
    enabled: bool
    options: dict[str, Any]
    next_run_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored schedule as beat sees it: its definition, revision and last fire time."""

    schedule: Schedule
    revision: str
    last_run_at: datetime
    #: the stored next fire time (the ``due`` score), None when it has none or is disabled
    next_at: datetime | None

    @property
    def name(self) -> str:
        return self.schedule.name

    def times(self) -> FireTimes:
        return fire_times(self.schedule.cron, self.schedule.timezone, self.schedule.every_s)

    def kwargs(self) -> dict[str, Any]:
        """What every firing passes to ``enqueue_recording``."""
        return {"room_id": self.schedule.room_id, **self.schedule.options}


@dataclass(frozen=True, slots=True)
class Mark:
    """A firing to record: ``fire_at`` becomes the last fire time, ``next_at`` the due time."""

    name: str
    revision: str
    fire_at: datetime
    next_at: datetime | None


def fire_times(cron: str | None, timezone: str, every_s: float | None) -> FireTimes:
    if cron is not None:
        return cached_cron(cron, timezone or "UTC")
    assert every_s is not None
    return Every(every_s)


class ScheduleStore:
    """Schedules in Redis (see the module docstring for the key schema)."""

    def __init__(
        self, *, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.definitions_key = f"{prefix}:schedules"
        self.last_key = f"{prefix}:schedules:last"
        self.due_key = f"{prefix}:schedules:due"
        self.clock = clock
        self._mark_fired = client.register_script(MARK_FIRED_LUA)

    def put(self, schedule: Schedule, *, last_run_at: datetime | None = None) -> Schedule:
        """Store (or replace) ``schedule``; it first fires at the first fire time from now.

        Replacing starts afresh: a schedule re-enabled after a week fires no stale times.
        ``last_run_at`` keeps an earlier fire time instead (a schedule moved from elsewhere).
        """
        now = self._now()
        anchor = last_run_at or now
        definition = {
            "room_id": schedule.room_id,
            "options": schedule.options,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "every_s": schedule.every_s,
            "enabled": schedule.enabled,
            "revision": uuid.uuid4().hex,
        }
        times = fire_times(schedule.cron, schedule.timezone, schedule.every_s)
        following = times.next_after(anchor) if schedule.enabled else None
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.definitions_key, schedule.name, _encode(definition))
        pipe.hset(self.last_key, schedule.name, repr(anchor.timestamp()))
        if following is None:
            pipe.zrem(self.due_key, schedule.name)
        else:
            pipe.zadd(self.due_key, {schedule.name: following.timestamp()})
        pipe.execute()
        return _view(self._entry(schedule.name, definition, anchor, following), now)

    def delete(self, name: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.due_key, name)
        pipe.hdel(self.last_key, name)
        pipe.hdel(self.definitions_key, name)
        return bool(pipe.execute()[2])

    def get(self, name: str) -> Schedule | None:
        found = self.entries([name])
        return _view(found[0], self._now()) if found else None

    def all(self) -> list[Schedule]:
        """Every schedule, by name: three commands whatever their number."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.definitions_key)
        pipe.hgetall(self.last_key)
        pipe.zrange(self.due_key, 0, -1, withscores=True)
        definitions, last, due = pipe.execute()
        last_s = {_text(k): float(v) for k, v in last.items()}
        due_s = {_text(k): float(v) for k, v in due}
        now_s = self.clock()
        shown: dict[float, str] = {}  # thousands share their next run: each formatted once
        found = []
        for key, raw in definitions.items():
            name, definition = _text(key), json.loads(raw)
            times = partial(
                fire_times, definition["cron"], definition["timezone"], definition["every_s"]
            )
            next_s = _next_run_s(times, last_s.get(name, now_s), due_s.get(name), now_s)
            shown_at = None
            if next_s is not None:
                shown_at = shown.get(next_s) or shown.setdefault(next_s, utc_iso(next_s))
            found.append(_schedule(name, definition, shown_at))
        return sorted(found, key=lambda s: s.name)

    def entries(self, names: Sequence[str]) -> list[Entry]:
        """The stored schedules of ``names`` (those that exist), in that order."""
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.definitions_key, names)
        pipe.hmget(self.last_key, names)
        pipe.zmscore(self.due_key, list(names))
        definitions, last, due = pipe.execute()
        now = self._now()
        return [
            self._entry(
                name,
                json.loads(raw),
                _moment(float(last_raw)) if last_raw is not None else now,
                _moment(score) if score is not None else None,
            )
            for name, raw, last_raw, score in zip(names, definitions, last, due, strict=True)
            if raw is not None
        ]

    def due_names(self, now: datetime) -> list[str]:
        """Schedules whose next fire time is at or before ``now``, earliest first."""
        found: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            self.due_key, "-inf", now.timestamp()
        )
        return [_text(name) for name in found]

    def next_due_at(self) -> datetime | None:
        """The earliest next fire time of any schedule."""
        first: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
            self.due_key, 0, 0, withscores=True
        )
        return _moment(first[0][1]) if first else None

    def mark_fired(
        self, name: str, revision: str, fire_at: datetime, next_at: datetime | None
    ) -> bool:
        """Record that the firing at ``fire_at`` is done; False if the schedule changed."""
        return self.mark_fired_many([Mark(name, revision, fire_at, next_at)])[0]

    def mark_fired_many(self, marks: Iterable[Mark]) -> list[bool]:
        """:meth:`mark_fired` for each of ``marks``, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for mark in marks:
            self._mark_fired(
                keys=[self.definitions_key, self.last_key, self.due_key],
                args=[
                    mark.name,
                    mark.revision,
                    repr(mark.fire_at.timestamp()),
                    repr(mark.next_at.timestamp()) if mark.next_at else "",
                ],
                client=pipe,
            )
            count += 1
        return [bool(applied) for applied in pipe.execute()] if count else []

    def _now(self) -> datetime:
        return _moment(self.clock())

    @staticmethod
    def _entry(
        name: str, definition: Mapping[str, Any], last_run_at: datetime, next_at: datetime | None
    ) -> Entry:
        return Entry(
            _schedule(name, definition, None), definition["revision"], last_run_at, next_at
        )


def _schedule(name: str, definition: Mapping[str, Any], next_run_at: str | None) -> Schedule:
    enabled = bool(definition.get("enabled", True))
    return Schedule(
        name=name,
        room_id=definition["room_id"],
        cron=definition.get("cron"),
        every_s=definition.get("every_s"),
        timezone=definition.get("timezone") or "UTC",
        enabled=enabled,
        options=dict(definition.get("options") or {}),
        next_run_at=next_run_at if enabled else None,
    )


def _next_run_s(
    times: Callable[[], FireTimes], last_s: float, next_s: float | None, now_s: float
) -> float | None:
    """What beat fires next (epoch s): the stored next fire time or, when that has passed (no
    beat running), the latest missed time of ``times()``, which beat fires once when back."""
    if next_s is None or next_s > now_s:
        return next_s
    latest = times().latest_due(_moment(last_s), _moment(now_s))
    return latest.timestamp() if latest else next_s


def _view(entry: Entry, now: datetime) -> Schedule:
    """The public view of one stored schedule (see :func:`_next_run_s`)."""
    stored_s = entry.next_at.timestamp() if entry.next_at is not None else None
    next_s = _next_run_s(entry.times, entry.last_run_at.timestamp(), stored_s, now.timestamp())
    schedule = entry.schedule
    if not schedule.enabled or next_s is None:
        return schedule
    return replace(schedule, next_run_at=utc_iso(next_s))


def _moment(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _encode(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
