"""The soak: many jobs through API faults, SIGKILLed workers and a Redis restart.

Shared by the CI test (``tests/integration/test_soak.py``, scaled down, once per pool) and
``tests/benchmarks/soak.py`` (1,000 jobs, five runs). One run:

- ``n_jobs`` jobs for as many distinct rooms, on a private Redis with AOF on (the caller's
  :class:`~tests.conftest.RedisServer`; this process must already be a producer of it);
- the sandbox answers 10% of start calls 5xx, 5% 429 with ``Retry-After: 1``, after 0-50 ms;
- two worker processes of the given pool (``threads`` or ``prefork``) with ``SOAK_ENV``: a
  200/s rate limit, 8 attempts, backoff at most 1 s, and short timeouts so a killed worker's
  jobs come back quickly (lease = inline wait + connect + read + 5 = 10 s, sweep every 1 s);
- when a third of the rooms have been started (a 2xx start call), the oldest worker's whole
  process group (prefork children too) is SIGKILLed and a new worker started; again at a half;
- at two thirds Redis is restarted with SIGTERM (it writes its AOF and loads it again).

It then waits for every job to be final, at most ``final_within_s`` from the first enqueue, and
reports what the issue asks ("no job stuck, no worker down"): jobs final, jobs stuck at the
deadline, rooms started twice, API calls made for a room after its job's ``finished_at``, the
seconds from the last fault (the Redis restart) to the last job's ``finished_at``, and every
worker that was not SIGKILLed on purpose but is no longer running. ``problems`` lists anything
wrong; empty means the run proved the guarantees.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

import tasks
from tasks.job import Job, Status
from tasks.sandbox.server import SandboxServer
from tests.conftest import RedisServer, WorkerProcess

#: worker settings of the soak: the issue's limits, short timeouts so a killed worker's jobs
#: come back quickly (lease 1 + 1 + 3 + 5 = 10 s, a sweep every second)
SOAK_ENV = {
    "RECORDER_READ_TIMEOUT": "3",
    "RECORDER_CONNECT_TIMEOUT": "1",
    "RECORDER_INLINE_WAIT_MAX": "1",
    "RECORDER_SWEEP_INTERVAL": "1",
    "RECORDER_RATE_LIMIT": "200/s",
    "RECORDER_MAX_ATTEMPTS": "8",
    "RECORDER_BACKOFF_MAX": "1",
    "RECORDER_CONCURRENCY": "16",
}
POOLS = ("threads", "prefork")
#: fractions of rooms started at which a worker is SIGKILLed, and Redis restarted
KILL_AT = (1 / 3, 1 / 2)
REDIS_RESTART_AT = 2 / 3
#: a call this long after ``finished_at`` is a call made after the job finished (finished_at
#: has millisecond resolution, cut rather than rounded)
CLOCK_SLACK_S = 0.002

#: starts a ready worker process with these settings on top of the caller's
StartWorker = Callable[..., WorkerProcess]


@dataclass
class SoakResult:
    pool: str
    jobs: int
    seconds: float
    final: int
    stuck: list[Job]
    late: list[Job]  # final, but later than final_within_s after the first enqueue
    statuses: Counter[str]
    starts_per_room: Counter[str]
    calls_by_status: Counter[int]
    calls_after_finish: list[dict[str, Any]]
    faults: list[tuple[str, float]]  # (what, epoch s), in order
    redis_down_s: float
    after_last_fault_s: float | None  # last job's finished_at minus the last fault's time
    kills: int
    lost_deliveries: int
    dead_workers: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def rooms_started_twice(self) -> list[str]:
        return sorted(room for room, n in self.starts_per_room.items() if n > 1)

    def line(self) -> str:
        """One line with the run's figures."""
        after = "-" if self.after_last_fault_s is None else f"{self.after_last_fault_s:.1f}s"
        calls = ",".join(f"{k}:{v}" for k, v in sorted(self.calls_by_status.items()))
        return (
            f"pool={self.pool} jobs={self.jobs} final={self.final} stuck={len(self.stuck)} "
            f"late={len(self.late)} started_twice={len(self.rooms_started_twice)} "
            f"calls_after_finish={len(self.calls_after_finish)} "
            f"last_fault_to_last_final={after} redis_down={self.redis_down_s:.1f}s "
            f"total={self.seconds:.1f}s kills={self.kills} lost_deliveries={self.lost_deliveries} "
            f"statuses={dict(self.statuses)} api={{{calls}}} "
            f"problems={'; '.join(self.problems) if self.problems else 'none'}"
        )


def epoch(iso: str) -> float:
    """A record's ISO 8601 UTC time (``...Z``) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def starts(sandbox: SandboxServer) -> Counter[str]:
    """Successful (2xx) start calls per room."""
    return Counter(
        c["room_id"]
        for c in sandbox.calls()
        if c["path"].endswith("/start") and c["status"] is not None and 200 <= c["status"] < 300
    )


def poll_jobs(pending: dict[str, Job | None]) -> None:
    """Refresh the records of the jobs not yet final; a Redis that is down is tried next time."""
    for job_id, job in pending.items():
        if job is not None and job.finished:
            continue
        try:
            pending[job_id] = tasks.get_job(job_id)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return


def run_soak(
    *,
    n_jobs: int,
    pool: str,
    sandbox: SandboxServer,
    redis_server: RedisServer,
    start_worker: StartWorker,
    final_within_s: float = 240.0,
    room_prefix: str = "soak",
) -> SoakResult:
    """One soak run; see the module docstring. ``start_worker(**env)`` returns a ready worker
    of ``redis_server`` and ``sandbox`` with ``env`` on top of its settings."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}")
    sandbox.faults.error_rate = 0.10
    sandbox.faults.too_many_rate = 0.05
    sandbox.faults.retry_after_s = 1.0
    sandbox.faults.latency_s = 0.0
    sandbox.faults.latency_jitter_s = 0.05
    env = {**SOAK_ENV, "RECORDER_POOL": pool}
    workers = [start_worker(**env), start_worker(**env)]
    killed: list[WorkerProcess] = []
    faults: list[tuple[str, float]] = []
    redis_down_s = 0.0

    started = time.monotonic()
    ids = [tasks.enqueue_recording(f"{room_prefix}-{i}").id for i in range(n_jobs)]
    deadline = started + final_within_s
    records: dict[str, Job | None] = dict.fromkeys(ids)

    # the faults, each when its share of the rooms has been started
    plan = [("kill", n_jobs * f) for f in KILL_AT] + [("redis", n_jobs * REDIS_RESTART_AT)]
    for what, threshold in plan:
        while len(starts(sandbox)) < threshold and time.monotonic() < deadline:
            time.sleep(0.05)
        if time.monotonic() >= deadline:
            break
        if what == "kill":
            victim = workers.pop(0)  # the oldest: the first kill takes one, the second the other
            faults.append((f"SIGKILL worker pid {victim.pid} group", time.time()))
            victim.kill_group(signal.SIGKILL)
            killed.append(victim)
            workers.append(start_worker(**env))
        else:
            faults.append(("Redis SIGTERM and restart", time.time()))
            down = time.monotonic()
            redis_server.restart(signal.SIGTERM)
            redis_down_s = time.monotonic() - down

    while time.monotonic() < deadline:
        poll_jobs(records)
        if all(j is not None and j.finished for j in records.values()):
            break
        time.sleep(0.5)
    else:
        poll_jobs(records)
    seconds = time.monotonic() - started
    return _result(
        pool=pool,
        ids=ids,
        records=records,
        sandbox=sandbox,
        seconds=seconds,
        final_within_s=final_within_s,
        faults=faults,
        redis_down_s=redis_down_s,
        workers=workers,
        killed=killed,
    )


def _result(
    *,
    pool: str,
    ids: list[str],
    records: dict[str, Job | None],
    sandbox: SandboxServer,
    seconds: float,
    final_within_s: float,
    faults: list[tuple[str, float]],
    redis_down_s: float,
    workers: list[WorkerProcess],
    killed: list[WorkerProcess],
) -> SoakResult:
    jobs = [records[i] for i in ids]
    known = [j for j in jobs if j is not None]
    final = [j for j in known if j.finished and j.finished_at is not None]
    first_created = min((epoch(j.created_at) for j in known), default=time.time())
    calls = [c for c in sandbox.calls() if c["path"].endswith("/start")]
    finished_at = {j.room_id: epoch(j.finished_at) for j in final}  # type: ignore[arg-type]
    last_final = max(finished_at.values(), default=None)
    result = SoakResult(
        pool=pool,
        jobs=len(ids),
        seconds=seconds,
        final=len(final),
        stuck=[j for j in known if not j.finished],
        late=[
            j
            for j in final
            if epoch(j.finished_at) - first_created > final_within_s  # type: ignore[arg-type]
        ],
        statuses=Counter(j.status.value for j in known),
        starts_per_room=starts(sandbox),
        calls_by_status=Counter(c["status"] for c in calls),
        calls_after_finish=[
            c
            for c in calls
            if c["room_id"] in finished_at and c["t"] > finished_at[c["room_id"]] + CLOCK_SLACK_S
        ],
        faults=faults,
        redis_down_s=redis_down_s,
        after_last_fault_s=None
        if not faults or last_final is None or len(final) < len(ids)
        else last_final - faults[-1][1],
        kills=len(killed),
        lost_deliveries=sum(j.lost_deliveries for j in known),
        dead_workers=[why for why in map(down, workers) if why],
    )
    problems = result.problems
    if len(known) != len(ids):
        problems.append(f"{len(ids) - len(known)} job records missing")
    if result.stuck:
        problems.append(
            f"{len(result.stuck)} jobs not final after {final_within_s:.0f}s, e.g. "
            + ", ".join(describe(j) for j in result.stuck[:3])
        )
    if result.late:
        problems.append(f"{len(result.late)} jobs final later than {final_within_s:.0f}s")
    if result.rooms_started_twice:
        problems.append(f"rooms started more than once: {result.rooms_started_twice[:10]}")
    if result.calls_after_finish:
        problems.append(
            f"{len(result.calls_after_finish)} API calls after their job's finished_at: "
            f"{result.calls_after_finish[:5]}"
        )
    for job in final:
        if job.status is Status.SUCCEEDED and result.starts_per_room[job.room_id] != 1:
            problems.append(f"{job.room_id} succeeded without a start")
    if len(faults) != len(KILL_AT) + 1:
        problems.append(f"only {len(faults)} of {len(KILL_AT) + 1} faults injected")
    if result.dead_workers:
        problems.append(f"workers down (not killed by the soak): {result.dead_workers}")
    return result


def down(worker: WorkerProcess) -> str | None:
    """Why ``worker`` is down, or None if it is up: it exited, or Celery logged an
    "Unrecoverable error" (a prefork worker can then hang in its shutdown, running but
    consuming nothing). With its pid, log and last CRITICAL line."""
    critical = [line for line in worker.log().splitlines() if "CRITICAL/" in line]
    exited = worker.proc.poll()
    if exited is None and not any("Unrecoverable error" in line for line in critical):
        return None
    state = "still running" if exited is None else f"exited {exited}"
    said = f": {critical[-1]}" if critical else ""
    return f"pid {worker.pid} {state} (log {worker.log_path}){said}"


def describe(job: Job) -> str:
    """A stuck job's record in a few words."""
    return (
        f"{job.id} {job.room_id} {job.status.value} attempts={job.attempts} "
        f"deliveries={job.deliveries} lost={job.lost_deliveries} http={job.http_status} "
        f"error={job.error} updated_at={job.updated_at} next={job.next_attempt_at} "
        f"holder={job.extra.get('_holder')}"
    )
