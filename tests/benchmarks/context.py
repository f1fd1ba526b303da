"""The shared state of one ``run.py`` run: Redis dbs, the sandbox, environments, bulk helpers."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context

import redis

from tests.benchmarks.harness import API_KEY, SECRET, Processes, Sandbox

#: a rate no run reaches: drains measure the pipeline, not the limiter
UNLIMITED_RATE = "100000/s"


@dataclass
class Context:
    """Everything a section needs; ``ours_db``/``ref_db`` are flushed between runs."""

    procs: Processes
    sandbox: Sandbox
    scale: float
    ours_url: str
    ref_url: str
    ours_db: redis.Redis
    ref_db: redis.Redis
    #: extra settings of ours from ``--ours-env NAME=VALUE`` (e.g. RECORDER_TASK_EVENTS=0)
    ours_extra: dict[str, str] = field(default_factory=dict)

    @property
    def ours_env(self) -> dict[str, str]:
        """Our worker's and producer's environment: the documented defaults plus these."""
        return {
            "REDIS_URL": self.ours_url,
            "VIDEOSDK_API_KEY": API_KEY,
            "VIDEOSDK_SECRET": SECRET,
            "VIDEOSDK_API_BASE": self.sandbox.url,
            "RECORDER_RATE_LIMIT": UNLIMITED_RATE,
            "RECORDER_LOG_FORMAT": "text",
            **self.ours_extra,
        }

    @property
    def ref_env(self) -> dict[str, str]:
        """The environment of the plain Celery and Dramatiq references."""
        return {
            "BENCH_REDIS_URL": self.ref_url,
            "BENCH_API_BASE": self.sandbox.url,
            "BENCH_API_KEY": API_KEY,
            "BENCH_SECRET": SECRET,
        }

    def jobs(self, full: int, minimum: int = 20) -> int:
        return max(minimum, round(full * self.scale))

    def flush(self) -> None:
        self.ours_db.flushdb()
        self.ref_db.flushdb()

    def use_ours(self, env: dict[str, str]) -> None:
        """Make this process a producer with ``env`` (our settings are read once, so reset)."""
        # drop the previous run's overrides (pool, concurrency) before applying these
        for name in ("RECORDER_POOL", "RECORDER_CONCURRENCY"):
            os.environ.pop(name, None)
        os.environ.update(env)
        _reload_ours()

    def wait_progress(
        self,
        done: Callable[[], int],
        total: int,
        *,
        check: Callable[[], None],
        stall_s: float = 45.0,
        interval_s: float = 0.2,
        what: str = "jobs",
    ) -> None:
        """Poll ``done()`` until it reaches ``total``; RuntimeError when it stalls ``stall_s``."""
        last, last_change = -1, time.monotonic()
        while True:
            current = done()
            if current >= total:
                return
            now = time.monotonic()
            if current != last:
                last, last_change = current, now
            elif now - last_change > stall_s:
                raise RuntimeError(f"{what}: stuck at {current}/{total} for {stall_s:.0f}s")
            check()
            time.sleep(interval_s)


def _reload_ours() -> None:
    """Read our settings and the Celery app's configuration again from the environment.

    ``worker.config`` reads the environment when first imported (here, through tests.conftest,
    before ``run.py`` sets ``REDIS_URL``), and ``runtime.reset()`` reloads our settings only:
    without ``reconfigure`` the app would publish to, and ping workers on, the default db.
    """
    from tasks import runtime
    from worker.app import app
    from worker.config import reconfigure

    runtime.reset()
    reconfigure(app)
    if app.conf.broker_url != runtime.config().redis_url:  # never publish into another db
        raise RuntimeError(f"the Celery app's broker is {app.conf.broker_url}, not REDIS_URL")


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _enqueue_ours(env: dict[str, str], rooms: Sequence[str]) -> float:
    """In a spawned process: enqueue_recording each room; returns the seconds it took."""
    os.environ.update(env)
    from tasks import enqueue_recording

    _reload_ours()
    started = time.perf_counter()
    for room in rooms:
        enqueue_recording(room)
    return time.perf_counter() - started


def _create_records(env: dict[str, str], rooms: Sequence[str]) -> float:
    """In a spawned process: store records as enqueue_recording does, publishing nothing."""
    os.environ.update(env)
    from tasks import runtime
    from tasks.request import RecordingRequest

    _reload_ours()
    store = runtime.store()
    started = time.perf_counter()
    for room in rooms:
        store.create(room_id=room, request=RecordingRequest.build(room).to_body())
    return time.perf_counter() - started


def in_processes(
    fn: Callable[[dict[str, str], Sequence[str]], float],
    env: dict[str, str],
    rooms: Sequence[str],
    processes: int = 2,
) -> float:
    """Run ``fn`` over ``rooms`` split across ``processes`` spawned processes; wall seconds."""
    chunks = [(env, rooms[i::processes]) for i in range(processes)]
    started = time.perf_counter()
    # a multiprocessing Pool, not an executor: leaving the block (also by Ctrl-C) terminates it
    with get_context("spawn").Pool(processes) as pool:
        pool.starmap_async(fn, chunks).get(timeout=900)
    return time.perf_counter() - started


def wait_store_done(ctx: Context, total: int, check: Callable[[], None]) -> None:
    """Until ``total`` of our jobs are terminal (succeeded, failed or cancelled)."""
    from tasks import runtime

    store = runtime.store()

    def done() -> int:
        counts = store.counts()
        return counts["succeeded"] + counts["failed"] + counts["cancelled"]

    ctx.wait_progress(done, total, check=check, what="our jobs")
