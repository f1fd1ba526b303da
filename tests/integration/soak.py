"""The soak: many jobs through API faults while workers are SIGKILLed and restarted.

Shared by the CI test (scaled down) and ``tests/benchmarks/soak.py`` (the full 1,000 jobs).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import tasks
from tasks.job import Status
from tasks.sandbox.server import SandboxServer
from tests.conftest import WorkerProcess, finished, wait_for

#: worker settings of the soak: short timeouts so a killed worker's jobs come back quickly
SOAK_ENV = {
    "RECORDER_READ_TIMEOUT": "3",
    "RECORDER_CONNECT_TIMEOUT": "1",
    "RECORDER_INLINE_WAIT_MAX": "1",
    "RECORDER_SWEEP_INTERVAL": "1",
    "RECORDER_RATE_LIMIT": "500/s",
    "RECORDER_BACKOFF_MAX": "0.5",
    "RECORDER_CONCURRENCY": "16",
}


@dataclass
class SoakResult:
    jobs: int
    seconds: float
    statuses: Counter[str]
    starts_per_room: Counter[str]
    calls_by_status: Counter[int]
    kills: int
    lost_deliveries: int
    problems: list[str] = field(default_factory=list)


def run_soak(
    *,
    n_jobs: int,
    sandbox: SandboxServer,
    start_worker: Callable[[], WorkerProcess],
    kills: int = 2,
    timeout_s: float = 300.0,
) -> SoakResult:
    """Enqueue ``n_jobs``, SIGKILL and replace the worker ``kills`` times while they run."""
    sandbox.faults.error_rate = 0.10
    sandbox.faults.too_many_rate = 0.05
    sandbox.faults.retry_after_s = 0.2
    sandbox.faults.latency_jitter_s = 0.1
    worker = start_worker()
    started = time.monotonic()
    ids = [tasks.enqueue_recording(f"soak-{i}").id for i in range(n_jobs)]

    def done_count() -> int:
        return sum(1 for j in tasks.list_jobs(limit=1000) if j.finished)

    for k in range(kills):
        target = n_jobs * (k + 1) // (kills + 1)
        wait_for(lambda t=target: done_count() >= t, timeout_s=timeout_s, interval_s=0.2)  # type: ignore[misc]
        worker.stop(signal.SIGKILL)
        worker = start_worker()

    wait_for(lambda: finished(ids), timeout_s=timeout_s, interval_s=0.5)
    seconds = time.monotonic() - started
    jobs = [tasks.get_job(i) for i in ids]
    calls = [c for c in sandbox.calls() if c["path"].endswith("/start")]
    result = SoakResult(
        jobs=n_jobs,
        seconds=seconds,
        statuses=Counter(j.status.value for j in jobs if j is not None),
        starts_per_room=Counter(c["room_id"] for c in calls if c["status"] == 200),
        calls_by_status=Counter(c["status"] for c in calls),
        kills=kills,
        lost_deliveries=sum(j.lost_deliveries for j in jobs if j is not None),
    )
    if sum(result.statuses.values()) != n_jobs:
        result.problems.append(f"{n_jobs - sum(result.statuses.values())} job records missing")
    twice = [room for room, n in result.starts_per_room.items() if n > 1]
    if twice:
        result.problems.append(f"rooms started more than once: {twice[:10]}")
    for job in jobs:
        succeeded = job is not None and job.status is Status.SUCCEEDED
        if succeeded and result.starts_per_room[job.room_id] != 1:  # type: ignore[union-attr]
            result.problems.append(f"{job.room_id} succeeded without a start")  # type: ignore[union-attr]
    return result
