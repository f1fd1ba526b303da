"""How the worker uses kombu's Redis transport: fewer round trips per job, same semantics.

Two changes, applied by the worker at start-up (``worker_init``, before any channel exists) and
only there: producers, beat and Flower keep kombu exactly as it is.

1. **One Redis client per channel.** kombu's Redis channel builds a new ``redis.Redis`` for
   every publish and every ack (``Channel.conn_or_acquire``), and redis-py's constructor copies
   its table of response callbacks each time: about 70 µs of CPU per ack and per event batch.
   A ``redis.Redis`` is thread-safe (it takes a connection from the channel's pool per
   command), so one per channel serves every caller. Subclasses (Sentinel's) inherit this.
2. **No second round trip for an ack the job store made.** With ``acks_late`` a message is
   acked after its task returns: kombu removes it from its unacked hash and index (``QoS.ack``).
   The runner's last write of a delivery does that removal itself, in the same Lua script as
   the outcome (:data:`tasks.store_scripts.UPDATE_LUA`), so the outcome and the ack happen
   together or not at all. :class:`StoreAckedRequest` (the task's request class) sees the
   task's return word; when it is one of :data:`tasks.runner.ACKED_BY_LAST_WRITE`, kombu's ack
   of that message keeps its in-process bookkeeping (prefetch accounting, message state) and
   skips Redis. This works the same in the thread pool and, in the parent, with prefork.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery.worker.request import Request
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from tasks.runner import ACKED_BY_LAST_WRITE


@contextmanager
def _shared_conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    shared = getattr(self, "_recorder_client", None)
    if shared is None or shared.connection_pool is not self.pool:  # a new pool after a close
        shared = self._recorder_client = self._create_client()
    yield shared


def share_clients(channel_cls: type = kombu_redis.Channel) -> None:
    """Give ``channel_cls`` (and its subclasses) one shared client per channel; idempotent."""
    channel_cls.conn_or_acquire = _shared_conn_or_acquire  # type: ignore[attr-defined]


#: what ``on_success`` receives from a task that returned a word of ``ACKED_BY_LAST_WRITE``:
#: Celery's tracer passes the return value's repr
_ACKED_RETVALS = frozenset(repr(word) for word in ACKED_BY_LAST_WRITE)

#: delivery tags whose message the job store has removed already: added when the request acks,
#: taken out by kombu's ack, which Celery runs a moment later in the worker's event loop
_ACKED_IN_STORE: set[str] = set()


def skip_store_acks(qos_cls: type = kombu_redis.QoS) -> None:
    """Make ``qos_cls.ack`` skip Redis for tags in :data:`_ACKED_IN_STORE`; idempotent."""
    original: Callable[[Any, str], None] = qos_cls.ack  # type: ignore[attr-defined]
    if getattr(original, "_recorder_skips_store_acks", False):
        return

    @functools.wraps(original)
    def ack(self: Any, delivery_tag: str) -> None:
        try:
            _ACKED_IN_STORE.remove(delivery_tag)
        except KeyError:
            original(self, delivery_tag)
        else:
            virtual.QoS.ack(self, delivery_tag)  # bookkeeping only: the store acked in Redis

    ack._recorder_skips_store_acks = True  # type: ignore[attr-defined]
    qos_cls.ack = ack  # type: ignore[attr-defined]


class StoreAckedRequest(Request):
    """The request class of ``tasks.start_recording``: knows when the store acked the message.

    Celery derives a class per task from this one (``create_request_cls``) with its own
    ``on_success``, which acks (``acks_late``) and then sends ``task-succeeded``.
    ``__init_subclass__`` wraps that ``on_success`` to note the task's return word first.
    """

    acked_in_store = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        on_success = cls.__dict__.get("on_success")
        if on_success is None:
            return

        @functools.wraps(on_success)
        def noting_on_success(self: Any, failed__retval__runtime: Any, **kw: Any) -> Any:
            failed, retval, _ = failed__retval__runtime
            self.acked_in_store = not failed and retval in _ACKED_RETVALS
            return on_success(self, failed__retval__runtime, **kw)

        cls.on_success = noting_on_success

    def acknowledge(self) -> None:
        if self.acked_in_store and not self.acknowledged:
            _ACKED_IN_STORE.add(self.message.delivery_tag)
        super().acknowledge()
