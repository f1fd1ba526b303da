"""Keyspace: what every part of the job store shares, and the one place its keys are built.

The Redis client, the key prefix, the records' lifetime and the clock; the key schema itself is
described in :mod:`tasks.store`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis


class Keyspace:
    """The job store's Redis client, key prefix (``recorder`` by default), ``ttl_s`` and clock."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        prefix: str = "recorder",
        ttl_s: int = 30 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.clock = clock

    def key(self, kind: str, name: str = "") -> str:
        """The one place Redis keys are built: ``{prefix}:{kind}[:{name}]``."""
        return f"{self.prefix}:{kind}:{name}" if name else f"{self.prefix}:{kind}"
