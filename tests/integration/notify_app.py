"""An application's own Celery app, consuming Celery's default queue ``celery`` on our Redis.

Started as ``celery -A tests.integration.notify_app worker``: its one task,
:data:`TASK_NAME`, is what a job's ``notify_task`` names; it appends the job it is sent (JSON) to
the Redis list :data:`RECEIVED_KEY`, so a test sees every notification in order.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

TASK_NAME = "notify_app.record"
RECEIVED_KEY = "notify_app:received"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("notify_app", broker=REDIS_URL)
app.conf.update(
    task_default_queue="celery",
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)
_db = redis.Redis.from_url(REDIS_URL)


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def record(job: dict[str, Any]) -> None:
    """Keep the notification: the job's dict, as the recorder sent it."""
    _db.rpush(RECEIVED_KEY, json.dumps(job))
