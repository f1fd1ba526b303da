"""Real worker and beat processes in JSON mode: every line they write is one JSON object (the
banner and the shutdown lines included), a failed job is a WARNING naming its error, and a Redis
outage is a few dispatcher lines, not two a second."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

import tasks
from tasks.sandbox.server import SandboxServer
from tests.conftest import RedisServer, WorkerProcess, wait_for
from tests.integration.conftest import BeatProcess

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]
StartBeat = Callable[..., BeatProcess]


def json_records(text: str) -> list[dict[str, Any]]:
    """Every non-blank line as a JSON object; fails naming the first line that is not one."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= record.keys()
        records.append(record)
    return records


def test_a_json_worker_writes_only_json_lines_through_a_failure_and_an_outage(
    on_private_redis: RedisServer, start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a worker in JSON mode whose dispatcher turns every 0.5 s
    worker = start_worker(RECORDER_LOG_FORMAT="json", REDIS_URL=on_private_redis.url)
    # When a job fails (a room the API does not know)
    job = tasks.enqueue_recording("missing-room-json")
    wait_for(lambda: tasks.get_job(job.id).finished, timeout_s=20)  # type: ignore[union-attr]
    # and Redis is away for 4 s (8 dispatcher turns)
    on_private_redis.stop()
    time.sleep(4)
    on_private_redis.start()
    worker.wait_for_log("working again after", timeout_s=30)
    # and the worker is stopped
    assert worker.stop(signal.SIGTERM) == 0
    records = json_records(worker.log())

    # Then the banner and the shutdown line were JSON objects too
    assert any("celery@" in r["message"] and "[queues]" in r["message"] for r in records)
    assert any(r["message"].startswith("worker: Warm shutdown") for r in records)
    # and the failure is a WARNING with its room, error type and HTTP status
    (failed,) = [r for r in records if r.get("job_id") == job.id and r.get("status") == "failed"]
    assert failed["level"] == "WARNING" and failed["room_id"] == "missing-room-json"
    assert failed["error_type"] == "room_not_found" and failed["http_status"] == 404
    # and the outage was two dispatcher lines (gone, back), not one per turn
    outage = [r for r in records if r["logger"] == "tasks.delivery.dispatcher"]
    assert [r["outcome"] for r in outage] == ["outage_started", "outage_ended"], outage


def test_a_json_beat_writes_only_json_lines(start_beat: StartBeat) -> None:
    beat = start_beat(RECORDER_LOG_FORMAT="json")
    beat.stop(signal.SIGTERM)
    records = json_records(beat.log())
    assert any(r["message"].startswith("celery beat v") for r in records)
    assert any("Configuration ->" in r["message"] for r in records), "the banner"
    assert any(r["message"] == "beat: Acquired lock" for r in records)
