"""Failures show where people look: a failed job is a WARNING naming its error type and HTTP
status, a connection error names the host it tried, and an outage of Redis is a few lines, not
one every half second."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.delivery.dispatcher import Dispatcher
from tasks.delivery.runner import Runner
from tasks.errors import ConnectionFailed
from tasks.sandbox.server import SandboxServer
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter
from tasks.videosdk.client import ApiClient
from tasks.videosdk.tokens import TokenMinter
from tests.conftest import API_KEY, SECRET, free_port, wait_for

RUNNER_LOGGER = "tasks.delivery.runner"


def runner(rdb: redis.Redis, store: JobStore, base_url: str) -> Runner:
    minter = TokenMinter(api_key=API_KEY, secret=SECRET)
    client = ApiClient(base_url=base_url, minter=minter, connect_timeout_s=0.5, read_timeout_s=1)
    limiter = RedisRateLimiter(client=rdb, rate_per_s=1000, prefix="t")
    return Runner(
        store=store,
        client=client,
        limiter=limiter,
        minter=minter,
        max_attempts=2,
        backoff_max_s=0.01,
        inline_wait_max_s=3.0,
        lease_s=10.0,
        rng=random.Random(3),
    )


def test_a_failed_job_is_one_warning_with_room_job_error_type_and_http_status(
    rdb: redis.Redis, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a room the API does not know (today this ended as an INFO line)
    store = JobStore(client=rdb, prefix="t", ttl_s=3600)
    sandbox.script({"status": 404, "body": {"message": "Room not found"}})
    job, _ = store.create(room_id="room-gone", request={"roomId": "room-gone"})
    # When the job fails
    with caplog.at_level(logging.INFO, logger=RUNNER_LOGGER):
        assert runner(rdb, store, sandbox.url).run(job.id).word == "failed"
    # Then its last line is a WARNING carrying everything needed to act on it
    lines = [r for r in caplog.records if r.name == RUNNER_LOGGER]
    final = lines[-1]
    assert final.levelno == logging.WARNING
    fields: dict[str, Any] = vars(final)
    assert fields["job_id"] == job.id and fields["room_id"] == "room-gone"
    assert fields["status"] == "failed" and fields["error_type"] == "room_not_found"
    assert fields["http_status"] == 404
    assert "error=room_not_found" in final.getMessage() and "http_status=404" in final.getMessage()
    # and the lines before it (running) stay at INFO
    assert all(r.levelno == logging.INFO for r in lines[:-1])


def test_a_connection_error_names_the_host_and_port_it_tried_and_no_credentials() -> None:
    # Given an API base with credentials in it and nothing listening
    port = free_port()
    minter = TokenMinter(api_key=API_KEY, secret=SECRET)
    client = ApiClient(
        base_url=f"http://user:pw-9f2@127.0.0.1:{port}/prefix",
        minter=minter,
        connect_timeout_s=0.5,
        read_timeout_s=0.5,
    )
    with pytest.raises(ConnectionFailed) as caught:
        client.start_recording({"roomId": "room-1"})
    message = str(caught.value)
    assert f"(127.0.0.1:{port})" in message
    assert "pw-9f2" not in message and "user" not in message and "prefix" not in message


def test_the_dispatcher_logs_an_outage_when_it_starts_and_ends_not_every_turn(
    rdb: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a dispatcher whose Redis does not answer, turning every 20 ms
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))
    store = JobStore(client=dead, prefix="t", ttl_s=3600)
    dispatcher = Dispatcher(store=store, publish=lambda *_: None, interval_s=0.02)
    with caplog.at_level(logging.INFO, logger="tasks.delivery.dispatcher"):
        dispatcher.start()
        try:
            time.sleep(1.0)  # about 50 failed turns
            # When Redis comes back
            store.client = rdb
            dispatcher.store = JobStore(client=rdb, prefix="t", ttl_s=3600)

            def said_back() -> bool:
                return any("working again" in r.getMessage() for r in caplog.records)

            wait_for(said_back, timeout_s=5)
        finally:
            dispatcher.stop()
    # Then one line said it went, one that it is back: not one per turn
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.delivery.dispatcher"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("dispatcher: ConnectionError") and "retrying" in lines[0]
    assert lines[1].startswith("dispatcher: working again after")
