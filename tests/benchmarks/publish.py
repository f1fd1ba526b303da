"""Benchmark: CPU per published job message, ours next to a plain Celery app (not collected).

Three ways of putting N job messages on a queue, one thread, task-sent events on (as we ship):

- ``plain``: a plain Celery app on kombu's stock Redis transport, ``send_task`` per message;
- ``ours, one by one``: ``worker.publish.publish_job``, as the public API and beat publish;
- ``ours, due batch``: ``worker.publish.due_job_batch``, as a worker's dispatcher publishes due
  jobs, a dispatcher's batch at a time (``BATCH``, 50): one producer for the batch, its
  task-sent events in one message.

Each way runs ``--rounds`` times, the ways taking turns; it prints the median CPU time
(``time.process_time``) per message and each way's ratio to plain Celery. Uses its own Redis db
(``--redis-url``, db 3 by default), which it refuses when not empty and flushes at the end.

Run: ``.venv/bin/python tests/benchmarks/publish.py [--messages 3000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script, sys.path[0] is this folder, not the project
    sys.path.insert(0, str(ROOT))

QUEUE = "bench-publish"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    db = redis.Redis.from_url(args.redis_url)
    if db.dbsize():
        print(f"{args.redis_url} is not empty: pick another db (--redis-url)")
        return 2
    os.environ.update(
        REDIS_URL=args.redis_url,
        RECORDER_QUEUE=QUEUE,
        VIDEOSDK_API_KEY="bench-api-key",
        VIDEOSDK_SECRET="bench-secret-long-enough-for-hs256-0123456789",
    )
    from celery import Celery

    from tasks.delivery.dispatcher import BATCH
    from worker.publish import TASK_NAME, due_job_batch, publish_job, send_task_options

    plain = Celery("bench-plain", broker=args.redis_url, set_as_current=False)
    plain.conf.update(task_send_sent_event=True, task_default_queue=QUEUE)

    def plain_way(tag: str) -> None:
        for i in range(args.messages):
            plain.send_task(TASK_NAME, args=[f"{tag}-{i}"], kwargs={"room_id": "room"})

    def one_by_one(tag: str) -> None:
        for i in range(args.messages):
            publish_job(f"{tag}-{i}", "room")

    def due_batches(tag: str) -> None:
        for b in range(0, args.messages, BATCH):
            with due_job_batch() as publish:
                for i in range(b, min(b + BATCH, args.messages)):
                    publish(f"{tag}-{i}", "room")

    ways: dict[str, Callable[[str], None]] = {
        "plain Celery send_task": plain_way,
        "ours, one by one (publish_job)": one_by_one,
        "ours, due batch (due_job_batch)": due_batches,
    }
    # warm each way (imports, connections) before timing
    assert send_task_options("warm", "room")["name"] == TASK_NAME
    for name, way in ways.items():
        way(f"warm-{name[:4]}")
    samples: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for r in range(args.rounds):
            for name, way in ways.items():
                started = time.process_time()
                way(f"r{r}-{name[:4]}")
                samples[name].append((time.process_time() - started) / args.messages * 1e6)
                db.delete(QUEUE)
    finally:
        db.flushdb()
    base = statistics.median(samples["plain Celery send_task"])
    print(f"CPU per message, median of {args.rounds} rounds of {args.messages:,}, one thread:")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:34} {median:7.0f} µs   x{median / base:.2f} of plain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
