"""The reference for ``run.py``: a minimal hand-written Celery task that only POSTs the body.

No job records, no rate limiter, no leases, no retries: one ``requests.Session`` per thread
(so per prefork child too), the same raw-JWT ``Authorization`` header our client sends, and
Celery's defaults apart from JSON and ignoring results. Configured from ``BENCH_REDIS_URL``,
``BENCH_API_BASE``, ``BENCH_API_KEY`` and ``BENCH_SECRET``; run as
``celery -A tests.benchmarks.plain_celery worker``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import jwt
import requests
from celery import Celery

QUEUE = "plain"
TASK_NAME = "bench.plain_start_recording"
TOKEN_TTL_S = 600


def plain_app(name: str, queue: str) -> Celery:
    """A Celery app on ``BENCH_REDIS_URL`` with Celery's defaults apart from JSON, ignored
    results and ``queue`` as the default queue (``herd_celery`` builds its own with it)."""
    app = Celery(
        name,
        broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4"),
        set_as_current=False,
    )
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    return app


app = plain_app("plain-bench", QUEUE)

_local = threading.local()
_token_lock = threading.Lock()
_token: tuple[str, float] | None = None


def token() -> str:
    """A VideoSDK token with the claims ``tasks.videosdk.tokens`` mints, cached per process."""
    global _token
    with _token_lock:
        now = time.time()
        if _token is None or now > _token[1] - 60:
            claims = {
                "apikey": os.environ["BENCH_API_KEY"],
                "permissions": ["allow_join"],
                "version": 2,
                "roles": ["crawler"],
                "iat": int(now),
                "exp": int(now) + TOKEN_TTL_S,
            }
            encoded = jwt.encode(claims, os.environ["BENCH_SECRET"], algorithm="HS256")
            _token = (encoded, now + TOKEN_TTL_S)
        return _token[0]


def post_start(body: dict[str, Any]) -> int:
    """One ``POST /v2/recordings/start`` on this thread's session; returns the HTTP status."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    resp = session.post(
        os.environ["BENCH_API_BASE"].rstrip("/") + "/v2/recordings/start",
        data=json.dumps(body),
        headers={"Authorization": token(), "Content-Type": "application/json"},
        timeout=(5, 30),
    )
    return resp.status_code


@app.task(name=TASK_NAME)
def start_recording(body: dict[str, Any]) -> int:
    return post_start(body)
