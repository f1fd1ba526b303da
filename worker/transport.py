"""The broker transport: kombu's Redis transport, keeping one Redis client object per channel.

kombu's Redis ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` object for every publish,
every ack and every message it hands out (each on the channel's one connection pool). Since
redis-py 5 that object is costly to build: its ``__init__`` fills a case-insensitive table of
some 170 response callbacks, 115 µs of CPU here, four times per job in a worker. In a worker
taking 200 jobs a second that was the largest single cost py-spy ``--gil`` showed in the herd
(``tests/benchmarks/herd.py``): 18% of the worker's Python time. A ``redis.Redis`` object is
safe to share between threads (it takes a connection from its pool for each command), so these
subclasses build it once per channel and pool, through kombu's own ``conn_or_acquire``, and
hand out that one. When kombu replaces the channel's pool (after its connection was lost, or
in a forked child) the next operation builds a new client on the new pool.

The channels' ``qos`` is :class:`worker.upstream.GuardedQoS`, the guard against kombu#970.

The app's connections take these transports in place of kombu's Redis ones: the app's
``amqp`` class (:class:`AMQP`, a documented argument of ``Celery``) builds a
:class:`Connection` whose ``get_transport_cls`` makes the swap, and whose pool (Celery's
producer pool) hands out connections that make it too. The URL and its scheme are left
as they are (``redis://``, ``rediss://``, ``sentinel://``), so the worker's banner, Flower's
broker page and ``as_uri`` read as before. ``tests/test_transport.py`` checks that one client
serves a hundred publishes and acks, that a new pool gets a new client, and that the app's
connections use these transports for each scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery.app import amqp
from kombu import connection as kombu_connection
from kombu.transport import redis as kombu_redis

from worker.upstream import GuardedQoS

__all__ = ["AMQP", "Connection", "ConnectionPool", "SentinelTransport", "Transport"]


class _OneClient:
    """Mixin for kombu's Redis channels: ``conn_or_acquire`` reuses one client per pool."""

    pool: Any
    _recorder_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """``client`` if given, else this channel's one client on its current pool."""
        if client:
            yield client
            return
        cached = self._recorder_client
        if cached is None or cached.connection_pool is not self.pool:
            with super().conn_or_acquire() as cached:  # type: ignore[misc]
                self._recorder_client = cached
        yield cached


class Channel(_OneClient, kombu_redis.Channel):
    """kombu's Redis channel, with one client object per pool and kombu#970 guarded."""

    QoS = GuardedQoS


class SentinelChannel(_OneClient, kombu_redis.SentinelChannel):
    """kombu's Redis Sentinel channel, with one client object per pool and kombu#970 guarded."""

    QoS = GuardedQoS


class Transport(kombu_redis.Transport):
    """kombu's Redis transport (``redis://``, ``rediss://``) on :class:`Channel`."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport (``sentinel://``) on :class:`SentinelChannel`."""

    Channel = SentinelChannel


#: kombu's Redis transports, and ours in their place
OURS: dict[type, type] = {
    kombu_redis.Transport: Transport,
    kombu_redis.SentinelTransport: SentinelTransport,
}


class _OurTransports:
    """Mixin for kombu's connections: ours in place of kombu's Redis transports."""

    def get_transport_cls(self) -> type:
        """The transport class for this connection's URL: ours in place of kombu's Redis ones."""
        cls = super().get_transport_cls()  # type: ignore[misc]
        return OURS.get(cls, cls)


class Connection(_OurTransports, kombu_connection.Connection):
    """kombu's connection, on :class:`Transport` where kombu would use its Redis transport;
    its pool (Celery's producer pool) hands out connections that do the same."""

    def Pool(self, limit: int | None = None, **kwargs: Any) -> ConnectionPool:
        """kombu's pool of connections, of :class:`PooledConnection`."""
        return ConnectionPool(self, limit, **kwargs)


class PooledConnection(_OurTransports, kombu_connection.PooledConnection):
    """kombu's pooled connection, on our transports."""


class ConnectionPool(kombu_connection.ConnectionPool):
    """kombu's pool of connections, handing out :class:`PooledConnection`."""

    def new(self) -> PooledConnection:
        """A new connection with the settings of the pool's connection."""
        return PooledConnection(self, **self.connection.info())


class AMQP(amqp.AMQP):
    """Celery's ``app.amqp``, building :class:`Connection` (``Celery(amqp=...)``)."""

    Connection = Connection
    BrokerConnection = Connection
