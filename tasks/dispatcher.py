"""Dispatcher: moves due jobs (scheduled ones, and deferred waits) from Redis onto the queue.

Every worker runs one in a background thread, so retries and ``run_at`` jobs need no extra
process; :data:`~tasks.store.POP_DUE_LUA` hands each due job to exactly one dispatcher, and a job
whose publish is not confirmed is handed out again 30 s later rather than lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tasks.store import JobStore

logger = logging.getLogger(__name__)

#: how often a dispatcher looks for due jobs; a due job waits at most this long (plus the queue).
INTERVAL_S = 0.5
BATCH = 200


class Dispatcher:
    """Publishes due jobs with ``publish(job_id, room_id)``."""

    def __init__(
        self,
        *,
        store: JobStore,
        publish: Callable[[str, str], None],
        interval_s: float = INTERVAL_S,
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.publish = publish
        self.interval_s = interval_s
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Publish every job due now; returns how many were published."""
        total = 0
        while True:
            items = self.store.pop_due(limit=self.batch)
            published = []
            try:
                for item in items:
                    self.publish(item[0], item[1])
                    published.append(item)
            finally:
                self.store.dispatched(published)
            total += len(published)
            if len(items) < self.batch:
                return total

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="recorder-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                count = self.run_once()
            except Exception as exc:  # Redis down: keep trying, the jobs wait in Redis
                logger.warning("dispatcher: %s: %s", type(exc).__name__, exc)
                continue
            if count:
                logger.info("dispatcher: published %d due job(s)", count)
