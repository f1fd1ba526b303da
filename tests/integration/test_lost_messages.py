"""A job whose message is gone (acked without a claim, or prefetched by a worker that was killed)
is found and published again within the stated bound, and runs once.

Bound: ``LOST_QUIET_S`` (15 s) + one sweep interval (1 s here) + one dispatch (0.5 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tasks import runtime
from tasks.delivery.dispatcher import INTERVAL_S, LOST_QUIET_S
from tasks.sandbox.server import SandboxServer
from tests.conftest import WorkerProcess, finished, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartWorker = Callable[..., WorkerProcess]
SWEEP_S = 1.0
BOUND_S = LOST_QUIET_S + SWEEP_S + INTERVAL_S


def test_a_queued_job_whose_message_was_lost_runs_once_within_the_bound(
    start_worker: StartWorker, sandbox: SandboxServer
) -> None:
    # Given a worker, and a stored job whose message never reached the queue (as when a worker
    # acked it without a claim, or its producer died before publishing)
    start_worker(RECORDER_SWEEP_INTERVAL=str(SWEEP_S))
    job, _ = runtime.store().create(room_id="room-lost", request={"roomId": "room-lost"})
    started = time.monotonic()
    # Then the sweeper finds it (the queue is empty) and it runs, once, within the bound
    (done,) = wait_for(lambda: finished([job.id]), timeout_s=BOUND_S + 5, interval_s=0.2)
    elapsed_s = time.monotonic() - started
    assert done.status.value == "succeeded" and done.attempts == 1
    assert [c["room_id"] for c in sandbox.calls()] == ["room-lost"]
    assert LOST_QUIET_S - 1 <= elapsed_s <= BOUND_S + 3, elapsed_s
