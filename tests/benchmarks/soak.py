"""The full soak, several runs in a row: no job stuck, no worker down through Redis faults at scale.

Each run (``tests/integration/soak.py``): 1,000 jobs for 1,000 rooms on a private
``redis-server`` with AOF on; the sandbox answers 10% 5xx, 5% 429 with ``Retry-After: 1``, after
0-50 ms; two workers (rate limit 200/s, 8 attempts, backoff at most 1 s); one worker's whole
process group SIGKILLed when a third of the rooms have been started and the other at a half, each
replaced; Redis restarted with SIGTERM at two thirds.

Run: ``.venv/bin/python tests/benchmarks/soak.py [--runs 5] [--jobs 1000] [--pool both]``
(``make soak``). ``--pool both`` alternates threads and prefork. Needs ``redis-server`` on PATH;
touches no other Redis. Prints one line per run and exits 1 if any run had a problem: a job
stuck or not final within ``--final-within`` seconds (240), a room started twice, an API call
after its job finished, or a worker down that was not killed on purpose.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.sandbox.server import SandboxServer
from tests.conftest import API_KEY, SECRET, RedisServer, WorkerProcess, base_env, reset_process
from tests.integration.soak import POOLS, SoakResult, run_soak


def one_run(n_jobs: int, pool: str, final_within_s: float, workdir: Path) -> SoakResult:
    """A soak run on a fresh private Redis, sandbox and workers, all stopped afterwards."""
    redis_server = RedisServer(workdir).start()
    workers: list[WorkerProcess] = []
    saved = dict(os.environ)
    try:
        with SandboxServer(api_key=API_KEY, secret=SECRET) as sandbox:
            env = base_env(redis_server.url, sandbox.url)
            os.environ.update(env)  # this process is the producer
            reset_process()

            def start_worker(**overrides: str) -> WorkerProcess:
                log = workdir / f"worker-{len(workers)}.log"
                worker = WorkerProcess({**env, **overrides}, log)
                workers.append(worker)
                return worker.wait_ready()

            try:
                return run_soak(
                    n_jobs=n_jobs,
                    pool=pool,
                    sandbox=sandbox,
                    redis_server=redis_server,
                    start_worker=start_worker,
                    final_within_s=final_within_s,
                )
            finally:
                for worker in workers:
                    worker.stop()
    finally:
        redis_server.stop(signal.SIGKILL)
        os.environ.clear()
        os.environ.update(saved)
        reset_process()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pool", choices=[*POOLS, "both"], default="both")
    parser.add_argument("--final-within", type=float, default=240.0, metavar="SECONDS")
    parser.add_argument("--keep-logs", action="store_true", help="keep workers' logs and AOF")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    failed = 0
    for run in range(args.runs):
        pool = POOLS[run % len(POOLS)] if args.pool == "both" else args.pool
        workdir = Path(tempfile.mkdtemp(prefix=f"recorder-soak-{run + 1}-"))
        began = time.monotonic()
        try:
            result = one_run(args.jobs, pool, args.final_within, workdir)
        except Exception as exc:  # a worker that never got ready, Redis that never answered
            print(f"run {run + 1}/{args.runs} pool={pool} error: {exc!r}", flush=True)
            print(f"  logs and AOF kept in {workdir}", flush=True)
            failed += 1
            continue
        wall = time.monotonic() - began
        print(f"run {run + 1}/{args.runs} {result.line()} wall={wall:.0f}s", flush=True)
        if result.problems:
            failed += 1
            print(f"  logs and AOF kept in {workdir}", flush=True)
        elif not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.runs - failed}/{args.runs} runs without problems", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
