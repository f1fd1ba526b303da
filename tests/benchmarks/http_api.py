"""Benchmark: enqueue requests/s over the HTTP API (``recorder serve``) next to the Python API.

Runs on this machine, in one run so the ratio is fair on a noisy host:
- **python**: ``tasks.enqueue_recording`` from T threads of this process (no worker consumes:
  the enqueue path alone, storing the job and publishing its message);
- **http**: ``POST /v1/recordings`` to a real ``recorder serve`` process (FastAPI on uvicorn,
  one process) from T client threads, each with a keep-alive ``requests.Session``.
Prints jobs/s of each and http/python as a ratio. Uses a private Redis db (``--db``, flushed).

    python tests/benchmarks/http_api.py [--jobs 2000] [--threads 8] [--db 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token-0123456789abcdef"


def free_port() -> int:
    import socket  # local: only the port picker needs it

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(jobs: int, threads: int, one: object) -> float:
    """Jobs/s of calling ``one(i)`` for i < jobs from ``threads`` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(jobs)))  # type: ignore[arg-type]
    return jobs / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--db", type=int, default=12)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:6379/{args.db}"
    db = redis.Redis.from_url(url)
    db.flushdb()
    env = {
        **os.environ,
        "REDIS_URL": url,
        "RECORDER_API_TOKENS": TOKEN,
        "RECORDER_TASK_EVENTS": "true",
    }
    os.environ.update(REDIS_URL=url)
    import tasks  # local: after REDIS_URL is set, as an application would

    python_rate = timed(args.jobs, args.threads, lambda i: tasks.enqueue_recording(f"py-{i}"))
    db.flushdb()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{base}/openapi.json", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("recorder serve did not answer within 20 s")
            time.sleep(0.1)
        sessions: dict[int, requests.Session] = {}

        def post(i: int) -> None:
            import threading  # local: one session per client thread

            session = sessions.setdefault(threading.get_ident(), requests.Session())
            answer = session.post(
                f"{base}/v1/recordings",
                json={"room_id": f"http-{i}"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            answer.raise_for_status()

        http_rate = timed(args.jobs, args.threads, post)
    finally:
        server.terminate()
        server.wait(timeout=10)
        db.flushdb()
    print(f"enqueue, {args.jobs} jobs from {args.threads} threads (jobs/s):")
    print(f"  python API  {python_rate:8.0f}")
    print(f"  HTTP API    {http_rate:8.0f}   ratio http/python {http_rate / python_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
