"""``recorder demo``: the whole pipeline on this machine, leaving no process behind.

It starts a Redis, the sandbox API (with some 5xx and latency, and starts only for rooms with a
live session, as VideoSDK) and one real Celery worker, enqueues a batch of jobs (one to a missing
room, one duplicate room, one scheduled a little later, one whose host joins late and one whose
host never joins), shows a progress bar, then the outcome of every job, and stops everything it
started, also on Ctrl-C or SIGTERM. Exit status 0 when every job reached a final state, 1
otherwise.

This module is the run: arguments, the batch plan, waiting, the summary and :func:`main`. What it
runs on (which Redis, the worker process, the environment, cleanup) is ``tasks.cli.demo.stack``.
The demo's job records and its Celery queue are named after a per-run prefix
(``RECORDER_KEY_PREFIX``, ``RECORDER_QUEUE``), so it never touches real workers' jobs or messages
on a shared Redis; its keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from tasks.api import enqueue_recording, get_job
from tasks.cli import format as fmt
from tasks.cli.demo.recordings import (
    RECORDING_S,
    recordings_table,
    start_receiver,
    wait_for_recordings,
)
from tasks.cli.demo.stack import (
    DemoFailed,
    choose_redis,
    delete_keys,
    environment,
    say,
    start_worker,
    tail,
)
from tasks.errors import ConfigurationError
from tasks.job import Job, Status, recording_ended
from tasks.sandbox import Faults, SandboxServer
from tasks.settings import parse_rate

API_KEY = "demo-key"
SECRET = "demo-secret"
POLL_S = 0.2
#: no job picked up this long after the worker started: it is not consuming, give up.
STALL_S = 30.0
#: the late host joins this long after the batch is enqueued; the absent one never does.
LATE_HOST_S = 4.0
LATE_ROOM, ABSENT_ROOM = "room-late-host", "room-nobody-joins"
ABSENT_WINDOW_S = 8


# -- the batch -----------------------------------------------------------------------------------


def plan(count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` jobs as (room, options), with a missing room, a duplicate and a scheduled one."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    specials: list[tuple[str, dict[str, Any]]] = [
        ("missing-room", {}),  # the sandbox answers 404
        ("room-01", {}),  # a second start for room-01: refused as already recording
        ("room-scheduled", {"run_at": datetime.now(UTC) + timedelta(seconds=2)}),
        (LATE_ROOM, {}),  # not live until LATE_HOST_S: refused, tried again, recorded
        (ABSENT_ROOM, {"start_window_s": ABSENT_WINDOW_S}),  # never live: expired
    ]
    plain = max(count - len(specials), min(count, 1))
    for i in range(1, plain + 1):
        options: dict[str, Any] = {}
        if i % 4 == 0:
            options["config"] = {"layout": {"type": "GRID"}, "quality": "high"}
        if i % 5 == 0:
            options["transcription"] = {"enabled": True}
        jobs.append((f"room-{i:02d}", options))
    return jobs + specials[: count - len(jobs)]


def wait_until_finished(
    ids: list[str], *, timeout_s: float, worker: subprocess.Popen[Any], log: IO[bytes]
) -> list[Job]:
    """Poll the jobs until all are finished or ``timeout_s`` passes; draw a progress bar."""
    tty = sys.stderr.isatty()
    start = time.monotonic()
    shown = ""
    while True:
        jobs = [job for job in map(get_job, ids) if job is not None]
        done = sum(job.finished for job in jobs)
        statuses = Counter(job.status.value for job in jobs if not job.finished)
        busy = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        line = fmt.progress_bar(done, len(ids)) + (f"  ({busy})" if busy else "")
        if line != shown:
            print(("\r" + line.ljust(len(shown))) if tty else line, end="" if tty else "\n",
                  file=sys.stderr, flush=True)  # fmt: skip
            shown = line
        elapsed_s = time.monotonic() - start
        if done == len(ids) or elapsed_s >= timeout_s:
            break
        if worker.poll() is not None:
            raise DemoFailed(f"the worker exited with status {worker.returncode}:\n{tail(log)}")
        if elapsed_s > STALL_S and all(j.status is Status.QUEUED and not j.attempts for j in jobs):
            raise DemoFailed(
                f"no job was picked up within {STALL_S:g}s: the worker does not consume from this "
                f"Redis (the fakeredis fallback may not carry Celery's transport; put "
                f"redis-server on PATH or pass --redis-url). Worker output:\n{tail(log)}"
            )
        time.sleep(POLL_S)
    if tty:
        print(file=sys.stderr)
    return jobs


def summary(jobs: list[Job], total: int, elapsed_s: float, calls: list[dict[str, Any]]) -> str:
    outcomes = Counter(job.status.value for job in jobs)
    parts = ", ".join(f"{n} {status}" for status, n in outcomes.most_common())
    answered = Counter(call.get("status") for call in calls)
    errors = sum(n for status, n in answered.items() if isinstance(status, int) and status >= 500)
    finished = sum(job.finished for job in jobs)
    return (
        f"{finished}/{total} jobs finished in {elapsed_s:.1f}s: {parts}; "
        f"{len(calls)} API calls, {errors} answered 5xx"
    )


def _describe(batch: list[tuple[str, dict[str, Any]]]) -> str:
    notes: list[str] = []
    rooms = [room for room, _ in batch]
    if "missing-room" in rooms:
        notes.append("missing-room gets a 404")
    if rooms.count("room-01") > 1:
        notes.append("room-01 is started twice")
    if "room-scheduled" in rooms:
        notes.append("room-scheduled runs 2 s later")
    if LATE_ROOM in rooms:
        notes.append(f"{LATE_ROOM}'s host joins {LATE_HOST_S:g} s late")
    if ABSENT_ROOM in rooms:
        notes.append(f"{ABSENT_ROOM}'s never does ({ABSENT_WINDOW_S} s window)")
    return "; ".join(notes) or "plain rooms"


# -- main ----------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = fmt.Parser(
        prog="recorder demo",
        description="Run Redis, the sandbox API and a real worker on this machine, push a batch "
        "of jobs through them, show what became of each, then stop everything.",
    )
    add = parser.add_argument
    add("--jobs", type=int, default=20, metavar="N", help="jobs to enqueue (default 20)")
    add("--timeout", type=float, default=60.0, metavar="S", help="longest wait (default 60)")
    add("--redis-url", metavar="URL", help="use this Redis (default: REDIS_URL if it answers)")
    add("--error-rate", type=float, default=0.15, metavar="F", help="sandbox 5xx share (0.15)")
    add("--rate-limit", default="20/s", metavar="N/s", help="RECORDER_RATE_LIMIT (20/s)")
    add("--concurrency", type=int, default=8, metavar="N", help="worker threads (8)")
    add("--seed", type=int, default=None, metavar="N", help="make the sandbox repeatable")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.timeout <= 0 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be at least 1, --timeout more than 0")
    try:
        parse_rate(args.rate_limit)
    except ConfigurationError:
        parser.error(f"--rate-limit must look like N/s, N/m or N/h, got {args.rate_limit!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = _parse(argv)
    run_id = uuid.uuid4().hex[:8]
    stack = contextlib.ExitStack()
    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return _run(args, run_id, stack)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        say("interrupted: stopping everything")
        return 130
    except DemoFailed as exc:
        print(f"recorder demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        with _signals_deferred():
            stack.close()
        say("stopped everything it started")
        if main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while cleaning up, so a second Ctrl-C cannot leak a process."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace, run_id: str, stack: contextlib.ExitStack) -> int:
    url, shared = choose_redis(stack, args.redis_url)
    prefix = f"recorder-demo-{run_id}"
    if shared:
        stack.callback(delete_keys, url, prefix)
    sandbox = SandboxServer(
        api_key=API_KEY,
        secret=SECRET,
        faults=Faults(
            latency_s=0.05,
            latency_jitter_s=0.1,
            error_rate=args.error_rate,
            require_live=True,
        ),
        seed=args.seed,
    ).start()
    stack.callback(sandbox.stop)
    say(
        f"sandbox   {sandbox.url} ({args.error_rate:.0%} answered 5xx, 50-150 ms latency, "
        "starts only in rooms with a live session)"
    )
    env = {
        "REDIS_URL": url,
        "VIDEOSDK_API_KEY": API_KEY,
        "VIDEOSDK_SECRET": SECRET,
        "VIDEOSDK_API_BASE": sandbox.url,
        "RECORDER_RATE_LIMIT": args.rate_limit,
        "RECORDER_BACKOFF_MAX": "2",
        "RECORDER_INLINE_WAIT_MAX": "3",
        "RECORDER_KEY_PREFIX": prefix,
        "RECORDER_QUEUE": prefix,
        "RECORDER_POOL": "threads",
        "VIDEOSDK_WEBHOOK_PUBLIC_KEY": sandbox.public_key_pem,
    }
    stack.enter_context(environment(env))
    # the receiver runs in this process (the environment above is its configuration)
    hooks = start_receiver(stack)
    env.update(RECORDER_WEBHOOK_URL=hooks)
    stack.enter_context(environment({"RECORDER_WEBHOOK_URL": hooks}))
    say(f"webhooks  {hooks} (the sandbox signs them; its key is pinned)")
    worker, log = start_worker(stack, env, concurrency=args.concurrency, run_id=run_id)
    say(f"worker    pid {worker.pid}, {args.concurrency} threads, rate limit {args.rate_limit}")

    started = time.monotonic()
    batch = plan(args.jobs)
    for room, _ in batch:
        if room == LATE_ROOM:
            sandbox.go_live(room, after_s=LATE_HOST_S)
        elif room != ABSENT_ROOM:
            sandbox.go_live(room)  # the host is already in the room
    ids = [
        enqueue_recording(room, **options, max_duration_s=RECORDING_S).id for room, options in batch
    ]
    say(f"enqueued  {len(ids)} jobs: {_describe(batch)}")
    jobs = wait_until_finished(ids, timeout_s=args.timeout, worker=worker, log=log)
    elapsed_s = time.monotonic() - started
    print(fmt.outcomes_table(jobs), flush=True)
    say(summary(jobs, len(ids), elapsed_s, sandbox.calls()))
    if len(jobs) < len(ids) or not all(job.finished for job in jobs):
        print(f"recorder demo: not every job finished within {args.timeout:g}s", file=sys.stderr)
        return 1
    say(f"each started recording is stopped {RECORDING_S} s after its start (max_duration_s)")
    recorded = wait_for_recordings(jobs, timeout_s=args.timeout)
    print(recordings_table(recorded), flush=True)
    ended = sum(recording_ended(r) for _, r in recorded)
    say(f"{ended}/{len(recorded)} recordings stopped, each with its file URL (from the webhooks)")
    if ended < len(recorded):
        print("recorder demo: not every recording reached stopped", file=sys.stderr)
        return 1
    return 0
