"""Dispatcher: moves due jobs from Redis onto the queue, and sweeps for stranded jobs.

Every worker (and beat) runs one in a background thread, so retries and ``run_at`` jobs need no
extra process:
- every ``interval_s`` it publishes due jobs (scheduled ones, and deferred waits);
  ``POP_DUE_LUA`` (tasks.store.scripts) hands each to exactly one dispatcher, and a job whose
  publish is not confirmed is handed out again 30 s later rather than lost;
- every ``sweep_interval_s`` one of them (a Redis lock) sweeps for stranded jobs, and puts them
  back in the due set: claimed by a delivery whose lease expired (its worker died), or
  ``queued``/``retrying`` with no message on its way to a worker: quiet for ``lost_quiet_s``
  while the broker queue is empty, or published that long before a job a worker has already
  claimed (the queue is first in, first out), or, whatever the evidence, quiet for longer than
  kombu's visibility timeout. A worker killed mid-call costs its jobs at most ``lease_s`` plus
  one sweep; a message lost any other way (acked without a claim, prefetched by a worker that
  was killed) costs at most ``lost_quiet_s`` plus one sweep, about 25 s with the defaults.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from tasks.logs import OutageLog
from tasks.store.jobs import JobStore

logger = logging.getLogger(__name__)

#: publishes one delivery of a job: ``publish(job_id, room_id)`` (``worker.publish.publish_job``)
Publish = Callable[[str, str], None]
#: opens a batch of publishes, ``with open_batch() as publish: ...``; what the batch buffers (the
#: jobs' ``task-sent`` events) goes out when it closes (``worker.publish.due_job_batch``)
OpenBatch = Callable[[], AbstractContextManager[Publish]]

#: how often a dispatcher looks for due jobs; a due job waits at most this long (plus the queue).
INTERVAL_S = 0.5
BATCH = 200
#: a claimed job whose lease has expired has been left alone at least this long already.
HELD_QUIET_S = 1.0
#: an unclaimed job whose message is evidently gone is published again after this long: longer
#: than a live worker takes to claim a message it has taken (prefetch 1 per slot: at once)
LOST_QUIET_S = 15.0
#: the broker queue's depth (``worker.publish.queue_depth`` for our queue)
QueueDepth = Callable[[], int]


class Dispatcher:
    """Publishes due jobs with ``publish(job_id, room_id)`` (a batch at a time through
    ``open_batch`` if given) and sweeps for stranded ones."""

    def __init__(
        self,
        *,
        store: JobStore,
        publish: Publish,
        interval_s: float = INTERVAL_S,
        batch: int = BATCH,
        sweep_interval_s: float = 10.0,
        queued_quiet_s: float = 960.0,
        lost_quiet_s: float = LOST_QUIET_S,
        queue_depth: QueueDepth | None = None,
        open_batch: OpenBatch | None = None,
    ) -> None:
        self.store = store
        self.open_batch = open_batch or (lambda: nullcontext(publish))
        self.interval_s = interval_s
        self.batch = batch
        self.sweep_interval_s = sweep_interval_s
        self.queued_quiet_s = queued_quiet_s
        self.lost_quiet_s = lost_quiet_s
        self.queue_depth = queue_depth
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Publish every job due now; returns how many were published."""
        total = 0
        while True:
            items = self.store.pop_due(limit=self.batch)
            if not items:  # no batch to open (a producer, an event buffer) for nothing
                return total
            published = []
            try:
                with self.open_batch() as publish:
                    for item in items:
                        publish(item[0], item[1])
                        published.append(item)
            finally:
                self.store.dispatched(published)
            total += len(published)
            if len(items) < self.batch:
                return total

    def sweep(self) -> int:
        """If no other dispatcher swept lately, find stranded jobs; returns how many."""
        lock = self.store.key("lock", "sweep")
        if not self.store.client.set(lock, "1", nx=True, px=int(self.sweep_interval_s * 1000)):
            return 0
        found = self.store.sweep(
            held_quiet_s=HELD_QUIET_S,
            queued_quiet_s=self.queued_quiet_s,
            lost_quiet_s=self.lost_quiet_s,
            queue_empty=self.queue_depth is not None and self.queue_depth() == 0,
        )
        if found:
            logger.warning("sweeper: %d stranded job(s) put back on the queue", found)
        return found

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="recorder-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        next_sweep = 0.0  # sweep at once on start: a restarted worker recovers its dead jobs
        outage = OutageLog(logger, "dispatcher")  # a line when Redis goes, one a minute, one back
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval_s
                    self.sweep()
                count = self.run_once()
            except Exception as exc:  # Redis down: keep trying, the jobs wait in Redis
                outage.failed(exc)
            else:
                outage.recovered()
                if count:
                    logger.info("dispatcher: published %d due job(s)", count)
            self._stop.wait(self.interval_s)
