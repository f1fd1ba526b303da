"""The plain-Celery side of ``herd.py``: the minimal task of ``plain_celery`` with Celery's own
``rate_limit='200/s'``, sent with ``apply_async(eta=T)``.

Its own app and queue (``herd-plain``) on ``BENCH_REDIS_URL`` (read when imported), the rest as
``plain_celery``: JSON, results ignored, one ``requests.Session`` per thread, the same token.
Run as ``celery -A tests.benchmarks.herd_celery worker -P threads -c 32``.
"""

from __future__ import annotations

from typing import Any

from tests.benchmarks.plain_celery import plain_app, post_start

QUEUE = "herd-plain"
TASK_NAME = "bench.herd_start_recording"
RATE_LIMIT = "200/s"

app = plain_app("herd-plain-bench", QUEUE)


@app.task(name=TASK_NAME, rate_limit=RATE_LIMIT)
def start_recording(body: dict[str, Any]) -> int:
    return post_start(body)
