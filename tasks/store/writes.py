"""Writes: a new job record, and changes of one, each one atomic script and one round trip.

Every change goes through :data:`UPDATE_LUA`, which checks the current status against the
statuses the change may start from; the key schema is in :mod:`tasks.store`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.job import DEFAULT_START_WINDOW_S, Job, Kind, Status, utc_iso
from tasks.store.connections import own_client
from tasks.store.reads import Reads
from tasks.store.scripts import CREATE_LUA, UPDATE_LUA

#: record fields not stored when they hold these values (``Job.from_dict`` reads them back)
DEFAULTS: dict[str, object] = {
    "kind": Kind.START.value,
    "start_window_s": int(DEFAULT_START_WINDOW_S),
}


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of a change: ``applied``, else ``reason`` (missing, status, lease_lost)."""

    applied: bool
    job: Job | None
    reason: str = ""


class Writes(Reads):
    """Writes of job records: create, and every change (through one atomic script)."""

    def __init__(self, **keyspace: Any) -> None:
        super().__init__(**keyspace)
        self._create = self.client.register_script(CREATE_LUA)
        self._update = self.client.register_script(UPDATE_LUA)

    def create(
        self,
        *,
        room_id: str,
        request: dict[str, Any],
        idempotency_key: str | None = None,
        run_at_s: float | None = None,
        schedule: str | None = None,
        job_id: str | None = None,
        fields: Mapping[str, Any] | None = None,
        expired: dict[str, str] | None = None,
    ) -> tuple[Job, bool]:
        """Store a new ``queued`` (or, with ``run_at_s``, ``scheduled``) job.

        ``fields`` are more record fields (the start window's). With ``expired`` (an error
        record) the job is stored already ``expired``: its window closed before it was made.
        Returns ``(job, True)``, or ``(existing_job, False)`` when the idempotency key already
        names a live job; the check and the write are one atomic step. The caller publishes a
        queued job's message; if it dies first, the sweeper finds the job (``DueSet.sweep``).
        """
        now = self.clock()
        now_iso = utc_iso(now)
        job_id = job_id or uuid.uuid4().hex
        status = Status.SCHEDULED if run_at_s is not None else Status.QUEUED
        if expired is not None:
            status, run_at_s = Status.EXPIRED, None
        created_ms = int(now * 1000)
        due_ms = "" if run_at_s is None else str(int(run_at_s * 1000))
        record: dict[str, Any] = {
            "id": job_id,
            "room_id": room_id,
            "status": status.value,
            "attempts": 0,
            "created_at": now_iso,
            "updated_at": now_iso,
            "request": request,
            "idempotency_key": idempotency_key,
            "run_at": utc_iso(run_at_s) if run_at_s is not None else None,
            "schedule": schedule,
            **(fields or {}),
            "_ts": created_ms,
        }
        if expired is not None:
            record.update(finished_at=now_iso, error=expired)
        # a missing field reads as None (the kind as start, the window as the default one):
        # storing no nulls and no defaults keeps each record small
        record = {k: v for k, v in record.items() if v is not None and DEFAULTS.get(k) != v}
        if run_at_s is not None:
            record["_due"] = int(due_ms)
        stored_id = self._create(
            client=own_client(self.client),
            keys=[
                self.key("job", job_id),
                self.key("idem", idempotency_key or "-"),
                self.key("jobs"),
                self.key("room", room_id),
                self.key("status", status.value),
                self.key("due"),
            ],
            args=[
                job_id,
                json.dumps(record, separators=(",", ":")),
                self.ttl_s,
                created_ms,
                "1" if idempotency_key else "0",
                due_ms,
                self.prefix,
            ],
        ).decode()
        if stored_id != job_id:
            existing = self.get(stored_id)
            if existing is not None:
                return existing, False
        return Job.from_dict(record), True

    def update(
        self,
        job_id: str,
        patch: dict[str, Any],
        *,
        allowed_from: Iterable[Status] | None = None,
        lease_token: str | None = None,
        count_attempt: bool = False,
        due_at_s: float | None = None,
        clear_due: bool = False,
        release_lease: bool = False,
        renew_lease_s: float | None = None,
        metrics: Mapping[str, int] | None = None,
        unless_cooldown: str | None = None,
    ) -> Update:
        """Apply ``patch`` atomically if the job's status is in ``allowed_from`` (any if None).

        ``updated_at`` is set, and ``finished_at`` when the new status is terminal. With
        ``lease_token`` the change applies only while that token holds the job's lease. With
        ``unless_cooldown`` (a rate limiter's :attr:`~tasks.store.ratelimit.RedisRateLimiter.
        cooldown_key`) it is refused, reason ``"cooldown"``, while a 429's cool-down lasts.
        ``metrics`` are increments of the shared metrics hash, added in the same round trip
        whether or not the change applies.
        """
        now = self.clock()
        patch = {**patch, "updated_at": utc_iso(now), "_touched": int(now * 1000)}
        if "status" in patch and Status(patch["status"]).terminal:
            patch.setdefault("finished_at", patch["updated_at"])
            patch["_touched"] = None  # only the sweeper reads it, and never of a finished job
        allowed = (
            "" if allowed_from is None else " " + " ".join(s.value for s in allowed_from) + " "
        )
        due = "-" if clear_due else ("" if due_at_s is None else str(int(due_at_s * 1000)))
        lease = "release" if release_lease else ""
        if renew_lease_s is not None:
            lease = str(int(renew_lease_s * 1000))
        result = self._update(
            client=own_client(self.client),
            keys=[
                self.key("job", job_id),
                self.key("lease", job_id),
                *([unless_cooldown] if unless_cooldown else []),
            ],
            args=[
                self.prefix,
                job_id,
                allowed,
                json.dumps(patch, separators=(",", ":")),
                lease_token or "",
                "1" if count_attempt else "0",
                due,
                lease,
                int((now - self.ttl_s) * 1000),
                self.key("metrics") if metrics else "",
                *(x for pair in (metrics or {}).items() for x in pair),
            ],
        )
        if result[0] == 1:
            return Update(True, Job.from_record(result[1]))
        reason = result[1].decode()
        return Update(False, Job.from_record(result[2]) if len(result) > 2 else None, reason)
