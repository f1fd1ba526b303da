"""Metrics Flower lacks: API calls by HTTP status, API latency, rate-limit waits; all in Redis.

Every worker adds to ONE hash, ``{prefix}:metrics``, so the numbers cover the whole fleet and
survive worker restarts. It never expires (these are counters; delete the key to reset them).
Fields:

==========================  ===================================================================
field                       counts
==========================  ===================================================================
``calls:{status}``          API calls by HTTP status (``200``, ``503``), or by outcome when no
                            answer came (``timeout``, ``connection_error``)
``latency:{bound_ms}``      calls whose latency was in (previous bound, ``bound_ms``]: one
                            bucket each, not cumulative; ``latency:+Inf`` above the last bound
``latency_count``           calls with a measured latency
``latency_sum_us``          their total latency, microseconds (an integer, so HINCRBY adds it)
``waits:{kind}``            rate-limit waits: ``inline`` (slept in the worker slot) or
                            ``deferred`` (job handed back to the due set)
``wait_ms:{kind}``          their total length, milliseconds
==========================  ===================================================================

Workers send their increments along with the job-store write that follows each call (no round
trip of their own); :func:`record` applies increments on their own. A failure to count
is logged at debug level and never fails the job. :func:`snapshot` reads the hash back as a dict,
with p50/p90/p99 estimated from the buckets, and :func:`prometheus_text` renders a snapshot
(plus job counts and queue depth) in the Prometheus text exposition format.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: upper bounds of the latency histogram's buckets, milliseconds (Prometheus's ``le``).
LATENCY_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
WAIT_KINDS = ("inline", "deferred")
QUANTILES = (0.5, 0.9, 0.99)
_INF = "+Inf"


def key(prefix: str) -> str:
    """The metrics hash of the deployment under ``prefix``."""
    return f"{prefix}:metrics"


def bucket_of(latency_ms: float) -> str:
    """The bucket field suffix a latency falls in: the first bound it does not exceed."""
    for bound in LATENCY_BUCKETS_MS:
        if latency_ms <= bound:
            return str(bound)
    return _INF


def call_increments(
    *, http_status: int | None, outcome: str, latency_s: float | None
) -> dict[str, int]:
    """The HINCRBYs that count one API call (by status, else by outcome) and its latency."""
    fields = {f"calls:{http_status if http_status is not None else outcome}": 1}
    if latency_s is not None:
        latency_ms = max(0.0, latency_s * 1000)
        fields[f"latency:{bucket_of(latency_ms)}"] = 1
        fields["latency_count"] = 1
        fields["latency_sum_us"] = round(latency_ms * 1000)
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
    _execute(pipe)


def _execute(pipe: Any) -> None:
    try:
        pipe.execute()
    except redis.RedisError as exc:  # counting is best effort; the job's own writes will retry
        logger.debug("metrics not counted: %s: %s", type(exc).__name__, exc)


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """The counters as a JSON-ready dict; latencies in milliseconds, quantiles estimated.

    ``{"api_calls": {"200": n, "timeout": n, ...}, "api_latency_ms": {"count", "sum",
    "buckets": {"25": cumulative, ..., "+Inf": count}, "p50", "p90", "p99"},
    "rate_limit_waits": {"inline": n, "deferred": n}, "rate_limit_wait_s": {...}}``; a
    quantile is None while no call has been measured.
    """
    raw = {
        k.decode() if isinstance(k, bytes) else str(k): int(v)
        for k, v in client.hgetall(key(prefix)).items()
    }
    calls = {name[6:]: n for name, n in sorted(raw.items()) if name.startswith("calls:")}
    cumulative: dict[str, int] = {}
    running = 0
    for bound in (*map(str, LATENCY_BUCKETS_MS), _INF):
        running += raw.get(f"latency:{bound}", 0)
        cumulative[bound] = running
    latency: dict[str, Any] = {
        "count": raw.get("latency_count", 0),
        "sum": raw.get("latency_sum_us", 0) / 1000,
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
    """The ``q`` quantile from cumulative bucket counts, as Prometheus's histogram_quantile.

    Linear within the bucket the rank falls in (from 0 for the first); a rank in the ``+Inf``
    bucket gives the highest finite bound, the most the histogram can say.
    """
    total = cumulative.get(_INF, 0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for bound in LATENCY_BUCKETS_MS:
        count = cumulative.get(str(bound), 0)
        if count >= rank and count > below:
            return round(lower + (bound - lower) * (rank - below) / (count - below), 1)
        lower, below = float(bound), count
    return float(LATENCY_BUCKETS_MS[-1])


def prometheus_text(
    snap: Mapping[str, Any],
    *,
    jobs: Mapping[str, int] | None = None,
    queue_depth: int | None = None,
    due: int | None = None,
) -> str:
    """``snap`` (from :func:`snapshot`) and the given gauges in the Prometheus text format."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.extend((f"# HELP {name} {help_}", f"# TYPE {name} {kind}"))

    family(
        "recorder_api_calls_total",
        "counter",
        "VideoSDK API calls by HTTP status, or by outcome when no answer came.",
    )
    for status, n in snap["api_calls"].items():
        out.append(f"recorder_api_calls_total{{status={_label(status)}}} {n}")

    latency = snap["api_latency_ms"]
    family("recorder_api_latency_seconds", "histogram", "VideoSDK API call latency.")
    for bound, n in latency["buckets"].items():
        le = bound if bound == _INF else _number(int(bound) / 1000)
        out.append(f"recorder_api_latency_seconds_bucket{{le={_label(le)}}} {n}")
    out.append(f"recorder_api_latency_seconds_sum {_number(latency['sum'] / 1000)}")
    out.append(f"recorder_api_latency_seconds_count {latency['count']}")

    family(
        "recorder_rate_limit_waits_total",
        "counter",
        "Waits for the global rate limit: inline (in the worker slot) or deferred (handed back).",
    )
    for kind, n in snap["rate_limit_waits"].items():
        out.append(f"recorder_rate_limit_waits_total{{kind={_label(kind)}}} {n}")
    family("recorder_rate_limit_wait_seconds_total", "counter", "Total length of those waits.")
    for kind, s in snap["rate_limit_wait_s"].items():
        out.append(f"recorder_rate_limit_wait_seconds_total{{kind={_label(kind)}}} {_number(s)}")

    if jobs is not None:
        family("recorder_jobs", "gauge", "Job records by status.")
        for status, n in jobs.items():
            out.append(f"recorder_jobs{{status={_label(status)}}} {n}")
    if queue_depth is not None:
        family("recorder_queue_depth", "gauge", "Messages waiting on the Celery queue.")
        out.append(f"recorder_queue_depth {queue_depth}")
    if due is not None:
        family("recorder_jobs_due", "gauge", "Jobs waiting for a time (scheduled or deferred).")
        out.append(f"recorder_jobs_due {due}")
    return "\n".join(out) + "\n"


def _label(value: str) -> str:
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
