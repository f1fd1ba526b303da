"""Worker bootsteps and signals: log format, start-up credential check, due-job dispatcher."""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
from celery import bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init
from kombu.transport import redis as kombu_redis

from tasks import logs, runtime
from tasks.dispatcher import Dispatcher as DueDispatcher
from tasks.errors import ConfigurationError
from worker import transport

logger = logging.getLogger(__name__)


def guard_restore_unacked() -> None:
    """Keep a worker alive when kombu fails to hand back its unacked messages on a Redis loss.

    kombu 5.x can raise ``AttributeError: 'NoneType' object has no attribute 'hostname'`` from
    ``QoS.restore_unacked`` while Redis restarts (kombu#970, #582); uncaught, it ends the worker
    with "Unrecoverable error". The messages stay in kombu's unacked index, which the periodic
    ``restore_visible`` sweep returns to the queue after the visibility timeout, and our own
    sweeper re-publishes their jobs sooner; so logging and carrying on loses nothing.
    """
    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "_recorder_guarded", False):
        return

    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return original(self, client)
        except (AttributeError, redis.RedisError) as exc:
            logger.warning(
                "kombu could not restore unacked messages (%s: %s); they return after the "
                "visibility timeout, and the sweeper re-publishes their jobs",
                type(exc).__name__,
                exc,
            )
            return None

    restore_unacked._recorder_guarded = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]


guard_restore_unacked()


@after_setup_logger.connect
@after_setup_task_logger.connect
def install_log_format(logger: logging.Logger, **_: Any) -> None:
    """Give the worker's and beat's log handlers our formatter: JSON or text, always redacted.

    ``RECORDER_LOG_FORMAT=json`` gives one JSON object per line. Bad settings are reported by
    the credential check (worker) or at start-up (beat); logging falls back to text meanwhile.
    """
    try:
        s = runtime.config()
    except ConfigurationError:
        logs.install(logger, json_lines=False)
        return
    logs.install(logger, json_lines=s.log_format == "json", secrets=[s.secret])


#: Celery's own per-task lines ("Task ... received", "Task ... succeeded in ...") say less than
#: the runner's state lines (job, room, status, attempt, HTTP status, latency) and cost a formatted
#: line each per job: below debug level the worker leaves them out (warnings and errors stay).
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@worker_init.connect
def quiet_celery_task_lines(sender: Any = None, **_: Any) -> None:
    """Runs before the worker builds its task strategies and tracers, which read the level once."""
    loglevel = getattr(sender, "loglevel", logging.INFO)
    if isinstance(loglevel, str):
        loglevel = logging.getLevelName(loglevel.upper())
    if loglevel > logging.DEBUG:
        for name in CELERY_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@worker_init.connect
def tune_redis_transport(**_: Any) -> None:
    """One Redis client per kombu channel, and no ack round trip the job store made already.

    See :mod:`worker.transport`.
    """
    transport.share_clients()
    transport.skip_store_acks()


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

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: DueDispatcher | None = None

    def start(self, parent: Any) -> None:
        self.dispatcher = runtime.new_dispatcher()
        self.dispatcher.start()

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()

    shutdown = stop


#: how long a worker's task events (received, started, succeeded) may wait to be sent together
EVENT_FLUSH_INTERVAL_S = 0.1


class EventBatching(bootsteps.StartStopStep):
    """Send the worker's task events to Flower in batches, every 100 ms, not every loop turn.

    With the event loop, Celery buffers task events but flushes the buffer at the next loop
    turn, which under load is one publish per event (three per job). A flush on a timer (or
    when Celery's buffer of 24 fills) sends them as one ``task.multi`` message, which Flower
    reads like single events. Flushed once more when the consumer stops.
    """

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer: Any = None

    def start(self, parent: Any) -> None:
        dispatcher = parent.event_dispatcher
        if parent.hub is None or dispatcher is None or not dispatcher.enabled:
            return
        dispatcher.on_send_buffered = None
        self.timer = parent.hub.call_repeatedly(EVENT_FLUSH_INTERVAL_S, parent._flush_events)

    def stop(self, parent: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            parent._flush_events()

    shutdown = stop
