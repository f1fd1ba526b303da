"""The Celery app: created here, configured from ``worker.config``, nothing else."""

from __future__ import annotations

from celery import Celery
from kombu import pools

from worker.config import celery_config, settings

app = Celery("videosdk-recorder")
app.config_from_object(celery_config(settings()))

from worker.steps import Dispatcher, EventBatching  # noqa: E402  (needs `app`: imports tasks)

app.steps["worker"].add(Dispatcher)
app.steps["consumer"].add(EventBatching)


def reconfigure() -> None:
    """Re-read the settings into the app and drop its broker connections.

    Production processes read the environment once; this is for tests (and the demo) that
    change it within one process.
    """
    app.conf.update(celery_config(settings()))
    pools.reset()  # kombu's pools are global, keyed by connection: close and forget them all
    app._pool = None
    app.amqp._producer_pool = None
