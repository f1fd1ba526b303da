"""Dispatcher: moves due jobs from Redis onto the queue, and sweeps for stranded jobs.

Every worker (and beat) runs one in a background thread, so retries and ``run_at`` jobs need no
extra process:
- it publishes due jobs (scheduled ones, and deferred waits) when the earliest falls due, and
  looks again at least every ``interval_s`` (jobs enqueued meanwhile by other processes);
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
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from tasks.logs import OutageLog
from tasks.store.jobs import JobStore

logger = logging.getLogger(__name__)

#: publishes one delivery of a job: ``publish(job_id, room_id)`` (``worker.publish.publish_job``)
Publish = Callable[[str, str], None]
#: opens a batch of publishes, ``with open_batch() as publish: ...``; what the batch buffers (its
#: messages, the jobs' ``task-sent`` events) goes out when it closes, and a batch that raises
#: may have published none, some or all of its jobs (``worker.publish.due_job_batch``)
OpenBatch = Callable[[], AbstractContextManager[Publish]]

#: a dispatcher looks for due jobs at least this often: a job enqueued by another process due
#: sooner than the earliest one it knew of waits at most this long (plus the queue)
INTERVAL_S = 0.5
#: ...and at most this often (the shortest pause, seconds, when a job falls due at once)
MIN_PAUSE_S = 0.01
#: due jobs popped and published at a time, in one Redis round trip. In a busy worker a batch
#: of 200 took 90-150 ms to publish (0.11 ms of CPU a message alone, the pool's threads wanting
#: the GIL too), and the calls of those moments bunched behind it; 50 at a time in alternated
#: herds (``tests/benchmarks/herd.py``): last call T + 50.79-50.85 s against 50.84-50.91 s at
#: 200, busiest sliding second 201-203 against 203-210, the first second 187-194 calls against
#: 174-183.
BATCH = 50
#: a claimed job whose lease has expired has been left alone at least this long already.
HELD_QUIET_S = 1.0
#: an unclaimed job whose message is evidently gone is published again after this long: longer
#: than a live worker takes to claim a message it has taken (prefetch 1 per slot: at once)
LOST_QUIET_S = 15.0
#: the broker queue's depth (``worker.publish.queue_depth`` for our queue)
QueueDepth = Callable[[], int]


#: a dispatcher with a backlog of due jobs keeps the queue about this many seconds of calls
#: ahead of the rate limit (``queue_ahead``), and leaves the rest in the due set
QUEUE_AHEAD_S = 2.0


def queue_ahead(rate_per_s: float) -> int:
    """Messages a dispatcher lets wait on the queue while it holds back a backlog of due jobs:
    :data:`QUEUE_AHEAD_S` of calls at ``rate_per_s`` (calls/s), and at least one batch."""
    return max(BATCH, math.ceil(rate_per_s * QUEUE_AHEAD_S))


class Dispatcher:
    """Publishes due jobs with ``publish(job_id, room_id)`` (a batch at a time through
    ``open_batch`` if given) and sweeps for stranded ones.

    With ``queue_depth`` and ``queue_ahead`` given, a backlog of due jobs (10,000 due at 09:00)
    is published only as the queue drains: once a batch came out full, the next waits until
    fewer than ``queue_ahead`` messages are on the queue, and the rest of the backlog waits in
    the due set. Every message is work the workers' consumers and threads share the CPU (and a
    worker's GIL) with, while a call can only leave at the rate limit's pace: with a backlog of
    6,000 published in one go, a worker's calls ran at 135-170/s until it was out, against
    170-190/s paced (``tests/benchmarks/herd.py``, README "The herd"). A job held back keeps
    its place (the due set is in due order), and its start window is checked when a worker
    claims it, as for any job.
    """

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
        queue_ahead: int | None = None,
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
        self.queue_ahead = queue_ahead
        #: whether the last batch came out full (or was held back): a backlog may be waiting
        self._backlog = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Publish the jobs due now (as many as the queue takes, see the class); returns how
        many were published."""
        total = 0
        while True:
            if self._backlog and self._queue_full():
                return total
            items = self.store.pop_due(limit=self.batch)
            self._backlog = len(items) == self.batch
            if not items:  # no batch to open (a producer, an event buffer) for nothing
                return total
            # confirmed only once the batch has closed: its messages may be held until then.
            # A batch that raised is not confirmed at all, so each of its jobs is handed out
            # again (REDISPATCH_MS): a second message for a job whose first went out is
            # harmless (the claim), a job confirmed without a message would wait for a sweep.
            with self.open_batch() as publish:
                for job_id, room_id, _token in items:
                    publish(job_id, room_id)
            self.store.dispatched(items)
            total += len(items)
            if not self._backlog:
                return total

    def _queue_full(self) -> bool:
        """Whether ``queue_ahead`` messages or more wait on the queue (asked only with a
        backlog: an idle dispatcher never reads the queue)."""
        if self.queue_depth is None or self.queue_ahead is None:
            return False
        return self.queue_depth() >= self.queue_ahead

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
            pause_s = self.interval_s
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval_s
                    self.sweep()
                count = self.run_once()
                pause_s = self.pause_s()
            except Exception as exc:  # Redis down: keep trying, the jobs wait in Redis
                outage.failed(exc)
            else:
                outage.recovered()
                if count:
                    logger.info("dispatcher: published %d due job(s)", count)
            self._stop.wait(pause_s)

    def pause_s(self) -> float:
        """Seconds until the next turn: until the earliest job in the due set falls due, within
        [:data:`MIN_PAUSE_S`, ``interval_s``]; ``interval_s`` while a backlog is held back (the
        queue takes :data:`QUEUE_AHEAD_S` of calls: it does not run dry in that time)."""
        if self._backlog:
            return self.interval_s
        next_due_s = self.store.next_due_s()
        if next_due_s is None:
            return self.interval_s
        return min(self.interval_s, max(MIN_PAUSE_S, next_due_s - self.store.clock()))
