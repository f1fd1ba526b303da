"""Due set: the jobs waiting for a time in ``{p}:due``, and how they get (back) onto the queue.

Scheduled and deferred jobs wait there until their time. Dispatchers take due jobs with
:meth:`DueSet.pop_due` and confirm them with :meth:`DueSet.dispatched`, and the sweeper
(:meth:`DueSet.sweep`) puts stranded jobs back in: among them a new job whose producer died
before publishing it. The key schema is in
:mod:`tasks.store`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tasks.job import Status, utc_iso
from tasks.store.keyspace import Keyspace
from tasks.store.scripts import DISPATCHED_LUA, POP_DUE_LUA, SWEEP_LUA

#: a job a dispatcher took from the due set but did not confirm as published (it died in
#: between) is handed out again after this long
REDISPATCH_MS = 30_000


class DueSet(Keyspace):
    """The due set: waiting jobs, publishing them, confirming, and sweeping for stranded ones."""

    def __init__(self, **keyspace: Any) -> None:
        super().__init__(**keyspace)
        self._pop_due = self.client.register_script(POP_DUE_LUA)
        self._dispatched = self.client.register_script(DISPATCHED_LUA)
        self._sweep = self.client.register_script(SWEEP_LUA)

    def sweep(
        self,
        *,
        held_quiet_s: float,
        queued_quiet_s: float,
        lost_quiet_s: float | None = None,
        queue_empty: bool = False,
        limit: int = 1000,
    ) -> int:
        """Find stranded jobs (see :data:`SWEEP_LUA`) and put them in the due set.

        ``lost_quiet_s`` (default ``queued_quiet_s``): how long an unclaimed job must have been
        quiet before the evidence that its message is gone counts: ``queue_empty`` (the broker
        queue is empty) or a later-published job already claimed.
        """
        now = self.clock()
        lost_s = queued_quiet_s if lost_quiet_s is None else lost_quiet_s
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(self.key("held"), 0, limit - 1)
        pipe.zrange(self.key("status", Status.RETRYING.value), 0, limit - 1)
        # queued jobs are indexed by creation time: only old ones can have been left alone
        cutoff_ms = int((now - min(lost_s, queued_quiet_s)) * 1000)
        pipe.zrangebyscore(
            self.key("status", Status.QUEUED.value), "-inf", cutoff_ms, start=0, num=limit
        )
        ids: list[bytes] = [i for found in pipe.execute() for i in found]
        if not ids:
            return 0
        return int(
            self._sweep(
                keys=[self.key("due"), self.key("held"), self.key("claimed_pub")],
                args=[
                    self.prefix,
                    int(now * 1000),
                    int(held_quiet_s * 1000),
                    int(queued_quiet_s * 1000),
                    int(lost_s * 1000),
                    "1" if queue_empty else "0",
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

    def next_due_s(self) -> float | None:
        """When the earliest job in the due set falls due (seconds since the epoch, the store's
        clock), or None for an empty set; jobs handed out and not yet confirmed count too, at
        their redispatch time."""
        first = self.client.zrange(self.key("due"), 0, 0, withscores=True)
        return float(first[0][1]) / 1000 if first else None

    def due_count(self) -> int:
        return int(self.client.zcard(self.key("due")))
