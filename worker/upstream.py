"""The one place that works around a bug of a library we use, and only in worker processes.

**kombu#970 (also #582): a Redis restart can end the worker.** While Redis restarts, kombu's
``QoS.restore_unacked`` (run when a channel closes, to hand back the messages it had delivered)
can raise ``AttributeError: 'NoneType' object has no attribute 'hostname'``; uncaught, the
worker stops with "Unrecoverable error" (seen with kombu 5.7.0 in about 1 of 5 restarts under
load). Guarded, it loses nothing: the messages stay in kombu's unacked index, its periodic
``restore_visible`` returns them after the visibility timeout, and our dispatcher's sweep puts
their jobs back sooner (``tasks.delivery.dispatcher``).

**The same bug, one step later: an ack on the closed channel.** A task that finishes after the
connection was lost is acked on the channel it was delivered on, which kombu closed: its
``connection`` is None, and ``QoS.ack`` (or ``reject``) raises ``AttributeError: 'NoneType'
object has no attribute 'client'`` from ``_connparams``, which Celery's ``ack_log_error`` does
not catch, so the worker stops (seen here in every Redis restart whose first error was the one
above: 19 of 19 such workers in the soak). Guarded, such an ack is skipped and logged: the
message stays in the unacked index and comes back after the visibility timeout, when its claim
finds the job finished (the outcome is written before the ack) and makes no call.

:func:`apply` is called by the worker at start-up (``worker.signals``), never at import, so
producers, beat and Flower run kombu exactly as shipped. ``tests/test_upstream.py`` fails when
the guard stops being applied in a worker, and when kombu renames what it wraps.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)

#: marks the guarded method, so applying twice wraps once
GUARDED = "_recorder_guards_kombu_970"


def guarded_restore_unacked(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (kombu's ``QoS.restore_unacked``), logging instead of raising the bug."""

    @functools.wraps(original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        try:
            return original(self, client)
        except (AttributeError, redis.RedisError) as exc:
            logger.warning(
                "kombu could not hand back unacked messages (%s: %s, kombu#970); they return "
                "after the visibility timeout, and the sweeper re-publishes their jobs sooner",
                type(exc).__name__,
                exc,
            )
            return None

    setattr(restore_unacked, GUARDED, True)
    return restore_unacked


def guarded_on_closed_channel(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (kombu's ``QoS.ack`` or ``reject``), skipped on a channel kombu closed."""

    @functools.wraps(original)
    def on_delivery(self: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, delivery_tag, *args, **kwargs)
        except AttributeError:
            if getattr(self.channel, "connection", None) is not None:
                raise  # not the closed channel: a bug to see
            logger.warning(
                "kombu: %s of message %s skipped, its channel closed with the lost connection "
                "(kombu#970); it returns after the visibility timeout, its job already written",
                original.__name__,
                delivery_tag,
            )
            return None

    setattr(on_delivery, GUARDED, True)
    return on_delivery


#: what is guarded: kombu's Redis ``QoS`` method name, and the guard that wraps it
GUARDS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "restore_unacked": guarded_restore_unacked,
    "ack": guarded_on_closed_channel,
    "reject": guarded_on_closed_channel,
}


def apply() -> None:
    """Guard kombu's Redis ``QoS`` methods of :data:`GUARDS` in this process (idempotent)."""
    for name, guard in GUARDS.items():
        current = getattr(kombu_redis.QoS, name)
        if not getattr(current, GUARDED, False):
            setattr(kombu_redis.QoS, name, guard(current))


def applied() -> bool:
    """Whether :func:`apply` has run in this process."""
    return all(getattr(getattr(kombu_redis.QoS, name), GUARDED, False) for name in GUARDS)
