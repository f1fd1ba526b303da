"""The plain-Celery side of ``herd.py``: the minimal task of ``plain_celery`` with Celery's own
``rate_limit='200/s'``, sent with ``apply_async(eta=T)``.

Its own app and queue (``herd-plain``) on ``BENCH_REDIS_URL`` (read when imported), the rest as
``plain_celery``: JSON, results ignored, one ``requests.Session`` per thread, the same token.
Run as ``celery -A tests.benchmarks.herd_celery worker -P threads -c 32``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from tests.benchmarks.plain_celery import post_start

QUEUE = "herd-plain"
TASK_NAME = "bench.herd_start_recording"
RATE_LIMIT = "200/s"

app = Celery(
    "herd-plain-bench",
    broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"),
    set_as_current=False,
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK_NAME, rate_limit=RATE_LIMIT)
def start_recording(body: dict[str, Any]) -> int:
    return post_start(body)
