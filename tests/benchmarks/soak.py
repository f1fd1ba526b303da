"""The full soak: 1,000 jobs, 10% 5xx, 5% 429, random latency, the worker SIGKILLed twice.

Run: ``.venv/bin/python tests/benchmarks/soak.py [--jobs 1000]`` (Redis at 127.0.0.1:6379; uses
db 14 and flushes it). Prints the outcome counts and exits 1 if a job was lost or a room was
started twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis

from tasks import runtime
from tasks.sandbox.server import SandboxServer
from tests.conftest import API_KEY, SECRET, WorkerProcess, base_env
from tests.integration.soak import SOAK_ENV, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:6379/{args.redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    workers: list[WorkerProcess] = []
    with (
        SandboxServer(api_key=API_KEY, secret=SECRET) as sandbox,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {**base_env(url, sandbox.url), **SOAK_ENV}
        os.environ.update(env)
        runtime.reset()

        def start_worker() -> WorkerProcess:
            worker = WorkerProcess(env, Path(tmp) / f"worker-{len(workers)}.log")
            workers.append(worker)
            return worker.wait_ready()

        try:
            result = run_soak(n_jobs=args.jobs, sandbox=sandbox, start_worker=start_worker)
        finally:
            for worker in workers:
                worker.stop()
            client.flushdb()
    print(f"jobs: {result.jobs} in {result.seconds:.1f}s, worker SIGKILLed {result.kills}x")
    print(f"outcomes: {dict(result.statuses)}")
    print(f"API answers: {dict(sorted(result.calls_by_status.items()))}")
    print(f"lost deliveries recovered: {result.lost_deliveries}")
    print(
        f"rooms started: {len(result.starts_per_room)}, "
        f"max starts for one room: {max(result.starts_per_room.values(), default=0)}"
    )
    print("problems: " + ("; ".join(result.problems) if result.problems else "none"))
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
