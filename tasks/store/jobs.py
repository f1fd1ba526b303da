"""Job store: one JSON record per job in Redis, with indexes, changed only by atomic Lua scripts.

The keys it uses are in the key schema of the whole prefix, :mod:`tasks.store`.

Index members whose records have expired are trimmed whenever an index is written (by score:
the creation time is older than ``ttl_s``) and skipped when read, so no index outlives its jobs.
Records carry bookkeeping fields the API never shows: ``_ts`` (creation ms, the index score),
``_due`` (ms; set while the job waits in ``{p}:due``), ``_touched`` (ms of the last change),
``_holder`` (the lease token of the delivery working on it; left set by a delivery that died),
``_swept`` (ms the sweeper last found it stranded), ``_begun`` (the lease token of the claim
that began an attempt) and ``_base`` (attempts before a replay).

Every change goes through :data:`UPDATE_LUA` (in :mod:`tasks.store.scripts`), which checks
the current status against the statuses the change may start from; that is how a late
``running`` never overwrites ``succeeded``. Redis Cluster is not supported (Celery cannot use
it as a broker either), so the scripts may build the keys of the job they read.
"""

from __future__ import annotations

from tasks.store.claims import Claim, Claims
from tasks.store.due import REDISPATCH_MS, DueSet
from tasks.store.recordings import EventApplied, Recordings
from tasks.store.writes import Update, Writes

__all__ = ["REDISPATCH_MS", "Claim", "EventApplied", "JobStore", "Update"]


class JobStore(Writes, Claims, DueSet, Recordings):
    """Job records in Redis (the key schema is in :mod:`tasks.store`).

    Made of its parts, one concern each: ``Writes`` (create, update) on ``Reads`` (get, list,
    counts), ``Claims``, the ``DueSet`` and ``Recordings`` (webhook events), sharing one
    ``Keyspace`` (client, prefix,
    ``ttl_s``, clock).
    """
