"""The herd: N jobs due at the same instant T, a 250 ms API, our rate limit 200/s.

``make herd`` (part of ``make bench``). Runs (``--only a,b``; all by default, in this order):

- ``one``      N jobs (``--jobs``, 10,000) enqueued with ``enqueue_recording(room, run_at=T)``,
               one ``celery -A worker worker`` on the shipped defaults (no RECORDER_CONCURRENCY:
               the thread pool is sized from the rate limit and the API's latency)
- ``two``      the same, two worker processes
- ``small``    N/5 jobs, one worker: its RSS next to ``one``'s (flat in N?)
- ``windows``  N jobs, 9 in 10 with ``start_window_s=20``, one worker: each of those starts
               within its window or ends ``expired`` with no call
- ``queued``   for comparison, N jobs enqueued *without* ``run_at`` while the worker consumes an
               empty queue, the worker switched to ours at T: the herd without the due set, so
               without the worker's dispatcher publishing N messages meanwhile
- ``plain``    a plain Celery task with ``rate_limit='200/s'`` sent with ``apply_async(eta=T)``,
               threads 32: 2,000 jobs (``--plain-jobs``) and a time cap (``--plain-cap-s``),
               since it drains at about 1 call/s

Each run has a fresh private ``redis-server`` (so ``INFO used_memory_peak`` is the run's own, and
no latency measured by an earlier run sizes the pool); one sandbox API process (its own process,
no GIL shared with this one, its automatic garbage collection off: a collection paused it for up
to 83 ms and bunched the stamps of the calls that arrived meanwhile) answers every start after
250 ms and is reset between runs. Workers
start before the jobs are enqueued (their dispatchers run, as in production) with
``--loglevel=INFO`` as ``make worker`` (``--loglevel`` to change); T is set far enough ahead for
the enqueue to end before it. A run whose jobs are not all final 3 x N/200 s after T (2 min at
least) is stopped there and says so.

Judged from the sandbox's arrival stamps: the ideal is the k-th call (k from 0) at T + k/200;
lateness is each arrival (sorted) minus its ideal time, given as p50, p99 and max; the busiest
second counts arrivals per whole epoch second. Worker RSS is sampled every 0.2 s (the peak, and
the value just before T); CPU is each worker's (``/proc``) and redis-server's from T to the last
job. Targets: one worker p99 lateness <= 1 s and last call <= T + N/200 + 1 s (T + 51 s for
10,000); no second over 201 calls; peak RSS at N within 10% of N/5's; in ``windows`` no call
after its job's ``start_deadline``.
The JSON (``--out``) adds calls per second after T, the workers' rate-limit waits, the busiest
Redis commands and the most Redis clients seen: where the time went.

Run: ``.venv/bin/python tests/benchmarks/herd.py [--jobs 10000] [--only one,plain]
[--ours-env RECORDER_CONCURRENCY=75] [--log-dir DIR]``. Needs ``redis-server`` on PATH; touches
no other Redis. Table to stdout, progress to stderr; every process started is stopped, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script, sys.path[0] is this folder, not the project
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tasks.job import Job  # noqa: E402
from tests.benchmarks.context import Context, log  # noqa: E402
from tests.benchmarks.harness import (  # noqa: E402
    CeleryWorkers,
    Processes,
    Sandbox,
    cpu_s,
    new_tag,
    percentile,
    redis_cpu_s,
)
from tests.benchmarks.report import table, verdict  # noqa: E402
from tests.benchmarks.run import machine, versions  # noqa: E402
from tests.conftest import RedisServer, max_in_any_window, reset_process  # noqa: E402

RUNS = ("one", "two", "small", "windows", "queued", "plain")
RATE_PER_S = 200.0
LATENCY_S = 0.25
WINDOW_S = 20.0
#: of every this many jobs of the ``windows`` run, all but one get ``start_window_s``
WINDOW_EVERY = 10
P99_MAX_S = 1.0
#: the last call at most this long after the ideal last one (T + N/200: T + 51 s for 10,000)
LAST_SLACK_S = 1.0
BUSIEST_MAX = 201
RSS_GROWTH_MAX = 1.10
#: T is set this far ahead of the enqueue's start, plus the jobs at this rate
LEAD_S = 4.0
ENQUEUE_ASSUMED_PER_S = 600.0
SAMPLE_S = 0.2


# -- producers (spawned) ------------------------------------------------------------------------


def _enqueue_herd(env: dict[str, str], rooms: list[str]) -> float:
    """In a spawned process: every room due at ``BENCH_HERD_AT`` (empty: queued now); rooms
    named ``w-...`` get ``start_window_s=BENCH_HERD_WINDOW_S``. Returns the loop's seconds."""
    os.environ.update(env)
    from tasks import enqueue_recording
    from tests.benchmarks.context import _reload_ours

    _reload_ours()
    at = env["BENCH_HERD_AT"]
    run_at = datetime.fromtimestamp(float(at), UTC) if at else None
    window_s = float(env["BENCH_HERD_WINDOW_S"])
    started = time.perf_counter()
    for room in rooms:
        enqueue_recording(room, run_at=run_at, start_window_s=window_s if room[0] == "w" else None)
    return time.perf_counter() - started


def _spawned(fn: Any, env: dict[str, str], rooms: list[str], timeout_s: float) -> float:
    with get_context("spawn").Pool(1) as pool:  # terminated on leaving the block (Ctrl-C too)
        return float(pool.apply_async(fn, (env, rooms)).get(timeout=timeout_s))


# -- sampling -----------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Samples each worker process tree's RSS and Redis's used_memory every ``SAMPLE_S``."""

    def __init__(self, workers: CeleryWorkers, db: redis.Redis) -> None:
        self.workers, self.db = workers, db
        self.rss_peak = [0] * len(workers.started)
        self.rss_now = [0] * len(workers.started)
        self.redis_peak = 0
        self.clients_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="herd-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for i, started in enumerate(self.workers.started):
                rss = sum(rss_bytes(pid) for pid in started.tree())
                self.rss_now[i] = rss
                self.rss_peak[i] = max(self.rss_peak[i], rss)
            with contextlib.suppress(redis.RedisError):
                self.redis_peak = max(self.redis_peak, int(self.db.info("memory")["used_memory"]))
                clients = int(self.db.info("clients")["connected_clients"])
                self.clients_peak = max(self.clients_peak, clients)
            self._stop.wait(SAMPLE_S)


def pool_sizes(app: Any, names: list[str]) -> list[int | None]:
    """Each worker's pool size as it reports it (``inspect stats``)."""
    stats = app.control.inspect(destination=names, timeout=2).stats() or {}
    return [stats.get(n, {}).get("pool", {}).get("max-concurrency") for n in names]


# -- judging ------------------------------------------------------------------------------------


def judge(times: list[float], t0: float, rate_per_s: float = RATE_PER_S) -> dict[str, Any]:
    """Arrival times against the ideal: the k-th call (k from 0) at ``t0 + k / rate_per_s``."""
    times = sorted(times)
    if not times:
        return {"calls": 0}
    late = [t - (t0 + k / rate_per_s) for k, t in enumerate(times)]
    per_second = collections.Counter(int(t) for t in times)
    span_s = times[-1] - times[0]
    return {
        "calls": len(times),
        "first_s": round(times[0] - t0, 3),
        "last_s": round(times[-1] - t0, 3),
        "late_p50_s": round(percentile(late, 50), 3),
        "late_p99_s": round(percentile(late, 99), 3),
        "late_max_s": round(max(late), 3),
        "busiest_second": max(per_second.values()),
        "busiest_sliding_1s": max_in_any_window(times),
        "rate_per_s": round((len(times) - 1) / span_s, 1) if span_s > 0 else None,
        # calls in each whole second after T (for the JSON; a dip shows where throughput went)
        "per_second_after_t": [
            sum(1 for t in times if k <= t - t0 < k + 1) for k in range(int(times[-1] - t0) + 1)
        ],
    }


def _records(db: redis.Redis, prefix: str = "recorder") -> list[Job]:
    """Every job of the run, read as the store reads them."""
    ids = [
        i.decode() if isinstance(i, bytes) else str(i) for i in db.zrange(f"{prefix}:jobs", 0, -1)
    ]
    out: list[Job] = []
    for start in range(0, len(ids), 1000):
        raws = db.mget([f"{prefix}:job:{i}" for i in ids[start : start + 1000]])
        out += [Job.from_record(r) for r in raws if r]
    return out


def _diagnostics(db: redis.Redis, prefix: str = "recorder") -> dict[str, Any]:
    """Where the time went: our metrics hash (rate-limit waits) and Redis's busiest commands."""
    raw: dict[bytes, bytes] = db.hgetall(f"{prefix}:metrics")  # type: ignore[assignment]
    metrics = {k.decode(): int(v) for k, v in raw.items()}
    stats = db.info("commandstats")
    busiest = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]
    return {
        "waits": {k: v for k, v in metrics.items() if k.startswith(("waits", "wait_ms"))},
        "redis_commands": {
            name.removeprefix("cmdstat_"): {"calls": s["calls"], "usec": s["usec"]}
            for name, s in busiest
        },
    }


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def check_windows(jobs: list[Job], calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Each windowed job (room ``w-...``) started within its window or ended ``expired`` with
    no call; no call after its job's ``start_deadline``; every other job succeeded."""
    by_room: dict[str, list[float]] = collections.defaultdict(list)
    for c in calls:
        by_room[c["room_id"]].append(c["t"])
    late_calls, over_s, bad = 0, 0.0, []
    counts: collections.Counter[str] = collections.Counter()
    for job in jobs:
        status, made = job.status.value, by_room.get(job.room_id, [])
        windowed = job.room_id.startswith("w-")
        counts[f"{'windowed' if windowed else 'other'} {status}"] += 1
        if not windowed:
            if status != "succeeded" or len(made) != 1:
                bad.append(f"{job.room_id}: {status}, {len(made)} calls")
            continue
        if job.start_deadline is None:
            bad.append(f"{job.room_id}: no start_deadline")
            continue
        deadline = _epoch(job.start_deadline)
        for t in made:
            if t > deadline:
                late_calls += 1
                over_s = max(over_s, t - deadline)
        started = status == "succeeded" and len(made) == 1
        if not started and not (status == "expired" and not made and not job.attempts):
            bad.append(f"{job.room_id}: {status}, {len(made)} calls, attempts {job.attempts}")
    return {
        "statuses": dict(sorted(counts.items())),
        "calls_after_deadline": late_calls,
        "most_after_deadline_s": round(over_s, 3),
        "bad": bad[:10],
        "bad_count": len(bad),
    }


# -- one run of ours ----------------------------------------------------------------------------


def run_ours(
    procs: Processes,
    sandbox: Sandbox,
    workdir: Path,
    *,
    name: str,
    jobs: int,
    workers_n: int,
    windowed: bool = False,
    extra: dict[str, str] | None = None,
    loglevel: str = "INFO",
    queued: bool = False,
) -> dict[str, Any]:
    """``jobs`` jobs due at T through ``workers_n`` default workers on a fresh Redis.

    ``queued``: the same jobs enqueued without ``run_at`` while the workers consume a hold
    queue, the workers switched to ours at T: the herd without the due set and its dispatcher.
    """
    from tasks import runtime
    from worker.app import app

    server = RedisServer(workdir, appendonly=False).start()
    try:
        db = redis.Redis.from_url(server.url)
        ctx = Context(
            procs,
            sandbox,
            1.0,
            server.url,
            server.url[:-1] + "1",
            db,
            redis.Redis.from_url(server.url[:-1] + "1"),
            {"RECORDER_RATE_LIMIT": f"{RATE_PER_S:g}/s", **(extra or {})},
        )
        env = ctx.ours_env
        os.environ.update(env)
        ctx.use_ours(env)
        reset_process()  # a new Redis URL: Celery's cached producer pool must go too
        sandbox.reset(latency_s=LATENCY_S)
        tag = new_tag()
        rooms = [f"{'w' if windowed and i % WINDOW_EVERY else 'n'}-{tag}-{i}" for i in range(jobs)]
        log(f"herd {name}: {jobs} jobs, {workers_n} worker(s)" + (", windows" if windowed else ""))
        workers = CeleryWorkers(
            procs,
            app,
            app_module="worker",
            env=env,
            count=workers_n,
            extra_args=(f"--loglevel={loglevel}",),
            label=f"herd-{name}",
        )
        sampler: Sampler | None = None
        try:
            workers.wait_ready()
            if not queued:
                workers.release("recorder")
            threads = pool_sizes(app, workers.names)
            sampler = Sampler(workers, db).start()
            at = time.time() + LEAD_S + jobs / ENQUEUE_ASSUMED_PER_S
            producer_env = {
                **env,
                "BENCH_HERD_AT": "" if queued else repr(at),
                "BENCH_HERD_WINDOW_S": f"{WINDOW_S}",
            }
            enqueue_s = _spawned(_enqueue_herd, producer_env, rooms, timeout_s=600)
            if queued:  # no run_at: T is when the workers are switched to the queue
                at = time.time() + 1.0
            ahead_s = at - time.time()
            if ahead_s < 0.2:
                raise RuntimeError(f"the enqueue ended {-ahead_s:.1f}s after T: raise LEAD_S")
            time.sleep(max(0.0, at - 0.3 - time.time()))
            rss_before = list(sampler.rss_now)
            pids = workers.pids()
            cpu0, redis0, sandbox0 = cpu_s(pids), redis_cpu_s(db), sandbox.cpu_s()
            time.sleep(max(0.0, at - time.time()))
            if queued:
                workers.release("recorder")
            store = runtime.store()

            def done() -> int:
                counts = store.counts()
                return sum(counts[s] for s in ("succeeded", "failed", "cancelled", "expired"))

            unfinished = _wait_final(done, jobs, workers, until=at + _cap_s(jobs))
            finished_s = time.time() - at
            cpu1, redis1, sandbox1 = cpu_s(pids), redis_cpu_s(db), sandbox.cpu_s()
            sampler.stop()
            counts = {k: v for k, v in store.counts().items() if v}
            records = _records(db)
            diagnostics = _diagnostics(db)
            peak = int(db.info("memory")["used_memory_peak"])
            baseline = int(redis.Redis.from_url(server.url).info("memory")["used_memory_startup"])
        finally:
            if sampler is not None:
                sampler.stop()
            workers.stop()
    finally:
        server.stop(signal.SIGKILL)
    calls = sandbox.calls()
    result: dict[str, Any] = {
        "run": name,
        "system": "ours",
        "setup": f"{workers_n} worker{'s' if workers_n > 1 else ''} x threads "
        + "/".join(str(t) for t in threads),
        "jobs": jobs,
        "threads": threads,
        "enqueue_per_s": round(jobs / enqueue_s, 1),
        "enqueue_ended_before_t_s": round(ahead_s, 2),
        **judge([c["t"] for c in calls], at),
        "all_final_s": round(finished_s, 2),
        "statuses": counts,
        "redis_peak_mb": round(peak / 2**20, 1),
        "redis_startup_mb": round(baseline / 2**20, 1),
        "worker_rss_peak_mb": round(max(sampler.rss_peak) / 2**20, 1),
        "worker_rss_at_t_mb": round(max(rss_before) / 2**20, 1),
        "redis_clients_peak": sampler.clients_peak,
        "worker_cpu_per_s": round((cpu1 - cpu0) / finished_s, 2),
        "worker_cpu_ms_per_job": round((cpu1 - cpu0) * 1000 / jobs, 2),
        "redis_cpu_per_s": round((redis1 - redis0) / finished_s, 2),
        "sandbox_cpu_per_s": round((sandbox1 - sandbox0) / finished_s, 2),
        **diagnostics,
    }
    problems = []
    rooms_called = [c["room_id"] for c in calls]
    if len(set(rooms_called)) != len(rooms_called):
        problems.append(f"{len(rooms_called) - len(set(rooms_called))} rooms called twice")
    if windowed:
        w = check_windows(records, calls)
        result["windows"] = w
        if w["calls_after_deadline"] or w["bad_count"]:
            problems.append(
                f"{w['calls_after_deadline']} calls after their deadline, {w['bad_count']} jobs "
                f"neither started in their window nor expired without a call: {w['bad']}"
            )
    elif counts.get("succeeded") != jobs or len(calls) != jobs:
        problems.append(f"{len(calls)} calls, statuses {counts}")
    if unfinished:
        problems.insert(0, f"{unfinished} jobs not final at T + {finished_s:.0f} s (stopped)")
    result["problems"] = problems
    return result


def _cap_s(jobs: int) -> float:
    """How long after T a run may take before it is stopped: three times the ideal, 2 min at
    least (a stuck job is reported, not waited for)."""
    return max(120.0, 3 * jobs / RATE_PER_S)


def _wait_final(done: Callable[[], int], jobs: int, workers: CeleryWorkers, *, until: float) -> int:
    """Poll ``done()`` until every job is final or ``until`` (epoch); how many are not."""
    while True:
        workers.check_alive()
        left = jobs - done()
        if left <= 0 or time.time() >= until:
            return max(0, left)
        time.sleep(0.5)


# -- plain Celery -------------------------------------------------------------------------------


def run_plain(
    procs: Processes, sandbox: Sandbox, workdir: Path, *, jobs: int, cap_s: float
) -> dict[str, Any]:
    """``jobs`` ETA tasks due at T, Celery's rate_limit 200/s, threads 32; stopped at T + cap."""
    server = RedisServer(workdir, appendonly=False).start()
    try:
        db = redis.Redis.from_url(server.url)
        os.environ["BENCH_REDIS_URL"] = server.url  # read by herd_celery when imported
        ctx = Context(procs, sandbox, 1.0, server.url, server.url, db, db)
        os.environ.update(ctx.ref_env)
        from tests.benchmarks import herd_celery

        if herd_celery.app.conf.broker_url != server.url:
            raise RuntimeError("herd_celery was imported before: one plain run per process")
        sandbox.reset(latency_s=LATENCY_S)
        log(f"herd plain: {jobs} ETA tasks, rate_limit {herd_celery.RATE_LIMIT}, cap {cap_s:g}s")
        workers = CeleryWorkers(
            procs,
            herd_celery.app,
            app_module="tests.benchmarks.herd_celery",
            env=ctx.ref_env,
            count=1,
            extra_args=("-P", "threads", "-c", "32"),
            label="herd-plain",
        )
        sampler: Sampler | None = None
        try:
            workers.wait_ready()
            workers.release(herd_celery.QUEUE)
            sampler = Sampler(workers, db).start()
            at = time.time() + LEAD_S + jobs / 1000
            eta = datetime.fromtimestamp(at, UTC)
            started = time.perf_counter()
            for i in range(jobs):
                herd_celery.start_recording.apply_async(({"roomId": f"plain-{i}"},), eta=eta)
            enqueue_s = time.perf_counter() - started
            ahead_s = at - time.time()
            time.sleep(max(0.0, at - 0.3 - time.time()))
            rss_before = list(sampler.rss_now)
            pids = workers.pids()
            cpu0, redis0 = cpu_s(pids), redis_cpu_s(db)
            while time.time() < at + cap_s:
                workers.check_alive()
                if len(sandbox.calls()) >= jobs:
                    break
                time.sleep(1.0)
            stopped_s = time.time() - at
            cpu1, redis1 = cpu_s(pids), redis_cpu_s(db)
            sampler.stop()
            peak = int(db.info("memory")["used_memory_peak"])
        finally:
            if sampler is not None:
                sampler.stop()
            workers.stop()
    finally:
        server.stop(signal.SIGKILL)
    calls = sandbox.calls()
    judged = judge([c["t"] for c in calls], at)
    result = {
        "run": "plain",
        "system": "plain Celery",
        "setup": f"1 worker x threads 32, rate_limit {herd_celery.RATE_LIMIT}, eta",
        "jobs": jobs,
        "cap_s": cap_s,
        "enqueue_per_s": round(jobs / enqueue_s, 1),
        "enqueue_ended_before_t_s": round(ahead_s, 2),
        **judged,
        "stopped_s": round(stopped_s, 1),
        "capped": len(calls) < jobs,
        "redis_peak_mb": round(peak / 2**20, 1),
        "worker_rss_peak_mb": round(max(sampler.rss_peak) / 2**20, 1),
        "worker_rss_at_t_mb": round(max(rss_before) / 2**20, 1),
        "worker_cpu_per_s": round((cpu1 - cpu0) / stopped_s, 2),
        "redis_cpu_per_s": round((redis1 - redis0) / stopped_s, 2),
        "problems": [],
    }
    if judged.get("rate_per_s"):
        result["projected_last_s"] = round(jobs / judged["rate_per_s"], 0)
    return result


# -- report -------------------------------------------------------------------------------------

HEAD = [
    "run",
    "system",
    "setup",
    "jobs",
    "enq/s",
    "calls",
    "first_s",
    "last_s",
    "late_p50",
    "late_p99",
    "late_max",
    "busiest_1s",
    "redis_peak_MB",
    "rss_at_T_MB",
    "rss_peak_MB",
    "worker_cpu",
    "check",
]


def render(report: dict[str, Any]) -> str:
    m, runs = report["machine"], report["runs"]
    out = [
        f"The herd - {report['when']}: N jobs due at T, API latency {LATENCY_S * 1000:g} ms, "
        f"rate limit {RATE_PER_S:g}/s, ideal k-th call at T + k/{RATE_PER_S:g}",
        f"machine: nproc {m['nproc']} ({m['cpu']}), load avg {m['loadavg_before'][0]:.2f} before, "
        f"{m.get('loadavg_after', [float('nan')])[0]:.2f} after, total {report.get('total_s')} s",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "  times in s after T; lateness = k-th arrival - (T + k/200); busiest_1s = arrivals in "
        "the busiest whole second; worker_cpu = cores used by the workers from T to the last job",
    ]
    rows = [
        [
            r["run"],
            r["system"],
            r["setup"],
            r["jobs"],
            r["enqueue_per_s"],
            r.get("calls"),
            r.get("first_s"),
            r.get("last_s"),
            r.get("late_p50_s"),
            r.get("late_p99_s"),
            r.get("late_max_s"),
            r.get("busiest_second"),
            r["redis_peak_mb"],
            r["worker_rss_at_t_mb"],
            r["worker_rss_peak_mb"],
            r["worker_cpu_per_s"],
            "ok" if not r["problems"] else "; ".join(r["problems"])[:120],
        ]
        for r in runs.values()
    ]
    if rows:
        out.append(table(HEAD, rows))
    out += _verdicts(report)
    for name, error in report["errors"].items():
        out.append(f"{name}: FAILED - {error}")
    return "\n".join(out)


def _verdicts(report: dict[str, Any]) -> list[str]:
    runs, lines = report["runs"], []
    one = runs.get("one")
    if one and one.get("calls"):
        last_max_s = one["jobs"] / RATE_PER_S + LAST_SLACK_S
        p99_ok, last_ok = one["late_p99_s"] <= P99_MAX_S, one["last_s"] <= last_max_s
        lines.append(
            f"  one worker: p99 lateness {one['late_p99_s']:.2f} s (target <= {P99_MAX_S:g}) "
            f"{verdict(p99_ok)}; last call T + {one['last_s']:.1f} s (target <= {last_max_s:g}) "
            f"{verdict(last_ok)}; pool {one['threads']} threads, {one['rate_per_s']}/s "
            f"first to last"
        )
    ours = [r for r in runs.values() if r["system"] == "ours" and r.get("calls")]
    if ours:
        busiest = max(r["busiest_second"] for r in ours)
        lines.append(
            f"  busiest whole second over our runs: {busiest} calls (target <= {BUSIEST_MAX}) "
            f"{verdict(busiest <= BUSIEST_MAX)}; sliding 1 s windows: "
            + ", ".join(f"{r['run']} {r['busiest_sliding_1s']}" for r in ours)
        )
    small = runs.get("small")
    if one and small:
        growth = one["worker_rss_peak_mb"] / small["worker_rss_peak_mb"]
        lines.append(
            f"  worker RSS peak {small['jobs']:,} -> {one['jobs']:,} jobs: "
            f"{small['worker_rss_peak_mb']:.0f} -> {one['worker_rss_peak_mb']:.0f} MB, "
            f"x{growth:.2f} (target <= x{RSS_GROWTH_MAX:.2f}) {verdict(growth <= RSS_GROWTH_MAX)}"
        )
    windows = runs.get("windows")
    if windows and "windows" in windows:
        w = windows["windows"]
        ok = not w["calls_after_deadline"] and not w["bad_count"]
        lines.append(
            f"  windows ({WINDOW_EVERY - 1} in {WINDOW_EVERY} jobs start_window_s={WINDOW_S:g}): "
            f"{w['statuses']}; calls after their job's start_deadline: "
            f"{w['calls_after_deadline']}; jobs neither started in time nor expired without a "
            f"call: {w['bad_count']} {verdict(ok)}"
        )
    plain = runs.get("plain")
    if plain:
        projected = plain.get("projected_last_s")
        lines.append(
            f"  plain Celery: {plain['jobs']:,} jobs only (not N), stopped at T + "
            f"{plain['stopped_s']:g} s (cap {plain['cap_s']:g} s) with {plain.get('calls', 0):,} "
            f"calls made, {plain.get('rate_per_s')}/s"
            + (f"; all {plain['jobs']:,} would take about {projected:,.0f} s" if projected else "")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="N, the jobs due at T")
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated runs")
    parser.add_argument("--plain-jobs", type=int, default=2000)
    parser.add_argument("--plain-cap-s", type=float, default=60.0)
    parser.add_argument("--out", default="bench-results-herd.json")
    parser.add_argument(
        "--loglevel", default="INFO", help="our workers' --loglevel (INFO, as make worker)"
    )
    parser.add_argument("--log-dir", help="keep the processes' logs here (default: deleted)")
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of ours for this run, e.g. RECORDER_CONCURRENCY=75 (not the defaults)",
    )
    args = parser.parse_args(argv)
    wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown or args.jobs < 50:
        parser.error(f"unknown runs {unknown}" if unknown else "--jobs must be at least 50")
    for name in ("RECORDER_CONCURRENCY", "RECORDER_POOL"):  # the defaults, whatever the shell
        os.environ.pop(name, None)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    began = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "herd",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "jobs": args.jobs,
        "machine": machine(),
        "runs": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-herd-") as tmp:
        logs = Path(args.log_dir or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        procs = Processes(logs)
        try:
            sandbox = Sandbox(procs, collect_garbage=False)  # its pauses bunched the stamps
            probe = RedisServer(Path(tmp), appendonly=False).start()
            report["versions"] = versions(redis.Redis.from_url(probe.url))
            probe.stop(signal.SIGKILL)
            extra = dict(item.split("=", 1) for item in args.ours_env)
            report["ours_env"] = extra

            def ours(
                name: str, jobs: int, workers_n: int, windowed: bool = False, queued: bool = False
            ) -> Any:
                return lambda: run_ours(
                    procs,
                    sandbox,
                    Path(tmp),
                    name=name,
                    jobs=jobs,
                    workers_n=workers_n,
                    windowed=windowed,
                    extra=extra,
                    loglevel=args.loglevel,
                    queued=queued,
                )

            plan = {
                "one": ours("one", args.jobs, 1),
                "two": ours("two", args.jobs, 2),
                "small": ours("small", args.jobs // 5, 1),
                "windows": ours("windows", args.jobs, 1, windowed=True),
                "queued": ours("queued", args.jobs, 1, queued=True),
                "plain": lambda: run_plain(
                    procs, sandbox, Path(tmp), jobs=args.plain_jobs, cap_s=args.plain_cap_s
                ),
            }
            for name in RUNS:
                if name not in wanted:
                    continue
                try:
                    report["runs"][name] = plan[name]()
                    log(f"{name}: {_brief(report['runs'][name])}")
                except Exception as exc:  # one run failing must not cost the others' figures
                    log(f"{name} FAILED: {type(exc).__name__}: {exc}")
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                    procs.stop_all_but(sandbox.started)
        except KeyboardInterrupt:
            log("interrupted: stopping every process started")
            report["errors"]["interrupted"] = "KeyboardInterrupt"
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            procs.stop_all()
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.monotonic() - began, 1)
    report.setdefault("versions", {})
    print(render(report))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {args.out}")
    failed = report["errors"] or any(r["problems"] for r in report["runs"].values())
    return 1 if failed else 0


def _brief(r: dict[str, Any]) -> str:
    keys = ("calls", "first_s", "last_s", "late_p99_s", "busiest_second", "worker_rss_peak_mb")
    return ", ".join(f"{k} {r.get(k)}" for k in keys) + (
        f"; {r['problems']}" if r["problems"] else ""
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
