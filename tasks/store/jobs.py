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

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from tasks.job import Job, Status
from tasks.store.claims import Claim, Claims
from tasks.store.due import REDISPATCH_MS, DueSet
from tasks.store.keyspace import Keyspace
from tasks.store.reads import Reads
from tasks.store.writes import Update, Writes

__all__ = ["REDISPATCH_MS", "Claim", "JobStore", "Update"]


class JobStore(Keyspace):
    """Job records in Redis (see the module docstring for the key schema).

    The work is done by its parts, one concern each: :class:`Writes` (create, update),
    :class:`Reads` (get, list, counts), :class:`Claims` and the :class:`DueSet`.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        prefix: str = "recorder",
        ttl_s: int = 30 * 24 * 3600,
        clock: Callable[[], float] = time.time,
        redispatch_ms: int = REDISPATCH_MS,
    ) -> None:
        super().__init__(
            client=client, prefix=prefix, ttl_s=ttl_s, clock=clock, redispatch_ms=redispatch_ms
        )
        self._reads = Reads(self)
        self._writes = Writes(self, self._reads)
        self._claims = Claims(self)
        self._due = DueSet(self)

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

        Returns ``(job, True)``, or ``(existing_job, False)``; see :meth:`Writes.create`.
        """
        return self._writes.create(
            room_id=room_id,
            request=request,
            idempotency_key=idempotency_key,
            run_at_s=run_at_s,
            schedule=schedule,
            job_id=job_id,
        )

    def published(self, job: Job) -> None:
        """Confirm that a job :meth:`create` stored as queued has its message on the queue."""
        self._due.published(job)

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

        See :meth:`Writes.update` for the options.
        """
        return self._writes.update(
            job_id,
            patch,
            allowed_from=allowed_from,
            lease_token=lease_token,
            count_attempt=count_attempt,
            due_at_s=due_at_s,
            clear_due=clear_due,
            release_lease=release_lease,
            renew_lease_s=renew_lease_s,
            metrics=metrics,
        )

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

        See :meth:`Claims.claim`, which may also begin the first attempt.
        """
        return self._claims.claim(
            job_id,
            token=token,
            lease_s=lease_s,
            take_over_from=take_over_from,
            rate_step=rate_step,
            max_attempts=max_attempts,
            max_lost_deliveries=max_lost_deliveries,
        )

    # -- the due set --------------------------------------------------------------------------

    def sweep(
        self,
        *,
        held_quiet_s: float,
        queued_quiet_s: float,
        lost_quiet_s: float | None = None,
        queue_empty: bool = False,
        limit: int = 1000,
    ) -> int:
        """Find stranded jobs and put them in the due set (see :meth:`DueSet.sweep`)."""
        return self._due.sweep(
            held_quiet_s=held_quiet_s,
            queued_quiet_s=queued_quiet_s,
            lost_quiet_s=lost_quiet_s,
            queue_empty=queue_empty,
            limit=limit,
        )

    def pop_due(self, *, limit: int = 100) -> list[tuple[str, str, int]]:
        """Take up to ``limit`` due jobs: ``(id, room_id, token)``; confirm with ``dispatched``."""
        return self._due.pop(limit=limit)

    def dispatched(self, items: Iterable[tuple[str, str, int]]) -> None:
        """Confirm that these popped jobs' messages were published."""
        self._due.dispatched(items)

    def due_count(self) -> int:
        return self._due.count()

    # -- reads --------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._reads.get(job_id)

    def list(
        self, *, room_id: str | None = None, status: Status | None = None, limit: int = 50
    ) -> list[Job]:
        """Newest first. With both filters, the room's index is read and filtered by status."""
        return self._reads.list(room_id=room_id, status=status, limit=limit)

    def counts(self) -> dict[str, int]:
        """Jobs per status, from the status indexes (expired members trimmed first)."""
        return self._reads.counts()
