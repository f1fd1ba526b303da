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

from tasks.store.claims import Claim, Claims
from tasks.store.due import REDISPATCH_MS, DueSet
from tasks.store.writes import Update, Writes

__all__ = ["REDISPATCH_MS", "Claim", "JobStore", "Update"]


class JobStore(Writes, Claims, DueSet):
    """Job records in Redis (see the module docstring for the key schema).

    Made of its parts, one concern each: ``Writes`` (create, update) on ``Reads`` (get, list,
    counts), ``Claims`` and the ``DueSet``, sharing one ``Keyspace`` (client, prefix,
    ``ttl_s``, clock).
    """
