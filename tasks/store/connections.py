"""Connections: Redis clients built from ``REDIS_URL`` in its three forms.

- ``redis://[:password@]host:port/db`` and ``unix:///path.sock?db=0``: plain;
- ``rediss://...?ssl_cert_reqs=required``: TLS (redis-py reads the query options);
- ``sentinel://[:password@]host:26379[/db];sentinel://host2:26379``: Redis Sentinel, the same
  form Celery's broker takes, with the master's name from ``REDIS_SENTINEL_MASTER``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import MasterDownError, ReadOnlyError
from redis.retry import Retry
from redis.sentinel import Sentinel
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from tasks.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: a dead Redis must fail a call within seconds, not hang a worker or a producer forever.
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30

#: Redis errors that pass (a restart, a failover, memory freed): a write that hits one is tried
#: again (:data:`THROUGH_OUTAGE`), never taken as the job's outcome
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # also BusyLoadingError: LOADING after a restart
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # OOM under maxmemory noeviction, until memory is freed
    ReadOnlyError,  # READONLY: a replica answering after a failover
    MasterDownError,  # MASTERDOWN: a replica cut off from its primary
)

#: answers of a server that is not the primary (any more): the connection is dropped as if it
#: were lost, so the next command connects again, through a managed endpoint's one address, to
#: whichever server is the primary then. redis-py keeps a connection after an error answer, and
#: an endpoint that moved to the new primary may leave the old connections open: every write on
#: them would answer READONLY for as long as the old primary lives. (LOADING is a
#: ConnectionError to redis-py, dropped already.) The command is not tried again in place: the
#: callers that may repeat a write do (:func:`through_outage`).
RECONNECT_ON: tuple[type[Exception], ...] = (ReadOnlyError, MasterDownError)

#: a store write retried through an outage of up to half a minute, then its error raised
THROUGH_OUTAGE = Retrying(
    retry=retry_if_exception_type(TRANSIENT_ERRORS),
    stop=stop_after_delay(30),
    wait=wait_exponential(multiplier=0.1, max=2),
    reraise=True,
)

T = TypeVar("T")


def through_outage(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, tried again through a Redis outage (:data:`THROUGH_OUTAGE`)
    only after a first transient error (logged): the common case costs no tenacity machinery.
    Raises the last transient error when the outage outlasts the retries."""
    try:
        return call(*args, **kwargs)
    except TRANSIENT_ERRORS as exc:
        logger.warning("Redis: %s (%s), retrying through the outage", type(exc).__name__, exc)
        return THROUGH_OUTAGE(call, *args, **kwargs)


_local = threading.local()
#: connections one process may hold: each worker thread keeps one (``own_client``), and a
#: worker's pool may have up to 256 threads (``tasks.settings.CONCURRENCY_MAX``) beside its
#: dispatcher and reconciler; redis-py's default of 100 would refuse claims past 100 threads
MAX_CONNECTIONS = 512


def redis_client(url: str, *, sentinel_master: str | None = None) -> redis.Redis:
    """A client for ``url``; raises ConfigurationError for a malformed or incomplete URL."""
    options = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        # redis-py disconnects on a retryable error; with no retries it then raises it
        "retry": Retry(NoBackoff(), 0),
        "retry_on_error": list(RECONNECT_ON),
        "max_connections": MAX_CONNECTIONS,
    }
    if url.startswith("sentinel://"):
        hosts, password, db = parse_sentinel_url(url)
        if not sentinel_master:
            raise ConfigurationError("a sentinel:// REDIS_URL needs REDIS_SENTINEL_MASTER")
        sentinel = Sentinel(hosts, sentinel_kwargs={"password": password}, **options)
        return sentinel.master_for(sentinel_master, db=db, password=password)
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigurationError(f"REDIS_URL is not a Redis URL: {exc}") from None


def own_client(client: redis.Redis) -> redis.Redis:
    """This thread's client on ``client``'s pool, keeping one connection: for per-job calls.

    A command through the pool takes its lock and probes the connection for unread data (a
    poll and a non-blocking read): about 25 µs of CPU, more when 32 worker threads contend.
    The job store and the rate limiter share the thread's client, so a worker thread holds one
    connection, as many as the pool would have opened under the same load. It returns to the
    pool when the thread ends; a forked child (a prefork pool process) makes its own.
    """
    pool = client.connection_pool
    if getattr(_local, "pid", None) != os.getpid():
        _local.clients, _local.pid = {}, os.getpid()
    clients: dict[int, redis.Redis] = _local.clients
    mine = clients.get(id(pool))
    if mine is None or mine.connection_pool is not pool:
        mine = clients[id(pool)] = redis.Redis(connection_pool=pool, single_connection_client=True)
    return mine


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """``sentinel://[:pw@]h1:p1[/db];sentinel://h2:p2`` as (hosts, password, db)."""
    hosts: list[tuple[str, int]] = []
    password: str | None = None
    db = 0
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigurationError(f"bad sentinel URL part {part!r} in REDIS_URL")
        hosts.append((parts.hostname, parts.port or 26379))
        password = unquote(parts.password) if parts.password else password
        if parts.path.strip("/"):
            try:
                db = int(parts.path.strip("/"))
            except ValueError:
                raise ConfigurationError(f"bad database number in {part!r}") from None
    return hosts, password, db
