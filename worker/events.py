"""Task events (Flower's view) sent in batches: one publish per 100 ms, not one per event.

With the event loop, a worker buffers its task events (received, started, succeeded) but asks
for a flush at the very next loop turn, which under load is one Redis publish per event, three
per job. Here the worker's dispatcher is built without that request (``on_send_buffered``, a
parameter of Celery's ``EventDispatcher``), and :class:`EventFlush` flushes it every
:data:`FLUSH_INTERVAL_S` on the worker's event loop (and once more when the consumer stops), or
sooner when Celery's buffer of 24 events fills. Flower reads a batch (``task.multi``) like single
events. A SIGKILLed worker takes at most its last 100 ms of events with it (Flower's view only:
the job records are the truth).

Both are public seams: the app's ``events`` class (whose ``dispatcher_cls`` Celery builds every
dispatcher from) and a consumer bootstep using the consumer's ``hub`` and ``event_dispatcher``.
Producers' ``task-sent`` events are not buffered, so they are sent as before, under one name per
host (:func:`producer_nodename`); the due-job dispatcher's are, one ``task.multi`` per batch
(:class:`SentEventBuffer`).
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.events.event import group_from
from celery.utils.nodenames import gethostname, nodename

#: how long a worker's task events may wait to be sent together
FLUSH_INTERVAL_S = 0.1


def producer_nodename() -> str:
    """``producer@<host>``: the name a dispatcher not given one (a producer's, for ``task-sent``)
    sends its events under, instead of Celery's ``gen<pid>@<host>``, so Flower's per-worker
    series and Workers page grow with the hosts that enqueue, not with every process that did."""
    return nodename("producer", gethostname())


class BatchingEventDispatcher(EventDispatcher):
    """Celery's dispatcher, leaving the flush of buffered task events to :class:`EventFlush`;
    one built without a hostname (a producer's) is :func:`producer_nodename`."""

    def __init__(self, *args: Any, on_send_buffered: Any = None, **kwargs: Any) -> None:
        if len(args) < 2 and not kwargs.get("hostname"):
            kwargs["hostname"] = producer_nodename()
        super().__init__(*args, on_send_buffered=None, **kwargs)


class SentEventBuffer(BatchingEventDispatcher):
    """Holds the ``task-sent`` events ``send_task`` publishes through it (its
    ``event_dispatcher``) until :meth:`flush`, which sends them as one ``task.multi`` message.

    The dispatcher of due jobs publishes a batch of jobs at a time (``worker.publish``): one
    event publish per batch instead of one per job. Events of other groups are published at once.
    Celery's ``send`` flushes by itself once ``buffer_limit`` events are held, inside the publish
    of a job's message; give a limit no batch reaches, so only the batch's end sends them.
    Event publishes are not retried (a failed flush is the batch's to log).
    """

    def publish(self, type: str, fields: Any, producer: Any, **kwargs: Any) -> Any:
        """Buffer a ``task-*`` event (flushed by :meth:`flush`); publish any other at once."""
        if group_from(type) not in self.buffer_group:
            return super().publish(type, fields, producer, **kwargs)
        kwargs.pop("retry_policy", None)
        kwargs.pop("retry", None)
        self.send(type, **kwargs, **fields)
        return None


class RecorderEvents(Events):
    """The app's events: every dispatcher is a :class:`BatchingEventDispatcher`."""

    dispatcher_cls = "worker.events:BatchingEventDispatcher"


class EventFlush(bootsteps.StartStopStep):
    """Flushes the consumer's buffered task events every :data:`FLUSH_INTERVAL_S`."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer: Any = None

    def start(self, parent: Any) -> None:
        dispatcher = parent.event_dispatcher
        if parent.hub is None or dispatcher is None or not dispatcher.enabled:
            return
        self.timer = parent.hub.call_repeatedly(FLUSH_INTERVAL_S, dispatcher.flush)

    def stop(self, parent: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            if parent.event_dispatcher is not None:
                parent.event_dispatcher.flush()

    shutdown = stop
