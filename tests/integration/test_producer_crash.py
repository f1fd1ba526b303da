"""A producer that dies between storing a job and publishing its message loses nothing.

The job is stored with a due entry ("being published"); the producer publishes with Celery's
``send_task`` and then clears it. Killed in between, the job waits in Redis until a dispatcher
publishes it (``RECORDER_REDISPATCH_AFTER``), and it runs once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

import tasks
from tasks.sandbox.server import SandboxServer
from tests.conftest import ROOT, WorkerProcess, finished, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]

#: a producer that SIGKILLs itself where it would publish the job's message
DIES_BEFORE_PUBLISHING = """
import os, signal
from tasks import api
api.publish_job = lambda job_id, room_id: os.kill(os.getpid(), signal.SIGKILL)
api.enqueue_recording("room-orphan")
"""


def test_a_job_whose_producer_died_before_publishing_runs_once(
    recorder_env: dict[str, str],
    start_worker: StartWorker,
    sandbox: SandboxServer,
    rdb: redis.Redis,
) -> None:
    env = {**recorder_env, "RECORDER_REDISPATCH_AFTER": "2"}
    # Given a producer killed after storing the job, before its message was published
    proc = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_PUBLISHING], cwd=ROOT, env=env, timeout=60
    )
    assert proc.returncode == -9
    (job,) = tasks.list_jobs(room_id="room-orphan")
    assert job.status.value == "queued" and rdb.llen("recorder") == 0
    # When a worker runs, its dispatcher publishes the job
    start_worker(RECORDER_REDISPATCH_AFTER="2")
    # Then the job runs, once
    (done,) = wait_for(lambda: finished([job.id]), timeout_s=30)
    assert done.status.value == "succeeded" and done.attempts == 1
    assert [c["room_id"] for c in sandbox.calls()] == ["room-orphan"]
