"""Recordings: what VideoSDK's webhooks say of the recordings our start jobs began.

One event is one atomic script (:data:`APPLY_EVENT_LUA`): it finds the room's most recent start
job, moves its ``recording`` forward (never back: duplicates and late events change nothing),
counts the move by status, and wakes a start job waiting for the room to go live
on ``session-started``. The key schema is in :mod:`tasks.store`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.job import RECORDING_RANK, Job, Kind, Status, utc_iso
from tasks.store.connections import own_client
from tasks.store.keyspace import Keyspace
from tasks.store.scripts import APPLY_EVENT_LUA, POP_RECONCILE_LUA

#: webhook types that change a recording, and the status each one means.
RECORDING_EVENTS = {
    "recording-starting": "starting",
    "recording-started": "started",
    "recording-stopping": "stopping",
    "recording-stopped": "stopped",
    "recording-failed": "failed",
}
#: start jobs whose recording the room's events are about, before any other
LIVE_STARTS = frozenset({Status.SUCCEEDED, Status.RUNNING, Status.RETRYING})
#: webhook types about the room's session: ``session-started`` wakes a job waiting for it.
SESSION_EVENTS = frozenset({"session-started", "session-ended"})


@dataclass(frozen=True, slots=True)
class EventApplied:
    """What one event did (``outcome``: applied, unchanged, woken, noted, orphan,
    orphan_unchanged, ignored), the job it applied to (if any), the room's state when no job
    matched, and the recording status before it."""

    outcome: str
    job: Job | None = None
    orphan: dict[str, Any] | None = None
    previous: str = ""


class Recordings(Keyspace):
    """Recording state on start jobs, from webhook events (and reconciliation)."""

    def __init__(self, **keyspace: Any) -> None:
        super().__init__(**keyspace)
        self._apply_event = self.client.register_script(APPLY_EVENT_LUA)
        self._pop_reconcile = self.client.register_script(POP_RECONCILE_LUA)

    def schedule_reconcile(self, job_id: str, at_s: float) -> None:
        """Look the job's recording up at ``at_s`` (epoch s) if it is still unknown then."""
        self.client.zadd(self.key("reconcile"), {job_id: int(at_s * 1000)})

    def pop_reconcile(self, *, limit: int = 20) -> list[str]:
        """Job ids whose reconciliation is due, each handed to one caller."""
        ids = self._pop_reconcile(
            client=own_client(self.client),
            keys=[self.key("reconcile")],
            args=[int(self.clock() * 1000), limit],
        )
        return [i.decode() for i in ids]

    def apply_event(
        self,
        room_id: str,
        event_type: str,
        *,
        session_id: str | None = None,
        file_url: str | None = None,
        file_path: str | None = None,
    ) -> EventApplied:
        """Apply one event of ``room_id``; an unknown type is ``ignored`` (nothing written)."""
        status = RECORDING_EVENTS.get(event_type)
        if status is None and event_type not in SESSION_EVENTS:
            return EventApplied("ignored")
        now = self.clock()
        outcome, raw, previous = self._apply_event(
            client=own_client(self.client),
            keys=[self.key("room", room_id)],
            args=[
                self.prefix,
                room_id,
                event_type,
                status or "",
                session_id or "",
                file_url or "",
                file_path or "",
                utc_iso(now),
                int(now * 1000),
                self.ttl_s,
            ],
        )
        word = outcome.decode()
        previous_status = previous.decode()
        if word.startswith("orphan"):
            return EventApplied(word, orphan=json.loads(raw), previous=previous_status)
        job = Job.from_record(raw) if raw else None
        return EventApplied(word, job=job, previous=previous_status)

    def latest_start(self, room_id: str) -> Job | None:
        """The room's start job its events apply to (as :data:`APPLY_EVENT_LUA` picks it): the
        newest that succeeded or is running or retrying, else the newest that made a call."""
        found: list[bytes] = self.client.zrevrange(self.key("room", room_id), 0, 19)  # type: ignore[assignment]
        ids = [i.decode() for i in found]
        raws = self.client.mget([self.key("job", i) for i in ids]) if ids else []
        starts = [j for j in (Job.from_record(r) for r in raws if r) if j.kind is Kind.START]
        live = [j for j in starts if j.status in LIVE_STARTS]
        called = [j for j in starts if j.attempts > 0]
        chosen = live or called
        return chosen[0] if chosen else None

    def orphan_recording(self, room_id: str) -> dict[str, Any] | None:
        """The state of a room's recording events that matched no start job, if any."""
        raw = self.client.get(self.key("orphan", room_id))
        return json.loads(raw) if raw else None

    def recording_counts(self) -> dict[str, int]:
        """Recordings that reached each status, counted as the events moved them (a counter
        of moves in the metrics hash, like Prometheus's; records themselves expire)."""
        raw = self.client.hmget(self.key("metrics"), [f"recordings:{s}" for s in RECORDING_RANK])
        return {status: int(n or 0) for status, n in zip(RECORDING_RANK, raw, strict=True)}
