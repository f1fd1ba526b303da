"""The Dramatiq reference for ``run.py``: an actor that only POSTs the body (Redis broker).

Same request as :mod:`tests.benchmarks.plain_celery` (one session per thread, same token
header), Dramatiq's default middleware, no retries. Run as
``dramatiq tests.benchmarks.dramatiq_actor [--processes N --threads M]``.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from tests.benchmarks.plain_celery import post_start

QUEUE = "bench"
NAMESPACE = "dramatiq"

broker = RedisBroker(
    url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"), namespace=NAMESPACE
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def start_recording(body: dict[str, Any]) -> None:
    post_start(body)


def queue_key(queue: str = QUEUE) -> str:
    """The Redis list of message ids Dramatiq's workers fetch from (see its dispatch.lua)."""
    return f"{NAMESPACE}:{queue}"
