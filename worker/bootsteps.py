"""Worker bootsteps: the due-job dispatcher and the reconciler that run beside every worker."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from tasks import runtime
from tasks.delivery.dispatcher import Dispatcher
from tasks.delivery.reconciler import Reconciler
from worker.publish import due_job_batch, publish_job, queue_depth, send_notification


class DueJobDispatcher(bootsteps.StartStopStep):
    """Runs a :class:`tasks.delivery.dispatcher.Dispatcher` thread for the life of the worker."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None

    def start(self, parent: Any) -> None:
        self.dispatcher = runtime.new_dispatcher(publish_job, queue_depth, due_job_batch)
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()

    shutdown = stop


class Reconciliation(bootsteps.StartStopStep):
    """Runs a :class:`tasks.delivery.reconciler.Reconciler` thread for the life of the worker:
    recordings whose webhooks never came are looked up at the API."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.reconciler: Reconciler | None = None

    def start(self, parent: Any) -> None:
        self.reconciler = runtime.reconciler(send_notification)
        self.reconciler.start()

    def stop(self, parent: Any) -> None:
        if self.reconciler is not None:
            self.reconciler.stop()

    shutdown = stop
