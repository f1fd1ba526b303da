"""The Celery app: created here, configured from ``worker.config``, nothing else."""

from __future__ import annotations

from celery import Celery

from worker.config import celery_config, settings

app = Celery("videosdk-recorder")
app.config_from_object(celery_config(settings()))

from worker.steps import Dispatcher  # noqa: E402  (needs `app` to exist: it imports tasks)

app.steps["worker"].add(Dispatcher)
