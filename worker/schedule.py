"""Beat: celery-redbeat's scheduler, firing our schedules as jobs, plus the due-job dispatcher.

``celery -A worker beat`` runs :class:`RecorderScheduler` (``beat_scheduler`` in the config).

**Firing.** For our entries (``tasks.schedules.store.FIRE_TASK``) the scheduler calls
``enqueue_recording`` itself, with ``idempotency_key = schedule:{name}:{fire time}`` where the
fire time is the entry's *scheduled* time, and records the firing only afterwards
(:func:`tasks.schedules.firing.fire_due`). Celery's ``Scheduler.apply_async`` does it the other way
round: it advances the entry first and then sends, so a crash or a Redis error between the two
loses that firing. Enqueue-then-record is at-least-once, and the idempotency key makes the
repeats (a crash in between, two beats during a lock hand-over, a restart) the same job. An
intermediate ``fire_schedule`` task was rejected: it would need a worker to turn a message into
a job, would still have to carry the fire time, and adds a second place where a firing can be
lost or doubled. Enqueueing needs only Redis, so beat never holds the VideoSDK secret.

**Missed times.** After downtime (of beat, or of Redis) each schedule fires its latest missed time
once, not every missed time, as Celery's beat does.

**High availability.** Any number of beats may run; redbeat's lock (``{r}:lock``) lets one fire.
The active beat extends the lock to ``redbeat_lock_timeout`` (``RECORDER_BEAT_LOCK_TIMEOUT``,
25 s) at every tick, and ticks at least every ``beat_max_loop_interval``
(``RECORDER_BEAT_MAX_INTERVAL``, 5 s); a standby tries the lock every max interval. So when the
active beat dies, a standby fires within lock timeout + max interval (30 s by default) of the
dead beat's last tick, and then fires each schedule's latest missed time. A beat that loses the
lock (its tick took longer than the lock timeout) stops with an error rather than fire beside
another; the idempotency keys make even that overlap harmless.

**One-off jobs.** Every beat, active or standby, also runs the same
:class:`tasks.delivery.dispatcher.Dispatcher` as the workers, so ``run_at`` jobs and deferred
retries are published even when no worker is up; dispatchers racing is safe (``POP_DUE_LUA``
hands each due job to one of them, and one sweep lock serves them all).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery.beat import ScheduleEntry
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry

from tasks import runtime
from tasks.delivery.dispatcher import Dispatcher
from tasks.delivery.producer import Producer
from tasks.job import Job
from tasks.schedules import api as schedules_api
from tasks.schedules.cron import FireTimes
from tasks.schedules.firing import fire_due
from tasks.schedules.store import FIRE_TASK, fire_times, recorder_spec
from worker.publish import publish_job, queue_depth

logger = logging.getLogger(__name__)


class RecorderEntry(RedBeatSchedulerEntry):
    """A redbeat entry whose zoned cron (or grid interval) is rebuilt from ``options``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = recorder_spec(self.options)
        if spec is not None and not isinstance(self.schedule, FireTimes):
            self.schedule: Any = fire_times(spec)

    @property
    def due_at(self) -> datetime | None:
        if isinstance(self.schedule, FireTimes) and self.last_run_at is not None:
            return self.schedule.next_after(self.last_run_at)
        return super().due_at


class RecorderScheduler(RedBeatScheduler):
    """redbeat's scheduler that enqueues our schedules' jobs and runs the due-job dispatcher."""

    Entry = RecorderEntry
    _dispatcher: Dispatcher | None = None

    def setup_schedule(self) -> None:
        # only the real scheduler gets here; celery also builds a ``lazy`` one for its banner
        super().setup_schedule()
        self._dispatcher = runtime.new_dispatcher(publish_job, queue_depth)
        self._dispatcher.start()

    def install_default_entries(self, data: Any) -> None:
        """No ``celery.backend_cleanup`` entry: the app has no result backend to clean."""

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        spec = recorder_spec(entry.options)
        if entry.task != FIRE_TASK or spec is None:
            return super().apply_async(entry, producer, advance, **kwargs)
        return self.fire(entry, spec)

    def fire(self, entry: ScheduleEntry, spec: dict[str, Any]) -> Job | None:
        now = datetime.now(UTC)
        return fire_due(
            schedules_api.store(),
            name=entry.name,
            kwargs=entry.kwargs,
            spec=spec,
            times=entry.schedule,
            last_run_at=entry.last_run_at,
            now=now,
            enqueue=Producer(store=runtime.store(), publish=publish_job).enqueue,
        )

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()
            self._dispatcher = None
        super().close()

    @property
    def info(self) -> str:
        takeover_s = self.lock_timeout + self.max_interval
        return (
            f"{super().info}\n"
            f"       . takeover -> a standby fires within {takeover_s:g}s of this beat's last tick"
        )
