"""Profile our worker draining N jobs under ``py-spy record``: where does its CPU go?

Queues ``--jobs`` jobs (no API latency, rate limit far above the load), starts one worker of
``--system ours`` (or ``plain``: the reference task of ``plain_celery.py``) with ``--pool
threads`` (32 threads) or ``prefork`` (2 children) on a hold queue, attaches ``py-spy record
--subprocesses --gil`` (only the thread holding the GIL is sampled: where the Python CPU goes),
releases the worker and stops py-spy when every job has finished. Writes the collapsed stacks
(``--out``, for a flame graph tool) and prints the GIL-holding time per job, split by what the
sampled stack was doing, then Redis's CPU time and commands per job (``INFO commandstats``,
reset at the start: the counters are the whole server's).

Run: ``.venv/bin/python tests/benchmarks/profile_worker.py [--jobs 3000] [--pool threads]``
(needs ``py-spy``: ``.venv/bin/pip install py-spy``; uses Redis db 8 by default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.benchmarks.context import Context, _enqueue_ours, log, wait_store_done  # noqa: E402
from tests.benchmarks.harness import CeleryWorkers, Processes, Sandbox  # noqa: E402

#: (label, substring of a collapsed frame "function (file:line)"): each sample goes to the FIRST
#: category any of its frames matches, so the shares add up to 100%.
CATEGORIES = [
    ("HTTP call: ApiClient.start_recording", "start_recording (tasks/videosdk/client.py"),
    ("HTTP call: plain post_start", "post_start (tests/benchmarks/plain_celery.py"),
    ("metrics", "tasks/store/metrics.py"),
    ("job store: claim / update scripts", "tasks/store/"),
    ("logging: any log line", "logging/__init__.py"),
    ("Celery task events (EventDispatcher)", "celery/events/dispatcher.py"),
    ("delivery: the rest (tenacity, Job, uuid, ...)", "tasks/delivery/"),
    ("our task: outcome to Celery state", "worker/task.py"),
    ("dispatcher and sweeper thread", "tasks/delivery/dispatcher.py"),
    ("kombu: ack", "ack (kombu/message.py"),
    ("Celery consumer: receive, reserve, dispatch", "celery/worker/consumer"),
    ("Celery: task tracer", "celery/app/trace.py"),
    ("kombu: transport (poll, QoS)", "kombu/"),
    ("billiard: prefork pool IPC", "billiard/"),
    ("thread pool machinery", "concurrent/futures"),
]


def summarize(collapsed: Path) -> tuple[int, list[tuple[str, int]]]:
    """Total samples and the samples per category (first match wins; ``other`` last)."""
    total = 0
    counts: Counter[str] = Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        label = next((lab for lab, needle in CATEGORIES if needle in stack), "other")
        counts[label] += count
    order = [label for label, _ in CATEGORIES] + ["other"]
    return total, [(label, counts[label]) for label in order if counts[label]]


def redis_cpu_s(db: redis.Redis) -> float:
    """CPU seconds redis-server has used (user + system, all its threads)."""
    info = db.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--pool", choices=("threads", "prefork"), default="threads")
    parser.add_argument("--system", choices=("ours", "plain"), default="ours")
    parser.add_argument("--db", type=int, default=8)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--out",
        default=str(Path(tempfile.gettempdir()) / "profile-worker.txt"),
        help="collapsed stacks (default outside the repository)",
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    url = f"redis://127.0.0.1:6379/{args.db}"
    db = redis.Redis.from_url(url)
    if db.dbsize():
        print(f"{url} is not empty")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        procs = Processes(Path(tmp))
        spy: subprocess.Popen[bytes] | None = None
        try:
            sandbox = Sandbox(procs)
            ctx = Context(procs, sandbox, 1.0, url, url, db, db)
            env = dict(ctx.ours_env)
            if args.pool == "prefork":
                env.update(RECORDER_POOL="prefork", RECORDER_CONCURRENCY="2")
            os.environ.update(env)
            ctx.use_ours(env)
            if args.system == "ours":
                from worker.app import app

                workers = CeleryWorkers(procs, app, app_module="worker", env=env, count=1)
                _enqueue_ours(env, [f"prof-{i}" for i in range(args.jobs)])
                queue = "recorder"
            else:
                os.environ.update(ctx.ref_env)
                from tests.benchmarks import plain_celery

                pool_args = ["-P", args.pool, "-c", "32" if args.pool == "threads" else "2"]
                workers = CeleryWorkers(
                    procs,
                    plain_celery.app,
                    app_module="tests.benchmarks.plain_celery",
                    env=ctx.ref_env,
                    count=1,
                    extra_args=pool_args,
                )
                for i in range(args.jobs):
                    plain_celery.start_recording.delay({"roomId": f"prof-{i}"})
                queue = plain_celery.QUEUE
            workers.wait_ready()
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(workers.started[0].proc.pid),
                    "--subprocesses",
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--output",
                    args.out,
                    "--gil",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
            db.config_resetstat()
            redis_cpu = redis_cpu_s(db)
            started = time.monotonic()
            workers.release(queue)
            if args.system == "ours":
                wait_store_done(ctx, args.jobs, workers.check_alive)
            else:
                ctx.wait_progress(
                    lambda: len(sandbox.calls()), args.jobs, check=workers.check_alive
                )
            elapsed = time.monotonic() - started
            redis_cpu = redis_cpu_s(db) - redis_cpu
            commands = db.info("commandstats")
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            log(f"{args.jobs} jobs in {elapsed:.1f}s = {args.jobs / elapsed:.0f}/s under py-spy")
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
            procs.stop_all()
            db.flushdb()
    total, counts = summarize(Path(args.out))
    ms_per_sample = 1000 / args.rate
    print(
        f"{args.system}, {args.pool} pool: {total} samples holding the GIL = "
        f"{total * ms_per_sample / args.jobs:.2f} ms per job"
    )
    for label, n in counts:
        print(f"  {n / total:6.1%}  {n * ms_per_sample / args.jobs:6.3f} ms/job  {label}")
    # commands a script runs are counted both on their own and in the script's EVALSHA time
    print(f"Redis: {redis_cpu * 1000 / args.jobs:.3f} ms of CPU per job; commands per job:")
    for name, stats in sorted(commands.items(), key=lambda kv: -kv[1]["usec"]):
        calls = stats["calls"] / args.jobs
        if calls >= 0.01:
            print(f"  {calls:6.2f}  {stats['usec'] / args.jobs:6.1f} µs/job  {name[8:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
