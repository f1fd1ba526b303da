"""Schedule store: recurring schedules as celery-redbeat entries in Redis.

Key schema (``{r}`` is the ``redbeat_key_prefix`` setting, ``{prefix}:redbeat:``, so
``recorder:redbeat:`` by default; the shapes are redbeat's own, so its scheduler reads them):

======================  ======  ===============================================================
key                     type    holds
======================  ======  ===============================================================
``{r}{name}``           hash    ``definition`` and ``meta`` (redbeat JSON); until removed
``{r}:schedule``        zset    entry keys by next fire time (epoch s); ``-1`` while disabled
``{r}:lock``            string  the active beat's lock (see ``worker.schedule``)
``{r}:statics``         set     redbeat's list of ``beat_schedule`` entries (we have none)
======================  ======  ===============================================================

An entry is ours when its task is :data:`FIRE_TASK`. Its ``kwargs`` are what every firing passes
to ``enqueue_recording`` (``room_id`` and the recording options); ``options["recorder"]`` holds
the schedule (``cron`` and ``timezone``, or ``every_s``) and a ``revision`` that changes whenever
the entry is replaced. redbeat can store a crontab but not its zone, so the zone lives there and
the :class:`~tasks.schedules.cron.ZonedCron` is rebuilt from it. ``meta.last_run_at`` is the last
fire time (exactly the scheduled time, never the clock at firing), or when the entry was stored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder

from tasks.job import utc_iso
from tasks.schedules.cron import Every, FireTimes, ZonedCron

#: the task name of our entries; never sent: beat's scheduler enqueues the job itself.
FIRE_TASK = "recorder.fire_schedule"

# KEYS[1] the entry's hash, KEYS[2] the schedule zset
# ARGV[1] revision the firing was computed from, ARGV[2] meta JSON, ARGV[3] next fire (epoch s)
# Records a firing only while the entry still exists with that revision, so an entry replaced
# or removed meanwhile keeps its new state (a removed one is not brought back). Returns 1 or 0.
MARK_FIRED_LUA = """
local raw = redis.call('HGET', KEYS[1], 'definition')
if not raw then return 0 end
local ok, def = pcall(cjson.decode, raw)
if not ok or type(def.options) ~= 'table' or type(def.options.recorder) ~= 'table'
    or def.options.recorder.revision ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'meta', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
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


def fire_times(spec: Mapping[str, Any]) -> FireTimes:
    """The schedule object of an entry's ``options["recorder"]``."""
    if spec.get("cron") is not None:
        return ZonedCron(spec["cron"], spec.get("timezone") or "UTC")
    return Every(spec["every_s"])


def recorder_spec(entry_options: object) -> dict[str, Any] | None:
    """``options["recorder"]`` of a redbeat entry, or None when the entry is not ours."""
    spec = entry_options.get("recorder") if isinstance(entry_options, Mapping) else None
    return spec if isinstance(spec, dict) else None


class ScheduleStore:
    """Schedules as redbeat entries (see the module docstring for the key schema)."""

    def __init__(
        self, *, client: redis.Redis, key_prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.schedule_key = f"{key_prefix}:schedule"  # redbeat's RedBeatConfig rule
        self.clock = clock
        self._mark_fired = client.register_script(MARK_FIRED_LUA)

    def key(self, name: str) -> str:
        return f"{self.key_prefix}{name}"

    def put(self, schedule: Schedule) -> Schedule:
        """Store (or replace) ``schedule``; it first fires at the first fire time from now."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        spec = {
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "every_s": schedule.every_s,
            "revision": uuid.uuid4().hex,
        }
        times = fire_times(spec)
        definition = {
            "name": schedule.name,
            "task": FIRE_TASK,
            "args": [],
            "kwargs": {"room_id": schedule.room_id, **schedule.options},
            "options": {"recorder": spec},
            "schedule": times,
            "enabled": schedule.enabled,
        }
        following = times.next_after(now)
        score = following.timestamp() if schedule.enabled and following else -1
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(schedule.name), "definition", _encode(definition))
        # replacing starts afresh: a schedule re-enabled after a week fires no stale times
        pipe.hset(self.key(schedule.name), "meta", _encode({"last_run_at": now}))
        pipe.zadd(self.schedule_key, {self.key(schedule.name): score})
        pipe.execute()
        return self._view(definition, now, now)

    def delete(self, name: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.schedule_key, self.key(name))
        pipe.delete(self.key(name))
        return bool(pipe.execute()[1])

    def get(self, name: str) -> Schedule | None:
        found: list[Schedule] = self._load([self.key(name)])
        return found[0] if found else None

    def all(self) -> list[Schedule]:
        keys = [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in self.client.zrange(self.schedule_key, 0, -1)
        ]
        return sorted(self._load(keys), key=lambda s: s.name)

    def mark_fired(
        self, name: str, revision: str, fire_at: datetime, next_at: datetime | None
    ) -> bool:
        """Record that the firing at ``fire_at`` is done; False if the entry changed meanwhile."""
        applied = self._mark_fired(
            keys=[self.key(name), self.schedule_key],
            args=[
                revision,
                _encode({"last_run_at": fire_at}),
                next_at.timestamp() if next_at else -1,
            ],
        )
        return bool(applied)

    def _load(self, keys: list[str]) -> list[Schedule]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "definition", "meta")
        now = datetime.fromtimestamp(self.clock(), UTC)
        found = []
        for raw_definition, raw_meta in pipe.execute():
            if not raw_definition:
                continue
            definition = json.loads(raw_definition, cls=RedBeatJSONDecoder)
            if (
                definition.get("task") != FIRE_TASK
                or recorder_spec(definition.get("options")) is None
            ):
                continue  # someone else's redbeat entry
            meta = json.loads(raw_meta, cls=RedBeatJSONDecoder) if raw_meta else {}
            found.append(self._view(definition, meta.get("last_run_at") or now, now))
        return found

    @staticmethod
    def _view(definition: Mapping[str, Any], last_run_at: datetime, now: datetime) -> Schedule:
        spec = definition["options"]["recorder"]
        kwargs = dict(definition["kwargs"])
        next_run_at = None
        if definition.get("enabled", True):
            times = fire_times(spec)
            # what beat fires next: an overdue time (beat not running) or the coming one
            upcoming = times.latest_due(last_run_at, now) or times.next_after(last_run_at)
            next_run_at = utc_iso(upcoming.timestamp()) if upcoming else None
        return Schedule(
            name=definition["name"],
            room_id=kwargs.pop("room_id"),
            cron=spec.get("cron"),
            every_s=spec.get("every_s"),
            timezone=spec.get("timezone") or "UTC",
            enabled=bool(definition.get("enabled", True)),
            options=kwargs,
            next_run_at=next_run_at,
        )


def _encode(value: object) -> str:
    return json.dumps(value, cls=RedBeatJSONEncoder, separators=(",", ":"))
