"""A producer that dies between storing a job and publishing its message loses nothing.

The job is stored, then published with Celery's ``send_task``. Killed in between, the producer
leaves a queued job with no message: the sweeper finds it (the queue is empty) and publishes it,
and it runs once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

import tasks
from tasks.delivery.dispatcher import LOST_QUIET_S
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
    env = dict(recorder_env)
    # Given a producer killed after storing the job, before its message was published
    proc = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_PUBLISHING], cwd=ROOT, env=env, timeout=60
    )
    assert proc.returncode == -9
    (job,) = tasks.list_jobs(room_id="room-orphan")
    assert job.status.value == "queued" and rdb.llen("recorder") == 0
    # When a worker runs, its dispatcher publishes the job
    start_worker(RECORDER_SWEEP_INTERVAL="1")
    # Then the job runs, once
    (done,) = wait_for(lambda: finished([job.id]), timeout_s=LOST_QUIET_S + 15)
    assert done.status.value == "succeeded" and done.attempts == 1
    assert [c["room_id"] for c in sandbox.calls()] == ["room-orphan"]
