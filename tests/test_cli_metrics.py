"""``recorder metrics [--serve]``: the prometheus_client collector over our Redis counters."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from tasks.api import enqueue_recording
from tasks.cli import commands as cli
from tasks.cli import metrics as cli_metrics
from tasks.store import metrics
from tests.conftest import free_port, reset_process, wait_for

CLI_TEST_DB = int(os.environ.get("RECORDER_CLI_TEST_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{CLI_TEST_DB}"


@pytest.fixture
def rdb(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The runtime pointed at a flushed test db (restored after)."""
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.delenv("RECORDER_KEY_PREFIX", raising=False)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    reset_process()
    yield client
    client.flushdb()
    client.close()
    monkeypatch.undo()
    reset_process()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def seed(rdb: redis.Redis) -> None:
    key = metrics.key("recorder")
    for status, latency_s in ((200, 0.0025), (200, 0.0031), (503, 0.3), (429, 0.01)):
        metrics.record(
            rdb, key, metrics.call_increments(http_status=status, outcome="", latency_s=latency_s)
        )
    metrics.record(rdb, key, metrics.wait_increments(kind="deferred", wait_s=2))
    enqueue_recording("room-1")
    enqueue_recording("room-2")


def test_the_exposition_holds_every_family_with_its_type(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(rdb)
    assert cli.main(["metrics"]) == 0
    text = capsys.readouterr().out
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["recorder_api_calls"] == "counter"
    assert families["recorder_api_latency_seconds"] == "histogram"
    assert families["recorder_jobs"] == families["recorder_queue_depth"] == "gauge"
    values = samples(text)
    assert values[("recorder_up", ())] == 1
    assert values[("recorder_api_calls_total", (("status", "200"),))] == 2
    assert values[("recorder_api_calls_total", (("status", "429"),))] == 1
    assert values[("recorder_jobs", (("status", "queued"),))] == 2
    assert values[("recorder_jobs", (("status", "expired"),))] == 0
    assert values[("recorder_queue_depth", ())] == 2
    assert values[("recorder_rate_limit_waits_total", (("kind", "deferred"),))] == 1
    assert values[("recorder_workers", (("state", "consuming"),))] == 0
    assert values[("recorder_queue_oldest_wait_seconds", ())] < 5
    # the histogram: every bound, cumulative, +Inf equal to the count
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in values.items()
        if name == "recorder_api_latency_seconds_bucket"
    )
    assert len(buckets) == len(metrics.LATENCY_BUCKETS_US) + 1
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert (
        buckets[-1]
        == (float("inf"), 4)
        == (float("inf"), values[("recorder_api_latency_seconds_count", ())])
    )
    assert values[("recorder_api_latency_seconds_sum", ())] == pytest.approx(0.3156)


def test_serve_answers_scrapes_with_what_redis_holds_at_each(rdb: redis.Redis) -> None:
    # Given an exporter on a free port
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(
        target=cli_metrics.serve, args=("127.0.0.1", port), kwargs={"stop": stop}
    )
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str | None:
            try:
                return requests.get(url, timeout=5).text
            except requests.ConnectionError:
                return None

        first = samples(wait_for(scrape, timeout_s=10))
        assert first[("recorder_jobs", (("status", "queued"),))] == 0
        # When jobs and calls are added, the next scrape shows them (nothing cached)
        seed(rdb)
        second = samples(scrape() or "")
        assert second[("recorder_jobs", (("status", "queued"),))] == 2
        assert second[("recorder_api_calls_total", (("status", "503"),))] == 1
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_scrape_while_redis_is_down_says_so_in_recorder_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_process()
    try:
        assert cli.main(["metrics"]) == 0
        values = samples(capsys.readouterr().out)
        assert values == {("recorder_up", ()): 0}
    finally:
        monkeypatch.undo()
        reset_process()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("9808", ("0.0.0.0", 9808)), ("127.0.0.1:9808", ("127.0.0.1", 9808)),
     ("[::1]:9808", ("::1", 9808)), (":9808", ("0.0.0.0", 9808))],
)  # fmt: skip
def test_serve_takes_host_and_port_or_a_port(text: str, expected: tuple[str, int]) -> None:
    assert cli_metrics.address(text) == expected


@pytest.mark.parametrize("text", ["", "http", "127.0.0.1:", "1:99999", "0"])
def test_a_bad_serve_address_is_exit_2(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["metrics", "--serve", text]) == 2
    assert capsys.readouterr().err.startswith("recorder: argument --serve")
