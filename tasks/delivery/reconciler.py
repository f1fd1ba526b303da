"""Reconciler: looks up recordings whose webhooks never came, at the API.

A succeeded start whose ``recording`` is still unknown ``RECORDER_RECONCILE_AFTER`` (120 s) after
it succeeded, and a succeeded stop whose room's recording has not reached ``stopped`` by then,
are looked up with ``GET {api}/v2/recordings?roomId=`` (same token, same global rate limit, the
call counted in the metrics like every other), and what the API lists is applied as the
webhooks would have applied it (:meth:`Recordings.apply_event`: forward only, so a webhook
arriving later changes nothing it should not). Lost webhooks do not leave a recording unknown
forever: an answer that lists nothing yet is looked up again, later each time, for an hour.

Every worker runs one in a background thread (``worker.bootsteps.Reconciliation``); the due ids
are handed out one caller each (``POP_RECONCILE_LUA``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tasks.errors import ApiError
from tasks.job import RECORDING_ENDED, Job, Kind
from tasks.store import metrics
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter
from tasks.videosdk.client import ApiClient

logger = logging.getLogger(__name__)

INTERVAL_S = 2.0
#: an unknown recording is looked up again until its job finished this long ago, seconds.
GIVE_UP_AFTER_S = 3600.0
#: the longest wait of the limiter taken in this thread; longer: looked up later.
SLOT_WAIT_MAX_S = 5.0


def events_of(entry: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The webhook events one listed recording stands for, oldest first.

    An entry with a file (``file.fileUrl`` or ``fileUrl``) was started and stopped; one whose
    ``status`` says failed, failed; stopping, started then stopping; any other was started.
    """
    file: dict[str, Any] = entry["file"] if isinstance(entry.get("file"), dict) else {}
    data = {
        "sessionId": str(entry.get("sessionId") or ""),
        "fileUrl": str(file.get("fileUrl") or entry.get("fileUrl") or ""),
        "filePath": str(file.get("filePath") or entry.get("filePath") or ""),
    }
    status = str(entry.get("status") or "").lower()
    if "fail" in status:
        return [("recording-failed", data)]
    if data["fileUrl"] or "stopped" in status:
        return [("recording-started", data), ("recording-stopped", data)]
    if "stopping" in status:
        return [("recording-started", data), ("recording-stopping", data)]
    return [("recording-started", data)]


class Reconciler:
    """Looks up unknown recordings (module docstring); ``notify`` is told of changed jobs."""

    def __init__(
        self,
        *,
        store: JobStore,
        client: ApiClient,
        limiter: RedisRateLimiter,
        notify: Callable[[Job], None] = lambda job: None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.store = store
        self.client = client
        self.limiter = limiter
        self.notify = notify
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # a Redis outage, a bug: the thread must outlive it
                logger.warning("reconciliation pass failed; next in %.0fs", self.interval_s)

    def run_once(self) -> int:
        """Reconcile every due job; how many were looked up at the API."""
        looked_up = 0
        for job_id in self.store.pop_reconcile():
            looked_up += self.reconcile(job_id)
        return looked_up

    def reconcile(self, job_id: str) -> int:
        """Look one job's recording up if it is still unknown; 1 if the API was called."""
        job = self.store.get(job_id)
        if job is None:
            return 0
        start = job if job.kind is Kind.START else self.store.latest_start(job.room_id)
        status = ((start.recording if start else None) or {}).get("status")
        if status is not None and (job.kind is Kind.START or status in RECORDING_ENDED):
            return 0  # the webhooks came
        admission = self.limiter.acquire(max_wait_s=SLOT_WAIT_MAX_S)
        if not admission.reserved:
            self.store.schedule_reconcile(job_id, self.store.clock() + admission.wait_s + 1)
            return 0
        self._stop.wait(admission.wait_s)
        try:
            response = self.client.list_recordings(job.room_id)
        except ApiError as exc:
            self._count(exc.http_status, exc.error_type, exc.latency_s)
            logger.warning("reconciling room %s: %s", job.room_id, exc)
            self._again_later(job)
            return 1
        self._count(response.http_status, "ok", response.latency_s)
        entries = response.body.get("data") if isinstance(response.body, dict) else None
        wanted = (start.recording or {}).get("session_id") if start else None
        listed = [e for e in entries or [] if isinstance(e, dict)]
        entry = next((e for e in listed if wanted and e.get("sessionId") == wanted), None)
        if entry is None and listed:
            entry = listed[0]
        if entry is None:
            self._again_later(job)
            return 1
        for event_type, data in events_of(entry):
            applied = self.store.apply_event(
                job.room_id,
                event_type,
                session_id=data["sessionId"] or None,
                file_url=data["fileUrl"] or None,
                file_path=data["filePath"] or None,
            )
            if applied.outcome == "applied" and applied.job is not None:
                self.notify(applied.job)
        logger.info(
            "room %s recording reconciled from the API",
            job.room_id,
            extra={"job_id": job.id, "room_id": job.room_id, "outcome": "reconciled"},
        )
        return 1

    def _again_later(self, job: Job) -> None:
        finished = job.finished_at or job.updated_at
        age_s = self.store.clock() - datetime.fromisoformat(finished).timestamp()
        if age_s > GIVE_UP_AFTER_S:
            logger.warning(
                "room %s: recording still unknown an hour after job %s; not looked up again",
                job.room_id,
                job.id,
                extra={"job_id": job.id, "room_id": job.room_id},
            )
            return
        self.store.schedule_reconcile(job.id, self.store.clock() + max(30.0, min(age_s, 600.0)))

    def _count(self, http_status: int | None, outcome: str, latency_s: float | None) -> None:
        increments = metrics.call_increments(
            http_status=http_status, outcome=outcome, latency_s=latency_s
        )
        metrics.record(self.store.client, metrics.key(self.store.prefix), increments)
