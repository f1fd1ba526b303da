"""The one place that works around a bug of a library we use, and only in worker processes.

**kombu#970 (also #582): a Redis restart can end the worker.** While Redis restarts, kombu's
``QoS.restore_unacked`` (run when a channel closes, to hand back the messages it had delivered)
can raise ``AttributeError: 'NoneType' object has no attribute 'hostname'``; uncaught, the
worker stops with "Unrecoverable error" (seen with kombu 5.7.0 in about 1 of 5 restarts under
load). Guarded, it loses nothing: the messages stay in kombu's unacked index, its periodic
``restore_visible`` returns them after the visibility timeout, and our dispatcher's sweep puts
their jobs back sooner (``tasks.delivery.dispatcher``).

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


def apply() -> None:
    """Guard kombu's Redis ``QoS.restore_unacked`` in this process (idempotent)."""
    current = kombu_redis.QoS.restore_unacked
    if not getattr(current, GUARDED, False):
        kombu_redis.QoS.restore_unacked = guarded_restore_unacked(current)  # type: ignore[method-assign]


def applied() -> bool:
    """Whether :func:`apply` has run in this process."""
    return bool(getattr(kombu_redis.QoS.restore_unacked, GUARDED, False))
