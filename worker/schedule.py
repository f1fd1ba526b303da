"""Beat: redbeat's scheduler, for its lock, firing our schedules as jobs; the due-job dispatcher.

``celery -A worker beat`` runs :class:`RecorderScheduler` (``beat_scheduler`` in the config).

**Firing.** Our schedules live in our own keys (``tasks.schedules.store``); each tick, after
redbeat's own tick (which extends the lock and runs redbeat's entries: we keep none), the
scheduler fires every due schedule with :func:`tasks.schedules.firing.fire_due`, in chunks of
200 whose firings are recorded in one round trip each. The job's idempotency key is
``schedule:{name}:{scheduled time}`` and the firing is recorded only after the job is stored
(enqueue-then-record, see ``tasks.schedules.firing``). The jobs of a tick are all stored first
and their messages published after (:func:`tasks.schedules.firing.publish_all`): storing a job
costs a fraction of publishing its message through Celery (two kombu publishes, the message and
Flower's ``task-sent`` event), so 10,000 jobs due on one minute all exist within seconds of it.
A beat that dies in between leaves ``queued`` jobs without a message, which the sweeper
publishes, as for any producer. One thread does it all: with a thread pool the enqueues
measured slower (they contend for the GIL). Enqueueing needs only Redis, so beat never holds
the VideoSDK secret.

**Missed times.** After downtime (of beat, or of Redis) each schedule fires its latest missed time
once, not every missed time, as Celery's beat does; the job's start window opens at that time
(``due_at``), so one whose window has closed is stored ``expired`` rather than started late.

**High availability.** Any number of beats may run; redbeat's lock (``{r}:lock``) lets one fire.
The active beat extends the lock to ``redbeat_lock_timeout`` (``RECORDER_BEAT_LOCK_TIMEOUT``,
25 s) at every tick and, while a long tick fires thousands of schedules, before each firing,
each message and at the tick's end once a quarter of the timeout has passed since the last
extension; it ticks at least every ``beat_max_loop_interval`` (``RECORDER_BEAT_MAX_INTERVAL``,
5 s). A standby tries the lock every max interval, so when the active beat dies a standby fires
within lock timeout + max interval (30 s by default) of the dead beat's last tick, and then
fires each schedule's latest missed time. A beat that finds its lock gone (taken by another
after a stall longer than the lock timeout) stops firing at once and becomes a standby, trying
the lock at every tick; the idempotency keys make even the overlap harmless.

**One-off jobs.** Every beat, active or standby, also runs the same
:class:`tasks.delivery.dispatcher.Dispatcher` as the workers, so ``run_at`` jobs and deferred
retries are published even when no worker is up; dispatchers racing is safe (``POP_DUE_LUA``
hands each due job to one of them, and one sweep lock serves them all).

**Earlier versions** kept our schedules as redbeat entries (task ``recorder.fire_schedule``);
at start-up beat moves any such entry into our keys, keeping its last fire time, and deletes it
through redbeat's own entry API.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, get_redis
from redis.exceptions import LockNotOwnedError

from tasks import runtime
from tasks.delivery.dispatcher import Dispatcher
from tasks.schedules import api as schedules_api
from tasks.schedules.firing import fire_due, publish_all
from tasks.schedules.store import Schedule
from worker.publish import due_job_batch, publish_job, queue_depth

logger = logging.getLogger(__name__)

#: the shortest sleep between ticks (a tick that ran into the next due time ticks again soon)
MIN_SLEEP_S = 0.01
#: the task name under which earlier versions stored our schedules as redbeat entries
LEGACY_FIRE_TASK = "recorder.fire_schedule"


class RecorderScheduler(RedBeatScheduler):
    """redbeat's scheduler that fires our schedules as jobs and runs the due-job dispatcher."""

    _dispatcher: Dispatcher | None = None
    _standby = False
    _extended_at = 0.0

    def setup_schedule(self) -> None:
        # only the real scheduler gets here; celery also builds a ``lazy`` one for its banner
        super().setup_schedule()
        self._adopt_redbeat_entries()
        self._dispatcher = runtime.new_dispatcher(publish_job, queue_depth, due_job_batch)
        self._dispatcher.start()

    def install_default_entries(self, data: Any) -> None:
        """No ``celery.backend_cleanup`` entry: the app has no result backend to clean."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """redbeat's tick (the lock, its entries), then every due schedule of ours; the sleep."""
        if self._standby and not self._reacquire():
            return float(self.max_interval)
        pending: list[tuple[str, str]] = []
        # the public API's enqueue, keeping each job's message to publish once all are stored
        enqueue = runtime.producer(lambda job_id, room: pending.append((job_id, room))).enqueue
        store = schedules_api.store()
        try:
            remaining = super().tick(*args, **kwargs)
            self._extended_at = started = time.monotonic()
            fired = fire_due(
                store,
                now=datetime.now(UTC),
                enqueue=enqueue,
                heartbeat=self._keep_lock,
            )
            stored = time.monotonic()
            publish_all(pending, publish_job, heartbeat=self._keep_lock)
            self._keep_lock()  # the sleep that follows must not outlast the lock either
            if fired.fired > 1:
                logger.info(
                    "beat: %d schedules fired: their jobs stored in %.1f s, messages published "
                    "in %.1f s more",
                    fired.fired,
                    stored - started,
                    time.monotonic() - stored,
                )
        except LockNotOwnedError:
            logger.error(
                "beat: lost the lock (another beat may be firing): firing nothing until it is "
                "ours again"
            )
            self._standby = True
            return float(self.max_interval)
        if fired.failed:  # Redis refused some jobs: try them again at the next regular tick
            return float(self.max_interval)
        following = store.next_due_at()
        until_s = (following - datetime.now(UTC)).total_seconds() if following else remaining
        return max(MIN_SLEEP_S, min(remaining, until_s, self.max_interval))

    def _keep_lock(self) -> None:
        """Extend the lock once a quarter of its timeout has passed since the last extension:
        during a long tick it never lapses (a firing or a message takes milliseconds), and from
        the end of a tick the lock outlasts the sleep to the next one (at most half the
        timeout)."""
        due = time.monotonic() - self._extended_at >= self.lock_timeout / 4
        if self.lock is not None and due:
            self.lock.extend(int(self.lock_timeout), replace_ttl=True)
            self._extended_at = time.monotonic()

    def _reacquire(self) -> bool:
        if self.lock is None or not self.lock.acquire(blocking=False):
            return False
        logger.info("beat: Acquired lock")
        self._standby = False
        return True

    def _adopt_redbeat_entries(self) -> None:
        """Move schedules stored as redbeat entries by earlier versions into our store."""
        store = schedules_api.store()
        for key in get_redis(self.app).zrange(self.app.redbeat_conf.schedule_key, 0, -1):
            try:
                entry = RedBeatSchedulerEntry.from_key(key, app=self.app)
            except KeyError:
                continue
            spec = entry.options.get("recorder") if entry.task == LEGACY_FIRE_TASK else None
            if not isinstance(spec, dict):
                continue  # someone else's entry: redbeat's own tick runs it
            options = dict(entry.kwargs)
            schedule = Schedule(
                name=entry.name,
                room_id=options.pop("room_id"),
                cron=spec.get("cron"),
                every_s=spec.get("every_s"),
                timezone=spec.get("timezone") or "UTC",
                enabled=bool(entry.enabled),
                options=options,
                next_run_at=None,
            )
            store.put(schedule, last_run_at=entry.last_run_at)
            entry.delete()
            logger.info("beat: schedule %s moved from redbeat's keys to ours", entry.name)

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
