"""The one place that works around a bug of a library we use: kombu's Redis ``QoS``, guarded.

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

:class:`GuardedQoS` is a subclass of kombu's Redis ``QoS``, the class our broker channels
build their ``qos`` from (``worker.transport``): nothing of kombu's is patched. Only a worker
consumes, so only a worker's channels ever ack or hand back messages. ``tests/test_upstream.py``
reproduces the error on a channel kombu closed (kombu as shipped raises it; the guarded class
does not), checks that the app's channels use the guard, and fails when kombu leaves the 5.7
series the bug was checked on.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


class GuardedQoS(kombu_redis.QoS):
    """kombu's Redis ``QoS``, logging instead of raising kombu#970 (see the module docstring)."""

    def restore_unacked(self, client: Any = None) -> Any:
        """kombu's, or a warning when Redis's loss makes it fail (kombu#970)."""
        try:
            return super().restore_unacked(client)
        except (AttributeError, redis.RedisError) as exc:
            logger.warning(
                "kombu could not hand back unacked messages (%s: %s, kombu#970); they return "
                "after the visibility timeout, and the sweeper re-publishes their jobs sooner",
                type(exc).__name__,
                exc,
            )
            return None

    def ack(self, delivery_tag: Any) -> Any:
        """kombu's, skipped with a warning on a channel kombu closed (kombu#970)."""
        try:
            return super().ack(delivery_tag)
        except AttributeError:
            if not self._skipped_on_closed_channel("ack", delivery_tag):
                raise
            return None

    def reject(self, delivery_tag: Any, requeue: bool = False) -> Any:
        """kombu's, skipped with a warning on a channel kombu closed (kombu#970)."""
        try:
            return super().reject(delivery_tag, requeue=requeue)
        except AttributeError:
            if not self._skipped_on_closed_channel("reject", delivery_tag):
                raise
            return None

    def _skipped_on_closed_channel(self, what: str, delivery_tag: Any) -> bool:
        """Whether kombu closed the channel (then the skipped ``what`` is logged); an error on
        an open channel is not this bug, and is raised."""
        if getattr(self.channel, "connection", None) is not None:
            return False
        logger.warning(
            "kombu: %s of message %s skipped, its channel closed with the lost connection "
            "(kombu#970); it returns after the visibility timeout, its job already written",
            what,
            delivery_tag,
        )
        return True
