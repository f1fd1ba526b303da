"""Metrics in Redis: counting, snapshot and quantiles, Prometheus text, and the runner's wiring."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
import redis
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
    increments = metrics.call_increments(
        http_status=200, outcome="ok", latency_s=0.0301, now_s=1_000_005.0
    )
    metrics.record(spy, KEY, increments)  # type: ignore[arg-type]
    assert spy.round_trips == 1
    assert fields(rdb) == {
        "calls:200": 1,
        "recent:1000000:200": 1,
        "lat:32000": 1,  # 2^(40/8) = 32 ms: the first bound at or above 30.1 ms
        "lat_count": 1,
        "lat_sum_us": 30100,
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


def test_latency_buckets_are_under_a_tenth_apart_from_half_a_ms_to_30_s() -> None:
    bounds = metrics.LATENCY_BUCKETS_US
    assert bounds[0] == 500 and 30_000_000 < bounds[-1] < 31_000_000
    assert all(1 < b / a <= 1.095 for a, b in itertools.pairwise(bounds))


@pytest.mark.parametrize(
    ("latency_us", "bucket"),
    [(0, "500"), (500, "500"), (500.1, "545"), (2000, "2000"), (31e6, "+Inf"), (1e12, "+Inf")],
)
def test_latency_buckets_include_their_upper_bound(latency_us: float, bucket: str) -> None:
    assert metrics.bucket_of(latency_us) == bucket


@pytest.mark.parametrize(
    ("low_ms", "high_ms"), [(2, 3), (0.6, 0.9), (40, 60), (240, 260), (1000, 5000)]
)
def test_quantiles_from_the_buckets_are_within_a_tenth_of_the_true_ones(
    rdb: redis.Redis, low_ms: float, high_ms: float
) -> None:
    # Given 1,000 calls spread over [low, high] ms (today's complaint: 2-3 ms read as 12 ms)
    rng = random.Random(7)
    latencies = sorted(rng.uniform(low_ms, high_ms) for _ in range(1000))
    pipe_fields: dict[str, int] = {}
    for latency_ms in latencies:
        metrics.merge(
            pipe_fields,
            metrics.call_increments(http_status=200, outcome="ok", latency_s=latency_ms / 1000),
        )
    metrics.record(rdb, KEY, pipe_fields)
    # Then p50, p90 and p99 are each within 10% of the true quantile
    latency = metrics.snapshot(rdb, "t")["api_latency_ms"]
    for q in (0.5, 0.9, 0.99):
        true = latencies[round(q * len(latencies)) - 1]
        assert latency[f"p{round(q * 100)}"] == pytest.approx(true, rel=0.1), q


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
    at_10, at_80, at_3000 = (metrics.bucket_of(ms * 1000) for ms in (10, 80, 3000))
    assert latency["buckets"][at_10] == 50 and latency["buckets"][at_80] == 90
    assert latency["buckets"][at_3000] == latency["buckets"]["+Inf"] == 100
    # linear within the bucket the rank falls in, as Prometheus's histogram_quantile: a rank
    # at the top of a bucket is its upper bound, at most 9.5% above the true value
    assert latency["p50"] == int(at_10) / 1000 == pytest.approx(10, rel=0.095)
    assert latency["p90"] == int(at_80) / 1000 == pytest.approx(80, rel=0.095)
    assert latency["p99"] == pytest.approx(3000, rel=0.095)


def test_a_quantile_in_the_overflow_bucket_is_the_highest_bound() -> None:
    cumulative = {str(b): 0 for b in metrics.LATENCY_BUCKETS_US} | {"+Inf": 3}
    assert metrics.quantile_ms(cumulative, 0.5) == metrics.LATENCY_BUCKETS_US[-1] / 1000


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


def test_recent_calls_count_only_the_window_and_stale_buckets_are_deleted(
    rdb: redis.Redis,
) -> None:
    now = 2_000_000.0

    def call(status: int, ago_s: float) -> None:
        metrics.record(
            rdb,
            KEY,
            metrics.call_increments(
                http_status=status, outcome="", latency_s=None, now_s=now - ago_s
            ),
        )

    call(401, 5)
    call(401, 35)
    call(200, 90)  # before the last minute
    call(200, 3600)  # older than the fields are kept
    assert metrics.recent_calls(rdb, "t", window_s=60, now_s=now) == {"401": 2}
    assert metrics.recent_calls(rdb, "t", window_s=120, now_s=now) == {"200": 1, "401": 2}
    recent = [f for f in fields(rdb) if f.startswith("recent:")]
    assert len(recent) == 3, "the hour-old bucket was deleted by the read"
    assert metrics.snapshot(rdb, "t")["api_calls"] == {"200": 2, "401": 2}, "totals stay"
    metrics.prune(rdb, "t", now_s=now + metrics.RECENT_KEEP_S + 100)
    assert not [f for f in fields(rdb) if f.startswith("recent:")]


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
