"""Worker bootsteps and signals: the start-up credential check and the due-job dispatcher."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import bootsteps
from celery.signals import worker_init

from tasks import runtime
from tasks.dispatcher import Dispatcher as DueDispatcher
from tasks.errors import ConfigurationError
from tasks.producer import publish

logger = logging.getLogger(__name__)


@worker_init.connect
def check_credentials(**_: Any) -> None:
    """Stop the worker at start-up, with one line, when the API key or secret is missing."""
    try:
        runtime.config().require_credentials()
    except ConfigurationError as exc:
        print(f"recorder worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


class Dispatcher(bootsteps.StartStopStep):
    """Runs a :class:`tasks.dispatcher.Dispatcher` thread for the life of the worker."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: DueDispatcher | None = None

    def start(self, parent: Any) -> None:
        self.dispatcher = DueDispatcher(store=runtime.store(), publish=publish)
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()

    shutdown = stop
