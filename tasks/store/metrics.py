"""Metrics Flower lacks: API calls by HTTP status, API latency, rate-limit waits; all in Redis.

Every worker adds to ONE hash, ``{prefix}:metrics``, so the numbers cover the whole fleet and
survive worker restarts. The hash never expires (these are counters; delete the key to reset
them); only its ``recent:`` fields come and go. Fields:

==============================  ===============================================================
field                           counts
==============================  ===============================================================
``calls:{status}``              API calls by HTTP status (``200``, ``503``), or by outcome when
                                no answer came (``timeout``, ``connection_error``)
``lat:{bound_us}``              calls whose latency was in (previous bound, ``bound_us``]: one
                                bucket each, not cumulative; ``lat:+Inf`` above the last bound
``lat_count``                   calls with a measured latency
``lat_sum_us``                  their total latency, microseconds (an integer, so HINCRBY adds it)
``recent:{t}:{status}``         the same calls as ``calls:``, in the 10 s that began at epoch
                                second ``t`` (:data:`RECENT_BUCKET_S`); what ``recorder health``
                                reads to see what the workers hear now. Fields older than
                                :data:`RECENT_KEEP_S` are deleted by whoever reads the hash
                                (:func:`snapshot`, :func:`recent_calls`, :func:`prune`)
``waits:{kind}``                rate-limit waits: ``inline`` (slept in the worker slot) or
                                ``deferred`` (job handed back to the due set)
``wait_ms:{kind}``              their total length, milliseconds
==============================  ===============================================================

Latency buckets are :data:`LATENCY_BUCKETS_US`: bounds 2^(1/8) apart from 0.5 ms to 30 s, so a
quantile read from them (linear within a bucket, as Prometheus's ``histogram_quantile``) is
within 9.05% of the true value wherever the calls fall. (Versions before 0.2 wrote ``latency:*``
fields with ten coarse buckets; they are ignored and may be deleted.)

Workers send their increments along with the job-store write that follows each call (no round
trip of their own); :func:`record` applies increments on their own. A failure to count is
logged at debug level and never fails the job. :func:`snapshot` reads the hash back as a dict,
with p50/p90/p99 estimated from the buckets; ``tasks.cli.metrics`` serves it to Prometheus.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: upper bounds of the latency histogram's buckets, microseconds (Prometheus's ``le``):
#: 2^(k/8) ms for k = -8 .. 119, i.e. 0.5 ms .. 30.4 s, each 9.05% above the one before.
LATENCY_BUCKETS_US: tuple[int, ...] = tuple(round(1000 * 2 ** (k / 8)) for k in range(-8, 120))
WAIT_KINDS = ("inline", "deferred")
QUANTILES = (0.5, 0.9, 0.99)
#: width of one ``recent:`` bucket, and how long those fields are kept, seconds.
RECENT_BUCKET_S = 10
RECENT_KEEP_S = 600
_INF = "+Inf"


def key(prefix: str) -> str:
    """The metrics hash of the deployment under ``prefix``."""
    return f"{prefix}:metrics"


def bucket_of(latency_us: float) -> str:
    """The bucket field suffix a latency (µs) falls in: the first bound it does not exceed."""
    i = bisect.bisect_left(LATENCY_BUCKETS_US, latency_us)  # the first bound >= latency_us
    return _INF if i == len(LATENCY_BUCKETS_US) else str(LATENCY_BUCKETS_US[i])


def recent_bucket(now_s: float) -> int:
    """The epoch second the ``recent:`` bucket holding ``now_s`` begins at."""
    return int(now_s // RECENT_BUCKET_S) * RECENT_BUCKET_S


def call_increments(
    *,
    http_status: int | None,
    outcome: str,
    latency_s: float | None,
    now_s: float | None = None,
) -> dict[str, int]:
    """The HINCRBYs that count one API call (by status, else by outcome, in total and in the
    current ``recent:`` bucket) and its latency."""
    status = http_status if http_status is not None else outcome
    now_s = time.time() if now_s is None else now_s
    fields = {f"calls:{status}": 1, f"recent:{recent_bucket(now_s)}:{status}": 1}
    if latency_s is not None:
        latency_us = max(0.0, latency_s * 1_000_000)
        fields[f"lat:{bucket_of(latency_us)}"] = 1
        fields["lat_count"] = 1
        fields["lat_sum_us"] = round(latency_us)
    return fields


def wait_increments(*, kind: str, wait_s: float) -> dict[str, int]:
    """The HINCRBYs that count one rate-limit wait of ``wait_s`` s (``inline`` or ``deferred``)."""
    return {f"waits:{kind}": 1, f"wait_ms:{kind}": max(0, round(wait_s * 1000))}


def merge(into: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """Add ``more``'s increments to ``into`` (so several can travel in one round trip)."""
    for field, amount in more.items():
        into[field] = into.get(field, 0) + amount
    return into


def record(client: redis.Redis, metrics_key: str, increments: Mapping[str, int]) -> None:
    """Apply increments in one pipelined round trip (for tools and tests: the runner sends its
    increments along with its next job-store write, :meth:`tasks.store.jobs.JobStore.update`)."""
    if not increments:
        return
    pipe = client.pipeline(transaction=False)
    for field, amount in increments.items():
        pipe.hincrby(metrics_key, field, amount)
    try:
        pipe.execute()
    except redis.RedisError as exc:  # counting is best effort; the job's own writes will retry
        logger.debug("metrics not counted: %s: %s", type(exc).__name__, exc)


def _read(client: redis.Redis, prefix: str, now_s: float | None) -> dict[str, int]:
    """The hash as ``{field: int}``, its stale ``recent:`` fields deleted on the way."""
    raw = {
        k.decode() if isinstance(k, bytes) else str(k): int(v)
        for k, v in client.hgetall(key(prefix)).items()
    }
    cutoff = recent_bucket(time.time() if now_s is None else now_s) - RECENT_KEEP_S
    stale = [f for f in raw if f.startswith("recent:") and _recent_time(f) < cutoff]
    if stale:
        client.hdel(key(prefix), *stale)
        for field in stale:
            del raw[field]
    return raw


def _recent_time(field: str) -> int:
    try:
        return int(field.split(":", 2)[1])
    except (IndexError, ValueError):
        return 0  # not ours: stale


def prune(client: redis.Redis, prefix: str, *, now_s: float | None = None) -> None:
    """Delete ``recent:`` fields older than :data:`RECENT_KEEP_S` (a worker does it now and then,
    so a deployment nobody watches keeps a bounded hash too)."""
    _read(client, prefix, now_s)


def recent_calls(
    client: redis.Redis, prefix: str, *, window_s: float = 60.0, now_s: float | None = None
) -> dict[str, int]:
    """API calls by status (or outcome) counted in the buckets of the last ``window_s`` seconds
    (whole buckets: up to one :data:`RECENT_BUCKET_S` more)."""
    now_s = time.time() if now_s is None else now_s
    since = recent_bucket(now_s - window_s)
    calls: dict[str, int] = {}
    for field, n in _read(client, prefix, now_s).items():
        if field.startswith("recent:") and _recent_time(field) >= since:
            status = field.split(":", 2)[2]
            calls[status] = calls.get(status, 0) + n
    return dict(sorted(calls.items()))


def snapshot(client: redis.Redis, prefix: str, *, now_s: float | None = None) -> dict[str, Any]:
    """The counters as a JSON-ready dict; latencies in milliseconds, quantiles estimated.

    ``{"api_calls": {"200": n, "timeout": n, ...}, "api_latency_ms": {"count", "sum",
    "buckets": {"<bound µs>": cumulative, ..., "+Inf": count}, "p50", "p90", "p99"},
    "rate_limit_waits": {"inline": n, "deferred": n}, "rate_limit_wait_s": {...}}``; a
    quantile is None while no call has been measured.
    """
    raw = _read(client, prefix, now_s)
    calls = {name[6:]: n for name, n in sorted(raw.items()) if name.startswith("calls:")}
    cumulative: dict[str, int] = {}
    running = 0
    for bound in (*map(str, LATENCY_BUCKETS_US), _INF):
        running += raw.get(f"lat:{bound}", 0)
        cumulative[bound] = running
    latency: dict[str, Any] = {
        "count": raw.get("lat_count", 0),
        "sum": raw.get("lat_sum_us", 0) / 1000,
        "buckets": cumulative,
    }
    for q in QUANTILES:
        latency[f"p{round(q * 100)}"] = quantile_ms(cumulative, q)
    return {
        "api_calls": calls,
        "api_latency_ms": latency,
        "rate_limit_waits": {kind: raw.get(f"waits:{kind}", 0) for kind in WAIT_KINDS},
        "rate_limit_wait_s": {kind: raw.get(f"wait_ms:{kind}", 0) / 1000 for kind in WAIT_KINDS},
    }


def quantile_ms(cumulative: Mapping[str, int], q: float) -> float | None:
    """The ``q`` quantile in ms from cumulative bucket counts, as Prometheus's
    histogram_quantile.

    Linear within the bucket the rank falls in (from 0 for the first); a rank in the ``+Inf``
    bucket gives the highest finite bound, the most the histogram can say.
    """
    total = cumulative.get(_INF, 0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for bound in LATENCY_BUCKETS_US:
        count = cumulative.get(str(bound), 0)
        if count >= rank and count > below:
            return round((lower + (bound - lower) * (rank - below) / (count - below)) / 1000, 3)
        lower, below = float(bound), count
    return LATENCY_BUCKETS_US[-1] / 1000
