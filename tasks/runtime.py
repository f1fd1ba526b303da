"""Runtime: builds the process's collaborators from the settings, once per process.

The only module that joins configuration to domain classes. Objects are rebuilt after a fork
(prefork children must not share their parent's sockets).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import redis

from tasks.delivery.dispatcher import Dispatcher, OpenBatch, Publish, QueueDepth, queue_ahead
from tasks.delivery.producer import Producer
from tasks.delivery.reconciler import Reconciler
from tasks.delivery.runner import Runner
from tasks.notify import Notifier
from tasks.settings import VISIBILITY_TIMEOUT_S, Settings, settings
from tasks.store import metrics
from tasks.store.connections import redis_client
from tasks.store.jobs import JobStore
from tasks.store.ratelimit import RedisRateLimiter
from tasks.videosdk.client import ApiClient
from tasks.videosdk.tokens import TokenMinter
from tasks.webhooks.keys import PublicKeys
from tasks.webhooks.receiver import WebhookReceiver

T = TypeVar("T")
#: ``send(task_name, job_dict, queue=...)``: sends a notification (``worker.publish``)
SendTask = Callable[..., None]
#: calls that must have been measured before their latency sizes a worker's pool
LATENCY_SAMPLE_MIN = 100
_lock = threading.RLock()
_cache: dict[str, object] = {}
_pid = os.getpid()


def _once(name: str, build: Callable[[], T]) -> T:
    global _pid
    with _lock:
        if _pid != os.getpid():
            _cache.clear()
            _pid = os.getpid()
        if name not in _cache:
            _cache[name] = build()
        return _cache[name]  # type: ignore[return-value]


def reset() -> None:
    """Forget every built object and the settings (tests change the environment in-process).

    The Celery app's configuration is reloaded by ``worker.config.reconfigure``.
    """
    with _lock:
        for built in _cache.values():
            if isinstance(built, redis.Redis):
                built.close()
        _cache.clear()
    settings.cache_clear()


def config() -> Settings:
    return settings()


def redis_conn() -> redis.Redis:
    s = settings()
    return _once("redis", lambda: redis_client(s.redis_url, sentinel_master=s.sentinel_master))


def store() -> JobStore:
    s = settings()
    return _once(
        "store",
        lambda: JobStore(client=redis_conn(), prefix=s.key_prefix, ttl_s=s.job_ttl_s),
    )


def limiter() -> RedisRateLimiter:
    s = settings()
    return _once(
        "limiter",
        lambda: RedisRateLimiter(
            client=redis_conn(), rate_per_s=s.rate_per_s, burst=s.rate_burst, prefix=s.key_prefix
        ),
    )


def producer(publish: Publish) -> Producer:
    """A producer on the process's store, with the settings' window and webhook URL, publishing
    with ``publish`` (``worker.publish.publish_job``: the public API's and beat's)."""
    s = settings()
    return Producer(
        store=store(),
        publish=publish,
        start_window_s=s.start_window_s,
        webhook_url=s.webhook_url,
    )


def notifier(send: SendTask | None) -> Notifier:
    """Tells jobs' ``notify_task`` through ``send(name, args, queue=)`` (``worker.publish``)."""
    queue = settings().notify_queue
    if send is None:
        return Notifier(None)
    return Notifier(lambda name, job: send(name, job, queue=queue))


def api_client() -> ApiClient:
    """The API client with the worker's credentials; raises ConfigurationError without them."""

    def build() -> ApiClient:
        s = settings()
        api_key, secret = s.require_credentials()
        return ApiClient(
            base_url=s.api_base,
            minter=TokenMinter(api_key=api_key, secret=secret),
            connect_timeout_s=s.connect_timeout_s,
            read_timeout_s=s.read_timeout_s,
            not_live_patterns=s.not_live_patterns,
        )

    return _once("api_client", build)


def runner(send: SendTask | None = None) -> Runner:
    """The worker's runner; raises ConfigurationError without an API key and secret.

    ``send`` sends jobs' notifications (Celery's ``worker.publish.send_notification``).
    """

    def build() -> Runner:
        s = settings()
        client = api_client()
        return Runner(
            store=store(),
            client=client,
            limiter=limiter(),
            minter=client.minter,
            max_attempts=s.max_attempts,
            max_lost_deliveries=s.max_lost_deliveries,
            backoff_max_s=s.backoff_max_s,
            inline_wait_max_s=s.inline_wait_max_s,
            lease_s=s.lease_s,
            reconcile_after_s=s.reconcile_after_s,
            notify=notifier(send),
            webhook_url=s.webhook_url,
        )

    return _once("runner", build)


def reconciler(send: SendTask | None = None) -> Reconciler:
    """A worker's reconciler (not yet started); raises ConfigurationError without credentials."""
    return Reconciler(store=store(), client=api_client(), limiter=limiter(), notify=notifier(send))


def webhook_receiver(send: SendTask | None = None) -> WebhookReceiver:
    """The webhook receiver: the pinned key, else the one the API serves (fetched, cached)."""

    def build() -> WebhookReceiver:
        s = settings()
        keys = PublicKeys(pinned_pem=s.webhook_public_key, api_base=s.api_base)
        return WebhookReceiver(store=store(), keys=keys, notify=notifier(send))

    return _once("webhook_receiver", build)


def measured_api_latency_s() -> float | None:
    """The API's p90 latency measured by every worker so far, seconds; None when too few calls
    were measured (under :data:`LATENCY_SAMPLE_MIN`) or Redis does not answer."""
    s = settings()
    try:
        latency = metrics.snapshot(redis_conn(), s.key_prefix)["api_latency_ms"]
    except (redis.RedisError, OSError):
        return None
    if latency["count"] < LATENCY_SAMPLE_MIN or latency["p90"] is None:
        return None
    return float(latency["p90"]) / 1000


def new_dispatcher(
    publish: Publish, queue_depth: QueueDepth | None = None, open_batch: OpenBatch | None = None
) -> Dispatcher:
    """A due-job dispatcher and sweeper, as every worker and beat runs one (not yet started).

    ``publish``, ``queue_depth`` and ``open_batch`` are Celery's (``worker.publish``; workers'
    and beat's dispatchers publish a batch at a time, on one producer). A backlog of due jobs
    is published as the queue drains, :data:`tasks.delivery.dispatcher.QUEUE_AHEAD_S` of calls
    at the rate limit ahead (``queue_ahead``). Whatever the evidence, a queued job counts as
    stranded once kombu's visibility timeout (plus a margin) has passed with nobody working on
    it; sooner when its message is evidently gone (see the dispatcher).
    """
    return Dispatcher(
        store=store(),
        publish=publish,
        sweep_interval_s=settings().sweep_interval_s,
        queued_quiet_s=VISIBILITY_TIMEOUT_S + 60,
        queue_depth=queue_depth,
        queue_ahead=queue_ahead(settings().rate_per_s),
        open_batch=open_batch,
    )
