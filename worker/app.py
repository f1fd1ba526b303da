"""The Celery app: created here and pointed at its configuration, nothing else.

The configuration (``worker.config``) is read from the environment the first time Celery needs
it, and the worker's parts are named by import path (``module:Class``), as Celery allows: so
``import worker`` creates no Redis connection and runs none of our code, and the public API
(``tasks``), which publishes through this app, can be imported before or after it.
"""

from __future__ import annotations

from celery import Celery

app = Celery(
    "videosdk-recorder",
    events="worker.events:RecorderEvents",
    # kombu's Redis transport with one client object per channel, not one per operation
    amqp="worker.transport:AMQP",
)
app.config_from_object("worker.config:CELERY_SETTINGS")
app.steps["worker"].add("worker.bootsteps:DueJobDispatcher")
app.steps["worker"].add("worker.bootsteps:Reconciliation")
app.steps["consumer"].add("worker.events:EventFlush")
