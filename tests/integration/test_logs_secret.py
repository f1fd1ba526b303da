"""A worker's JSON log through API failures: one parseable object per line, no secret, no token."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

import tasks
from tasks.job import Status
from tasks.logs import JWT
from tasks.sandbox.server import SandboxServer
from tasks.videosdk.tokens import TokenMinter
from tests.conftest import API_KEY, SECRET, WorkerProcess, finished, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]
#: Celery's own text format, which JSON mode must replace for every record.
TEXT_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+: [A-Z]+/")


def test_json_log_of_a_run_with_failures_parses_and_leaks_nothing(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given an API that fails in several ways, and whose error bodies even echo a token and the
    # secret (as a careless proxy might), plus random 5xx
    token = TokenMinter(api_key=API_KEY, secret=SECRET).token()
    sandbox.script(
        {"status": 503, "body": {"message": f"upstream said {token}"}},
        {"status": 401, "body": {"message": f"invalid token {token}"}},
        {"status": 400, "body": {"message": f"bad request, secret={SECRET}"}},
    )
    sandbox.faults.error_rate = 0.3
    worker = start_worker("--loglevel=DEBUG", RECORDER_LOG_FORMAT="json")
    # When a batch of jobs runs to the end
    ids = [tasks.enqueue_recording(f"room-log-{i}").id for i in range(8)]
    jobs = wait_for(lambda: finished(ids), timeout_s=60, interval_s=0.2)
    assert Status.FAILED in {j.status for j in jobs}, "the scripted 400 failed a job"
    assert sum(j.attempts for j in jobs) > len(ids), "some calls were retried"
    log = worker.log()

    # Then every record is one JSON object on one line
    records: list[dict[str, Any]] = []
    for line in log.splitlines():
        assert not TEXT_RECORD.match(line), f"a record escaped as text: {line}"
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["level"] == "DEBUG" for r in records)

    # and the runner's state changes and calls carry their fields
    runner = [r for r in records if r["logger"] == "tasks.delivery.runner"]
    changes = [r for r in runner if "status" in r]
    assert changes and all(r["job_id"] in ids and r["room_id"] for r in changes)
    assert {r["status"] for r in changes} >= {"retrying", "succeeded", "failed"}
    for job in jobs:
        final = [r for r in changes if r["job_id"] == job.id and r["status"] == job.status.value]
        assert final and final[-1]["room_id"] == job.room_id
        assert final[-1]["attempt"] == job.attempts
    calls = [r for r in runner if "outcome" in r and "latency_ms" in r]
    assert {r["http_status"] for r in calls} >= {200, 400, 401, 503}
    assert all(r["latency_ms"] is not None and r["attempt"] >= 1 for r in calls)

    # and neither the secret nor any token appears anywhere in the log
    assert SECRET not in log
    assert token not in log
    assert not JWT.search(log)
