"""Job store: one JSON record per job in Redis, with indexes, changed only by atomic Lua scripts.

Key schema (``{p}`` is the key prefix, ``recorder`` by default):

==========================  ======  ============================================================
key                         type    holds
==========================  ======  ============================================================
``{p}:job:{id}``            string  the job record (JSON); expires ``ttl_s`` after its creation
``{p}:idem:{key}``          string  job id for an idempotency key; same expiry as the job
``{p}:jobs``                zset    every job id, scored by creation time (ms)
``{p}:room:{room_id}``      zset    the room's job ids by creation time; expires with the newest
``{p}:status:{status}``     zset    job ids in that status, by creation time
``{p}:due``                 zset    job ids waiting for a time (scheduled, or deferred), by due ms
``{p}:lease:{id}``          string  the token of the delivery working on the job; short PX
``{p}:held``                zset    ids of jobs a delivery has claimed and not released, by ms
==========================  ======  ============================================================

Index members whose records have expired are trimmed whenever an index is written (by score:
the creation time is older than ``ttl_s``) and skipped when read, so no index outlives its jobs.
Records carry bookkeeping fields the API never shows: ``_ts`` (creation ms, the index score),
``_due`` (ms; set while the job waits in ``{p}:due``), ``_touched`` (ms of the last change),
``_holder`` (the lease token of the delivery working on it; left set by a delivery that died),
``_swept`` (ms the sweeper last found it stranded) and ``_base`` (attempts before a replay).

Every change goes through :data:`UPDATE_LUA` (in :mod:`tasks.store.scripts`), which checks
the current status against the statuses the change may start from; that is how a late
``running`` never overwrites ``succeeded``. Redis Cluster is not supported (Celery cannot use
it as a broker either), so the scripts may build the keys of the job they read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.store.connections import own_client
from tasks.job import Job, Status, utc_iso
from tasks.store.scripts import (
    CLAIM_LUA,
    CREATE_LUA,
    DISPATCHED_LUA,
    POP_DUE_LUA,
    SWEEP_LUA,
    UPDATE_LUA,
)

#: a job whose message is not confirmed as published within this long is published again by a
#: dispatcher (a producer or dispatcher that died between storing and publishing).
REDISPATCH_MS = 30_000


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of taking a job for one delivery."""

    kind: str  # claimed | finished | not_due | leased | missing
    job: Job | None
    lease_ttl_s: float = 0.0
    holder: str = ""
    began: bool = False


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of a change: ``applied``, else ``reason`` (missing, status, lease_lost)."""

    applied: bool
    job: Job | None
    reason: str = ""


class JobStore:
    """Job records in Redis (see the module docstring for the key schema)."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        prefix: str = "recorder",
        ttl_s: int = 30 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.clock = clock
        self._create = client.register_script(CREATE_LUA)
        self._update = client.register_script(UPDATE_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._pop_due = client.register_script(POP_DUE_LUA)
        self._dispatched = client.register_script(DISPATCHED_LUA)
        self._sweep = client.register_script(SWEEP_LUA)

    def key(self, kind: str, name: str = "") -> str:
        """The one place Redis keys are built: ``{prefix}:{kind}[:{name}]``."""
        return f"{self.prefix}:{kind}:{name}" if name else f"{self.prefix}:{kind}"

    # -- writes -------------------------------------------------------------------------------

    def create(
        self,
        *,
        room_id: str,
        request: dict[str, Any],
        idempotency_key: str | None = None,
        run_at_s: float | None = None,
        schedule: str | None = None,
        job_id: str | None = None,
    ) -> tuple[Job, bool]:
        """Store a new ``queued`` (or, with ``run_at_s``, ``scheduled``) job.

        Returns ``(job, True)``, or ``(existing_job, False)`` when the idempotency key already
        names a live job; the check and the write are one atomic step. A new queued job waits in
        the due set as "being published" until :meth:`published` confirms its message; if that
        never comes, a dispatcher publishes it after :data:`REDISPATCH_MS`.
        """
        now = self.clock()
        now_iso = utc_iso(now)
        job_id = job_id or uuid.uuid4().hex
        status = Status.SCHEDULED if run_at_s is not None else Status.QUEUED
        created_ms = int(now * 1000)
        due_ms = str(created_ms + REDISPATCH_MS if run_at_s is None else int(run_at_s * 1000))
        record: dict[str, Any] = {
            "id": job_id,
            "room_id": room_id,
            "status": status.value,
            "attempts": 0,
            "created_at": now_iso,
            "updated_at": now_iso,
            "finished_at": None,
            "request": request,
            "http_status": None,
            "response": None,
            "error": None,
            "idempotency_key": idempotency_key,
            "run_at": utc_iso(run_at_s) if run_at_s is not None else None,
            "schedule": schedule,
            "_ts": created_ms,
        }
        if run_at_s is not None:
            record["_due"] = int(due_ms)
        stored_id = self._create(
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

    def published(self, job: Job) -> None:
        """Confirm that a job :meth:`create` stored as queued has its message on the queue."""
        self.dispatched([(job.id, job.room_id, int(job.extra["_ts"]) + REDISPATCH_MS)])

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
    ) -> Update:
        """Apply ``patch`` atomically if the job's status is in ``allowed_from`` (any if None).

        ``updated_at`` is set, and ``finished_at`` when the new status is terminal. With
        ``lease_token`` the change applies only while that token holds the job's lease.
        ``metrics`` are increments of the shared metrics hash, added in the same round trip
        whether or not the change applies.
        """
        now = self.clock()
        patch = {**patch, "updated_at": utc_iso(now), "_touched": int(now * 1000)}
        if "status" in patch and Status(patch["status"]).terminal:
            patch.setdefault("finished_at", patch["updated_at"])
        allowed = (
            "" if allowed_from is None else " " + " ".join(s.value for s in allowed_from) + " "
        )
        due = "-" if clear_due else ("" if due_at_s is None else str(int(due_at_s * 1000)))
        lease = "release" if release_lease else ""
        if renew_lease_s is not None:
            lease = str(int(renew_lease_s * 1000))
        result = self._update(
            client=own_client(self.client),
            keys=[self.key("job", job_id), self.key("lease", job_id)],
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

    def claim(
        self,
        job_id: str,
        *,
        token: str,
        lease_s: float,
        take_over_from: str = "",
        rate_step: tuple[Sequence[str], Sequence[Any]] | None = None,
        max_attempts: int = 0,
        max_lost_deliveries: int = 0,
    ) -> Claim:
        """Take the job's lease for one delivery, unless it is finished, not due or leased.

        ``take_over_from`` names a lease holder known to be dead, whose lease may be taken.
        With ``rate_step`` (:meth:`RedisRateLimiter.step`, no wait) the claim also takes a rate
        slot and marks the first attempt ``running`` (see :data:`CLAIM_LUA`), unless no slot is
        free or ``max_attempts`` or ``max_lost_deliveries`` are used up; ``Claim.began`` says
        whether it did.
        """
        now = self.clock()
        rate_keys, rate_args = rate_step or (["-", "-", "-"], [0, 0, 0, 0, "0"])
        result = self._claim(
            client=own_client(self.client),
            keys=[self.key("job", job_id), self.key("lease", job_id), self.key("held"), *rate_keys],
            args=[
                token,
                int(lease_s * 1000),
                int(now * 1000),
                take_over_from,
                job_id,
                "1" if rate_step else "0",
                utc_iso(now),
                self.prefix,
                max_attempts,
                max_lost_deliveries,
                *rate_args,
            ],
        )
        kind = result[0].decode()
        job = Job.from_record(result[1]) if len(result) > 1 else None
        if kind == "claimed":
            return Claim(kind, job, began=bool(int(result[2])))
        if kind != "leased":
            return Claim(kind, job)
        return Claim(kind, job, max(int(result[2]), 0) / 1000, result[3].decode())

    def sweep(self, *, held_quiet_s: float, queued_quiet_s: float, limit: int = 1000) -> int:
        """Find stranded jobs (see :data:`SWEEP_LUA`) and put them in the due set."""
        now = self.clock()
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(self.key("held"), 0, limit - 1)
        pipe.zrange(self.key("status", Status.RETRYING.value), 0, limit - 1)
        # queued jobs are indexed by creation time: only old ones can have been left alone
        cutoff_ms = int((now - queued_quiet_s) * 1000)
        pipe.zrangebyscore(
            self.key("status", Status.QUEUED.value), "-inf", cutoff_ms, start=0, num=limit
        )
        ids: list[bytes] = [i for found in pipe.execute() for i in found]
        if not ids:
            return 0
        return int(
            self._sweep(
                keys=[self.key("due"), self.key("held")],
                args=[
                    self.prefix,
                    int(now * 1000),
                    int(held_quiet_s * 1000),
                    int(queued_quiet_s * 1000),
                    *dict.fromkeys(ids),
                ],
            )
        )

    def pop_due(self, *, limit: int = 100) -> list[tuple[str, str, int]]:
        """Take up to ``limit`` due jobs: ``(id, room_id, token)``; confirm with ``dispatched``."""
        now_ms = int(self.clock() * 1000)
        flat = self._pop_due(
            keys=[self.key("due")],
            args=[now_ms, limit, REDISPATCH_MS, self.prefix, utc_iso(now_ms / 1000)],
        )
        token = now_ms + REDISPATCH_MS
        return [(flat[i].decode(), flat[i + 1].decode(), token) for i in range(0, len(flat), 2)]

    def dispatched(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Confirm that these popped jobs' messages were published."""
        args: list[Any] = []
        for job_id, _room, token in items:
            args += [job_id, str(token)]
        if args:
            self._dispatched(keys=[self.key("due")], args=args)

    # -- reads --------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        raw = self.client.get(self.key("job", job_id))
        return Job.from_record(raw) if raw else None

    def list(
        self, *, room_id: str | None = None, status: Status | None = None, limit: int = 50
    ) -> list[Job]:
        """Newest first. With both filters, the room's index is read and filtered by status."""
        if room_id is not None:
            index = self.key("room", room_id)
        elif status is not None:
            index = self.key("status", status.value)
        else:
            index = self.key("jobs")
        jobs: list[Job] = []
        start, page = 0, max(limit, 50)
        while len(jobs) < limit:
            found: list[bytes] = self.client.zrevrange(index, start, start + page - 1)  # type: ignore[assignment]
            ids = [i.decode() for i in found]
            if not ids:
                break
            start += page
            for raw in self.client.mget([self.key("job", i) for i in ids]):
                if raw is None:
                    continue
                job = Job.from_record(raw)
                if status is None or job.status is status:
                    jobs.append(job)
                    if len(jobs) == limit:
                        break
        return jobs

    def counts(self) -> dict[str, int]:
        """Jobs per status, from the status indexes (expired members trimmed first)."""
        cutoff = int((self.clock() - self.ttl_s) * 1000)
        pipe = self.client.pipeline(transaction=False)
        for status in Status:
            pipe.zremrangebyscore(self.key("status", status.value), "-inf", cutoff)
            pipe.zcard(self.key("status", status.value))
        results = pipe.execute()
        return {status.value: int(results[2 * i + 1]) for i, status in enumerate(Status)}

    def due_count(self) -> int:
        return int(self.client.zcard(self.key("due")))
