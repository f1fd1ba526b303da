"""``recorder metrics [--serve [HOST:]PORT]``: Prometheus metrics of what Flower cannot see.

:class:`RecorderCollector` is a ``prometheus_client`` custom collector: at each scrape it reads
the counters every worker adds to in Redis (``tasks.store.metrics``), the job store's counts, the
queue and the rate limiter, and asks the workers which queues they consume. Nothing is kept in
this process, so any number of exporters may run, and a restart loses nothing. Without
``--serve`` the same exposition text is printed once.

Families (the alert rules and the dashboard in ``deploy/`` use these names):

=========================================  ========  ===========================================
name                                       type      what
=========================================  ========  ===========================================
``recorder_up``                            gauge     1 when Redis answered this scrape, else 0
                                                     (and nothing else is exported)
``recorder_api_calls_total{status}``       counter   API calls by HTTP status, or ``timeout`` /
                                                     ``connection_error``
``recorder_api_latency_seconds``           histo.    API call latency (128 buckets, 2^(1/8)
                                                     apart from 0.5 ms to 30 s)
``recorder_rate_limit_waits_total{kind}``  counter   waits for the global limit: ``inline``,
                                                     ``deferred``
``recorder_rate_limit_wait_seconds_total``  counter  their total length, by ``kind``
``recorder_rate_limit_cooldown_seconds``   gauge     what is left of a 429's shared cool-down
``recorder_rate_limit_factor``             gauge     the effective rate / the configured rate
``recorder_jobs{status}``                  gauge     job records by status (``expired`` too)
``recorder_recordings_total{status}``      counter   recordings that reached each status
                                                     (webhooks); it only grows: use delta()
``recorder_jobs_due``                      gauge     jobs waiting for a time (scheduled, deferred)
``recorder_queue_depth``                   gauge     messages waiting on the Celery queue
``recorder_queue_oldest_wait_seconds``     gauge     how long the oldest message's job has
                                                     waited to be taken (0: none waiting)
``recorder_workers{state}``                gauge     workers that answered (``replying``) and
                                                     that consume the queue (``consuming``)
=========================================  ========  ===========================================
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tasks import runtime
from tasks.cli import ops
from tasks.cli.format import BadUsage
from tasks.logs import OutageLog
from tasks.store import metrics
from worker.publish import BROKER_ERRORS, queue_depth

logger = logging.getLogger(__name__)

#: ``--serve PORT`` listens on this address unless ``HOST:PORT`` says otherwise.
DEFAULT_HOST = "0.0.0.0"


class RecorderCollector(Collector):
    """Reads every family from Redis (and the workers) at scrape time; see the module docstring."""

    def __init__(self) -> None:
        # a scrape every 15 s while Redis is away: a line when it goes, one a minute, one back
        self.outage = OutageLog(logger, "metrics: Redis")

    def describe(self) -> list[Metric]:
        return []  # families are known only once read: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("recorder_up", "1 when Redis answered this scrape, else 0.")
        try:
            families = list(self._families())
        except (*BROKER_ERRORS, ConnectionError, TimeoutError) as exc:
            self.outage.failed(exc)
            up.add_metric([], 0)
            yield up
            return
        self.outage.recovered()
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        s = runtime.config()
        store = runtime.store()
        snap = metrics.snapshot(runtime.redis_conn(), s.key_prefix)
        yield from api_families(snap)
        yield from limiter_families()
        yield _labelled_gauge("recorder_jobs", "Job records by status.", "status", store.counts())
        recordings = CounterMetricFamily(
            "recorder_recordings",
            "Recordings that reached each status, from webhooks and reconciliation.",
            labels=["status"],
        )
        for status, n in store.recording_counts().items():
            recordings.add_metric([status], n)
        yield recordings
        yield _gauge("recorder_jobs_due", "Jobs waiting for a time.", store.due_count())
        yield _gauge("recorder_queue_depth", "Messages waiting on the Celery queue.", queue_depth())
        waiting = ops.oldest_wait()
        yield _gauge(
            "recorder_queue_oldest_wait_seconds",
            "How long the job of the queue's oldest message has waited to be taken.",
            0.0 if waiting is None else round(waiting.wait_s, 3),
        )
        found = ops.workers()  # waits ops.HEALTH_PING_TIMEOUT_S for the workers' replies
        yield _labelled_gauge(
            "recorder_workers",
            "Workers answering the remote control, and those consuming the queue.",
            "state",
            {"replying": len(found.replied), "consuming": len(found.consuming)},
        )


def api_families(snap: dict[str, Any]) -> Iterator[Metric]:
    """The API and wait families of a :func:`tasks.store.metrics.snapshot`."""
    calls = CounterMetricFamily(
        "recorder_api_calls",
        "VideoSDK API calls by HTTP status, or by outcome when no answer came.",
        labels=["status"],
    )
    for status, n in snap["api_calls"].items():
        calls.add_metric([status], n)
    yield calls
    latency = snap["api_latency_ms"]
    buckets = [
        (b if b == "+Inf" else repr(int(b) / 1_000_000), n) for b, n in latency["buckets"].items()
    ]
    yield HistogramMetricFamily(
        "recorder_api_latency_seconds",
        "VideoSDK API call latency.",
        buckets=buckets,
        sum_value=latency["sum"] / 1000,
    )
    waits = CounterMetricFamily(
        "recorder_rate_limit_waits",
        "Waits for the global rate limit: inline (in the worker slot) or deferred (handed back).",
        labels=["kind"],
    )
    wait_s = CounterMetricFamily(
        "recorder_rate_limit_wait_seconds", "Total length of those waits.", labels=["kind"]
    )
    for kind in metrics.WAIT_KINDS:
        waits.add_metric([kind], snap["rate_limit_waits"][kind])
        wait_s.add_metric([kind], snap["rate_limit_wait_s"][kind])
    yield waits
    yield wait_s


def limiter_families() -> Iterator[Metric]:
    state = ops.limits()
    yield _gauge(
        "recorder_rate_limit_cooldown_seconds",
        "What is left of the shared cool-down a 429's Retry-After set (0: none).",
        state["cooldown_s"],
    )
    yield _gauge(
        "recorder_rate_limit_factor",
        "The effective rate over the configured one (below 1 after a 429 without Retry-After).",
        state["factor"],
    )


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


def _labelled_gauge(name: str, help_: str, label: str, values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, help_, labels=[label])
    for key, n in values.items():
        family.add_metric([key], n)
    return family


def registry() -> CollectorRegistry:
    """A registry holding only our collector (no process or platform metrics of this exporter)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RecorderCollector())
    return reg


def exposition() -> str:
    """The Prometheus text of one scrape."""
    return generate_latest(registry()).decode()


def address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``9808``, ``127.0.0.1:9808``, ``[::1]:9808``) as (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"not [HOST:]PORT: {text!r}")
    return host or DEFAULT_HOST, number


# -- the command ---------------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--serve",
        type=address,
        metavar="[HOST:]PORT",
        help=f"serve /metrics for Prometheus on HOST:PORT (HOST {DEFAULT_HOST} when left out) "
        "until stopped, reading Redis at each scrape",
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.serve is None:
        sys.stdout.write(exposition())
        return 0
    serve(*args.serve)
    return 0


def serve(host: str, port: int, *, stop: threading.Event | None = None) -> None:
    """Serve ``/metrics`` on ``host:port`` until SIGTERM, SIGINT or ``stop`` is set."""
    stop = stop or threading.Event()
    try:
        server, thread = start_http_server(port, addr=host, registry=registry())
    except OSError as exc:
        raise BadUsage(f"--serve {host}:{port}: cannot listen: {exc.strerror or exc}") from None
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    print(f"serving /metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
