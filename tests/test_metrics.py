"""Metrics in Redis: counting, snapshot and quantiles, Prometheus text, and the runner's wiring."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.delivery.runner import Runner
from tasks.sandbox.server import SandboxServer
from tasks.store import metrics
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter
from tasks.videosdk.client import ApiClient
from tasks.videosdk.tokens import TokenMinter
from tests.conftest import API_KEY, SECRET, free_port

KEY = metrics.key("t")


class CountingClient:
    """A client that lets only pipelines through and counts their round trips."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._client.pipeline(transaction=transaction)
        execute = pipe.execute

        def counted() -> Any:
            self.round_trips += 1
            return execute()

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


def fields(rdb: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in rdb.hgetall(KEY).items()}


def test_a_call_is_counted_by_status_and_latency_bucket_in_one_round_trip(
    rdb: redis.Redis,
) -> None:
    spy = CountingClient(rdb)
    metrics.record(
        spy, KEY, metrics.call_increments(http_status=200, outcome="ok", latency_s=0.0301)
    )  # type: ignore[arg-type]
    assert spy.round_trips == 1
    assert fields(rdb) == {
        "calls:200": 1,
        "latency:50": 1,
        "latency_count": 1,
        "latency_sum_us": 30100,
    }


def test_a_call_without_an_answer_is_counted_by_its_outcome(rdb: redis.Redis) -> None:
    metrics.record(
        rdb, KEY, metrics.call_increments(http_status=None, outcome="timeout", latency_s=2.0)
    )
    metrics.record(
        rdb,
        KEY,
        metrics.call_increments(http_status=None, outcome="connection_error", latency_s=None),
    )
    snap = metrics.snapshot(rdb, "t")
    assert snap["api_calls"] == {"connection_error": 1, "timeout": 1}
    assert snap["api_latency_ms"]["count"] == 1 and snap["api_latency_ms"]["sum"] == 2000.0


@pytest.mark.parametrize(
    ("latency_ms", "bucket"),
    [(0, "25"), (25, "25"), (25.01, "50"), (9999, "10000"), (10000.5, "+Inf"), (1e9, "+Inf")],
)
def test_latency_buckets_include_their_upper_bound(latency_ms: float, bucket: str) -> None:
    assert metrics.bucket_of(latency_ms) == bucket


def test_snapshot_estimates_quantiles_from_the_buckets(rdb: redis.Redis) -> None:
    for latency_ms, n in ((10, 50), (80, 40), (3000, 10)):
        for _ in range(n):
            metrics.record(
                rdb,
                KEY,
                metrics.call_increments(http_status=200, outcome="ok", latency_s=latency_ms / 1000),
            )
    latency = metrics.snapshot(rdb, "t")["api_latency_ms"]
    assert latency["count"] == 100 and latency["sum"] == 50 * 10 + 40 * 80 + 10 * 3000
    assert latency["buckets"]["25"] == 50 and latency["buckets"]["100"] == 90
    assert latency["buckets"]["5000"] == latency["buckets"]["+Inf"] == 100
    # linear within the bucket the rank falls in, as Prometheus's histogram_quantile
    assert (latency["p50"], latency["p90"], latency["p99"]) == (25.0, 100.0, 4750.0)


def test_a_quantile_in_the_overflow_bucket_is_the_highest_bound() -> None:
    cumulative = {str(b): 0 for b in metrics.LATENCY_BUCKETS_MS} | {"+Inf": 3}
    assert metrics.quantile_ms(cumulative, 0.5) == 10000.0


def test_an_empty_snapshot_has_zeros_and_no_quantiles(rdb: redis.Redis) -> None:
    snap = metrics.snapshot(rdb, "t")
    assert snap["api_calls"] == {}
    assert snap["rate_limit_waits"] == {"inline": 0, "deferred": 0}
    assert snap["api_latency_ms"]["p50"] is None and snap["api_latency_ms"]["count"] == 0


def test_waits_are_counted_by_kind_with_their_length(rdb: redis.Redis) -> None:
    metrics.record(rdb, KEY, metrics.wait_increments(kind="inline", wait_s=0.25))
    metrics.record(rdb, KEY, metrics.wait_increments(kind="inline", wait_s=0.5))
    metrics.record(rdb, KEY, metrics.wait_increments(kind="deferred", wait_s=9.0))
    snap = metrics.snapshot(rdb, "t")
    assert snap["rate_limit_waits"] == {"inline": 2, "deferred": 1}
    assert snap["rate_limit_wait_s"] == {"inline": 0.75, "deferred": 9.0}


def test_counting_against_a_dead_redis_does_not_raise() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    metrics.record(dead, KEY, metrics.call_increments(http_status=200, outcome="ok", latency_s=0.1))
    metrics.record(dead, KEY, metrics.wait_increments(kind="inline", wait_s=0.1))


def test_prometheus_text_parses_and_holds_every_family(rdb: redis.Redis) -> None:
    metrics.record(rdb, KEY, metrics.call_increments(http_status=200, outcome="ok", latency_s=0.04))
    metrics.record(
        rdb, KEY, metrics.call_increments(http_status=503, outcome="server_error", latency_s=0.3)
    )
    metrics.record(rdb, KEY, metrics.wait_increments(kind="deferred", wait_s=2))
    text = metrics.prometheus_text(
        metrics.snapshot(rdb, "t"), jobs={"queued": 3, "succeeded": 7}, queue_depth=2, due=1
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert families["recorder_api_calls"].type == "counter"
    assert samples[("recorder_api_calls_total", (("status", "200"),))] == 1
    assert samples[("recorder_api_calls_total", (("status", "503"),))] == 1
    assert families["recorder_api_latency_seconds"].type == "histogram"
    buckets = [
        (float(dict(labels)["le"]), v)
        for (name, labels), v in samples.items()
        if name == "recorder_api_latency_seconds_bucket"
    ]
    assert [le for le, _ in buckets] == [b / 1000 for b in metrics.LATENCY_BUCKETS_MS] + [
        float("inf")
    ]
    assert [v for _, v in buckets] == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]  # 40 ms, 300 ms
    assert samples[("recorder_api_latency_seconds_sum", ())] == pytest.approx(0.34)
    assert samples[("recorder_api_latency_seconds_count", ())] == 2
    assert samples[("recorder_rate_limit_waits_total", (("kind", "deferred"),))] == 1
    assert samples[("recorder_rate_limit_waits_total", (("kind", "inline"),))] == 0
    assert samples[("recorder_jobs", (("status", "succeeded"),))] == 7
    assert samples[("recorder_queue_depth", ())] == 2
    assert samples[("recorder_jobs_due", ())] == 1
    assert 'le="+Inf"' in text and text.endswith("\n")


def test_prometheus_text_escapes_label_values() -> None:
    snap: dict[str, Any] = {
        "api_calls": {'we"ird\\': 1},
        "api_latency_ms": {"count": 0, "sum": 0.0, "buckets": {"+Inf": 0}},
        "rate_limit_waits": {},
        "rate_limit_wait_s": {},
    }
    text = metrics.prometheus_text(snap)
    assert 'recorder_api_calls_total{status="we\\"ird\\\\"} 1' in text
    family = next(text_string_to_metric_families(text))
    assert family.samples[0].labels == {"status": 'we"ird\\'}


# -- the runner counts what it does --------------------------------------------------------------


def make_runner(
    rdb: redis.Redis, store: JobStore, sandbox: SandboxServer, **options: Any
) -> Runner:
    minter = TokenMinter(api_key=API_KEY, secret=SECRET)
    client = ApiClient(base_url=sandbox.url, minter=minter, connect_timeout_s=1, read_timeout_s=2)
    limiter = RedisRateLimiter(client=rdb, rate_per_s=options.pop("rate_per_s", 1000), prefix="t")
    settings: dict[str, Any] = {
        "max_attempts": 8,
        "backoff_max_s": 0.01,
        "inline_wait_max_s": 3.0,
        "lease_s": 10.0,
        "rng": random.Random(3),
        **options,
    }
    return Runner(store=store, client=client, limiter=limiter, minter=minter, **settings)


def enqueue(store: JobStore, room: str) -> str:
    job, _ = store.create(room_id=room, request={"roomId": room})
    return job.id


def test_the_runner_counts_every_api_call_by_status(
    rdb: redis.Redis, sandbox: SandboxServer
) -> None:
    store = JobStore(client=rdb, prefix="t", ttl_s=3600)
    sandbox.script({"status": 503}, {"status": 503}, {"status": 200})
    assert make_runner(rdb, store, sandbox).run(enqueue(store, "room-1")).word == "succeeded"
    snap = metrics.snapshot(rdb, "t")
    assert snap["api_calls"] == {"200": 1, "503": 2}
    assert snap["api_latency_ms"]["count"] == 3


def test_the_runner_counts_inline_and_deferred_rate_limit_waits(
    rdb: redis.Redis, sandbox: SandboxServer
) -> None:
    store = JobStore(client=rdb, prefix="t", ttl_s=3600)
    # Given 4 calls/s and slots held for at most 0.5 s: the second job waits in place
    runner = make_runner(rdb, store, sandbox, rate_per_s=4, inline_wait_max_s=0.5)
    assert runner.run(enqueue(store, "room-a")).word == "succeeded"
    assert runner.run(enqueue(store, "room-b")).word == "succeeded"
    waits = metrics.snapshot(rdb, "t")["rate_limit_waits"]
    assert waits == {"inline": 1, "deferred": 0}
    # and at 0.1 calls/s the next one is handed back to the due set
    slow = make_runner(rdb, store, sandbox, rate_per_s=0.1, inline_wait_max_s=0.5)
    assert slow.run(enqueue(store, "room-c")).word in {"succeeded", "deferred"}
    assert slow.run(enqueue(store, "room-d")).word == "deferred"
    snap = metrics.snapshot(rdb, "t")
    assert snap["rate_limit_waits"]["deferred"] >= 1
    assert snap["rate_limit_wait_s"]["deferred"] > 5
