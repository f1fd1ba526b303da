"""Benchmark of the global rate limiter with real worker processes (not collected by pytest).

For each limit (5, 50 and 500/s by default) it starts two ``celery -A worker worker`` processes
(thread pool) on an empty hold queue, fills the real queue with enough jobs to keep the limit
saturated for ``--seconds``, tells both workers to consume at the same moment, and judges the
arrival log of an in-process sandbox API with no latency:

- ``max1s/lim``: the most calls in any 1 s window (starting at an arrival), over the limit; the
  target is ``<= 1 + burst/limit``. GCRA spaces the *reserved slots* that way; arrivals can
  still bunch when a worker wakes late for its slot (CPU contention) and the next is on time;
- ``mean/lim``: ``(calls - 1) / (last - first arrival)`` over the limit; the target is >= 0.95
  when the limit is saturated (more jobs waiting than the limit lets through);
- ``deliv/job``: deliveries per job; above 1 means jobs were deferred to the due set and
  handed out again by a dispatcher (waits longer than ``RECORDER_INLINE_WAIT_MAX``).

A last row (limit "none") runs with an effectively unlimited rate: what the pipeline itself
carries on this machine. A limit above that cannot be saturated, whatever the limiter does.

The limiter's own cost is measured apart: ``acquire`` called N times in a row with a huge rate
(each call reserves), next to a Redis ``PING`` round trip for scale.

Uses its own Redis db (``--redis-url``; db 3 by default: 8-15 serve test runs, soak and the
demo) and a unique key prefix. It refuses a db that is not empty, since Celery's queue keys carry
no prefix and two runs sharing a db would consume each other's jobs; flushes it at start, between
runs and at the end; stops with an error if the jobs vanish (someone else flushed the db); and
stops every process it started. Figures go to stdout and, as JSON, to ``--out``
(``bench-results-limiter.json``, gitignored).

Run: ``.venv/bin/python tests/benchmarks/limiter.py [--out FILE] [--seconds 8] [--limits 5,50,500]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script, sys.path[0] is this folder, not the project
    sys.path.insert(0, str(ROOT))

from tests.conftest import max_in_any_window  # noqa: E402  (needs the path set just above)

API_KEY = "bench-api-key"
SECRET = "bench-secret-long-enough-for-hs256-0123456789"
#: workers start on this empty queue and are switched to the real one together
HOLD_QUEUE = "bench-hold"
#: a rate no run can reach: the "none" row measures the pipeline, not the limiter
UNLIMITED_PER_S = 1_000_000
SATURATED_MIN = 0.95
#: a limit this close to the unlimited rate leaves no CPU for waiting threads to wake on time
NEAR_CEILING = 1.2
BENCH_BUDGET_S = 170.0  # the whole run must stay under 3 minutes
ACQUIRE_CALLS = 5000


@dataclass
class Row:
    """One run's figures; ``limit_per_s`` is None for the unlimited reference run."""

    limit_per_s: float | None
    burst: int
    jobs: int
    calls: int
    not_ok: int
    span_s: float
    max_in_1s: int
    max_1s_over_limit: float | None
    mean_per_s: float
    mean_over_limit: float | None
    deliveries_per_job: float
    worker_cpu_ms_per_job: float | None
    enqueue_s: float
    drain_s: float
    verdict: str = ""


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Workers:
    """Real ``celery -A worker worker`` subprocesses; ``stop()`` ends every one of them."""

    def __init__(self, env: dict[str, str], count: int, concurrency: int, log_dir: Path) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.names = [f"bench{i}-{self.tag}@{socket.gethostname()}" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [log_dir / f"worker-{self.tag}-{i}.log" for i in range(count)]
        for name, log in zip(self.names, self.logs, strict=True):
            cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-n", name]
            cmd += ["--loglevel=WARNING", "--without-mingle", "--without-gossip"]
            cmd += ["-Q", HOLD_QUEUE, "-c", str(concurrency)]
            with open(log, "ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out
                    )
                )

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: see {log}")

    def cpu_s(self) -> float | None:
        used = [cpu_s(p.pid) for p in self.procs]
        return None if None in used else sum(u or 0.0 for u in used)

    def start_consuming(self, app: Any, queue: str, timeout_s: float = 30.0) -> None:
        """Wait until every worker answers a ping, then switch them all to ``queue``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            replies = app.control.ping(destination=self.names, timeout=0.5)
            if {name for reply in replies for name in reply} >= set(self.names):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready within {timeout_s}s: see {self.logs}")
        replies = app.control.add_consumer(queue, destination=self.names, reply=True, timeout=2.0)
        if len(replies) != len(self.names):
            raise RuntimeError(f"add_consumer answered by {len(replies)} of {len(self.names)}")

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def run_one(
    *,
    limit_per_s: float | None,
    jobs: int,
    deadline: float,
    args: argparse.Namespace,
    env: dict[str, str],
    sandbox: Any,
    db: redis.Redis,
    log_dir: Path,
) -> Row:
    """Start the workers at this limit, drain ``jobs`` jobs, and judge the arrival log.

    ``deadline`` (monotonic) bounds the drain: a run cut short is judged on what arrived.
    """
    from tasks import enqueue_recording, runtime
    from tasks.settings import DEFAULT_QUEUE as QUEUE
    from worker.app import app

    rate = UNLIMITED_PER_S if limit_per_s is None else limit_per_s
    db.flushdb()
    sandbox.reset()
    run_env = {**env, "RECORDER_RATE_LIMIT": f"{rate:.6f}".rstrip("0").rstrip(".") + "/s"}
    os.environ.update(run_env)  # this process is the producer
    runtime.reset()
    store = runtime.store()
    workers = Workers(run_env, args.workers, args.concurrency, log_dir)
    done = 0
    try:
        # Given a full queue: every job waiting before any worker consumes
        started = time.monotonic()
        for i in range(jobs):
            enqueue_recording(f"room-{workers.tag}-{i}")
        enqueue_s = time.monotonic() - started
        # When every worker starts consuming at the same moment
        workers.start_consuming(app, QUEUE)
        began, cpu_before = time.monotonic(), workers.cpu_s()
        while time.monotonic() < deadline:
            counts = store.counts()
            done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
            if done >= jobs:
                break
            if sum(counts.values()) == 0:
                raise RuntimeError(f"every job vanished: another process flushed {args.redis_url}")
            workers.check_alive()
            time.sleep(0.1)
        drain_s = time.monotonic() - began
        cpu_after = workers.cpu_s()
        deliveries = sum(job.deliveries for job in store.list(limit=jobs))
    finally:
        workers.stop()
    calls = [c for c in sandbox.calls() if c["path"].endswith("/start")]
    times = sorted(c["t"] for c in calls)
    span_s = times[-1] - times[0] if times else 0.0
    mean = (len(times) - 1) / span_s if span_s > 0 else 0.0
    most = max_in_any_window(times)
    cpu_ms = None
    if cpu_before is not None and cpu_after is not None and calls:
        cpu_ms = round((cpu_after - cpu_before) / len(calls) * 1000, 2)
    row = Row(
        limit_per_s=limit_per_s,
        burst=args.burst,
        jobs=jobs,
        calls=len(calls),
        not_ok=sum(1 for c in calls if c["status"] != 200),
        span_s=round(span_s, 3),
        max_in_1s=most,
        max_1s_over_limit=None if limit_per_s is None else round(most / limit_per_s, 3),
        mean_per_s=round(mean, 2),
        mean_over_limit=None if limit_per_s is None else round(mean / limit_per_s, 3),
        deliveries_per_job=round(deliveries / jobs, 2),
        worker_cpu_ms_per_job=cpu_ms,
        enqueue_s=round(enqueue_s, 2),
        drain_s=round(drain_s, 2),
    )
    row.verdict = "TIMEOUT " if done < jobs else ""
    return row


def judge(rows: list[Row]) -> None:
    """Set each row's verdict; a mean below target is explained when the pipeline is slower."""
    ceiling_per_s = next((r.mean_per_s for r in rows if r.limit_per_s is None), None)
    for row in rows:
        if row.limit_per_s is None:
            row.verdict += "reference: no limit"
            continue
        problems = []
        most = 1.0 + row.burst / row.limit_per_s
        if row.max_1s_over_limit is not None and row.max_1s_over_limit > most:
            problems.append(f"max1s/lim>{most:.2f}")
        if row.mean_over_limit is not None and row.mean_over_limit > most:
            problems.append(f"mean/lim>{most:.2f}")
        if row.mean_over_limit is not None and row.mean_over_limit < SATURATED_MIN:
            why = ""
            if ceiling_per_s is not None and ceiling_per_s < SATURATED_MIN * row.limit_per_s:
                why = f" (pipeline ceiling here {ceiling_per_s:.0f}/s)"
            elif ceiling_per_s is not None and ceiling_per_s < NEAR_CEILING * row.limit_per_s:
                why = f" (CPU-bound: the pipeline's ceiling here is {ceiling_per_s:.0f}/s)"
            elif row.deliveries_per_job > 1.05:
                why = " (jobs deferred and re-dispatched)"
            problems.append(f"mean/lim<{SATURATED_MIN}{why}")
        if row.not_ok or row.calls != row.jobs:
            problems.append(f"{row.calls}/{row.jobs} calls, {row.not_ok} not 200")
        row.verdict += "MISSED: " + "; ".join(problems) if problems else "ok"


def acquire_cost_us(db: redis.Redis, prefix: str, calls: int) -> dict[str, float]:
    """Microseconds per ``acquire`` (each one reserving) and per PING, called in a row."""
    from tasks.store.ratelimit import RedisRateLimiter

    limiter = RedisRateLimiter(client=db, rate_per_s=1e9, burst=1, prefix=f"{prefix}:cost")
    for _ in range(200):  # load the script, warm the connection
        limiter.acquire(max_wait_s=1.0)
    started = time.perf_counter()
    for _ in range(calls):
        admission = limiter.acquire(max_wait_s=1.0)
    acquire_s = time.perf_counter() - started
    assert admission.reserved
    started = time.perf_counter()
    for _ in range(calls):
        db.ping()
    ping_s = time.perf_counter() - started
    return {
        "acquire_us": round(acquire_s / calls * 1e6, 1),
        "ping_us": round(ping_s / calls * 1e6, 1),
        "calls": calls,
    }


def print_table(rows: list[Row], cost: dict[str, float]) -> None:
    head = (
        f"{'limit/s':>7} {'jobs':>5} {'span_s':>6} {'max1s':>5} {'max1s/lim':>9} {'mean/s':>6} "
        f"{'mean/lim':>8} {'deliv/job':>9} {'cpu_ms/job':>10}  verdict"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        limit = "none" if r.limit_per_s is None else f"{r.limit_per_s:g}"
        ratio_max = "-" if r.max_1s_over_limit is None else f"{r.max_1s_over_limit:.3f}"
        ratio_mean = "-" if r.mean_over_limit is None else f"{r.mean_over_limit:.3f}"
        cpu = "-" if r.worker_cpu_ms_per_job is None else f"{r.worker_cpu_ms_per_job:.2f}"
        print(
            f"{limit:>7} {r.jobs:>5} {r.span_s:>6.2f} {r.max_in_1s:>5} {ratio_max:>9} "
            f"{r.mean_per_s:>6.1f} {ratio_mean:>8} {r.deliveries_per_job:>9.2f} {cpu:>10}  "
            f"{r.verdict}"
        )
    print(
        f"limiter acquire: {cost['acquire_us']:.1f} us per call, {cost['calls']} in a row "
        f"(a Redis PING round trip: {cost['ping_us']:.1f} us)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench-results-limiter.json")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--limits", default="5,50,500", help="comma-separated calls per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="saturated drain per limit")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true", help="skip the unlimited run")
    parser.add_argument("--force", action="store_true", help="flush the db even if not empty")
    args = parser.parse_args(argv)
    limits = [float(x) for x in args.limits.split(",") if x.strip()]

    began = time.monotonic()
    prefix = f"bench-limiter-{uuid.uuid4().hex[:8]}"
    db = redis.Redis.from_url(args.redis_url)
    db.ping()
    if db.dbsize() and not args.force:
        # Celery's queue keys are not prefixed: sharing a db would mix our jobs with another
        # run's, and flushing it would wreck that run. Refuse rather than guess.
        sample = sorted(k.decode(errors="replace") for k in db.scan_iter(count=100))[:5]
        print(f"{args.redis_url} is not empty ({sample}...): pick another db or --force")
        return 2
    db.flushdb()
    from tasks.sandbox.server import SandboxServer
    from tasks.settings import Settings

    env = {
        "REDIS_URL": args.redis_url,
        "VIDEOSDK_API_KEY": API_KEY,
        "VIDEOSDK_SECRET": SECRET,
        "RECORDER_KEY_PREFIX": prefix,
        "RECORDER_RATE_BURST": str(args.burst),
        "RECORDER_POOL": "threads",
        "RECORDER_CONCURRENCY": str(args.concurrency),
        "RECORDER_LOG_FORMAT": "text",
    }
    rows: list[Row] = []
    load_before = os.getloadavg()
    try:
        with (
            SandboxServer(api_key=API_KEY, secret=SECRET) as sandbox,
            tempfile.TemporaryDirectory(prefix="bench-limiter-") as tmp,
        ):
            env["VIDEOSDK_API_BASE"] = sandbox.url
            plan: list[float | None] = [*limits]
            if not args.no_reference:
                plan.append(None)
            for limit in plan:
                per_s = max(limits) if limit is None else limit
                jobs = int(per_s * args.seconds) + args.burst
                now = time.monotonic()
                if now - began > BENCH_BUDGET_S - 30:
                    print(f"skipping limit {limit}: over the time budget", file=sys.stderr)
                    continue
                deadline = min(now + 3 * args.seconds + 30, began + BENCH_BUDGET_S - 10)
                print(f"limit {limit or 'none'}/s: {jobs} jobs ...", file=sys.stderr, flush=True)
                rows.append(
                    run_one(
                        limit_per_s=limit,
                        jobs=jobs,
                        deadline=deadline,
                        args=args,
                        env=env,
                        sandbox=sandbox,
                        db=db,
                        log_dir=Path(tmp),
                    )
                )
        cost = acquire_cost_us(db, prefix, ACQUIRE_CALLS)
    finally:
        db.flushdb()
        db.close()
    judge(rows)
    print_table(rows, cost)
    report = {
        "benchmark": "limiter",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "python": platform.python_version(),
        },
        "settings": {
            "workers": args.workers,
            "concurrency_per_worker": args.concurrency,
            "pool": "threads",
            "burst": args.burst,
            "inline_wait_max_s": Settings().inline_wait_max_s,
            "sandbox_latency_s": 0.0,
            "seconds_per_limit": args.seconds,
        },
        "runs": [asdict(r) for r in rows],
        "acquire_cost": cost,
        "total_s": round(time.monotonic() - began, 1),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"total {report['total_s']}s; figures written to {args.out}")
    return 0 if all(r.verdict == "ok" or r.limit_per_s is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
