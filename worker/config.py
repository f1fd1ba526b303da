"""The Celery configuration, derived from our settings (``tasks.settings``).

Celery reads ``CELERY_SETTINGS`` the first time it needs its configuration (``worker.app``
names it by path; it is built then, see :func:`__getattr__`); :func:`reconfigure` reads the
environment again, for tests and the demo, which change it within one process.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from tasks import logs
from tasks.errors import ConfigurationError
from tasks.settings import VISIBILITY_TIMEOUT_S, Settings, settings
from tasks.store.connections import parse_sentinel_url


def celery_config(s: Settings) -> dict[str, object]:
    """Celery settings (lowercase names) derived from our settings."""
    transport: dict[str, object] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # scan for abandoned messages every 10 s rather than kombu's default of every 100 s
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    }
    if s.sentinel_master:
        transport["master_name"] = s.sentinel_master
    return {
        "broker_url": s.redis_url,
        "broker_transport_options": transport,
        **_tls_config(s),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # a write Redis refuses for a while (OOM under noeviction, READONLY after a failover) is
        # a channel error to kombu: reconnect and retry, as for a lost connection, not exit
        "broker_channel_error_retry": True,
        "broker_heartbeat": 0,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # our job records answer "what happened"; Celery's result backend is not used
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": s.worker_pool,
        # RECORDER_CONCURRENCY=auto: sized when a worker starts (worker.signals.size_the_pool)
        "worker_concurrency": s.worker_concurrency or "auto",
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Flower sees a job from the moment it is enqueued (flower#459); each event is one more
        # publish per job, so deployments without Flower may turn them off
        "task_send_sent_event": s.task_events,
        "worker_send_task_events": s.task_events,
        "task_default_queue": s.queue,
        # a producer whose Redis is down gets an error within about 2 s, not a hang
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "broker_connection_timeout": 5,
        "timezone": "UTC",
        "enable_utc": True,
        "include": ["worker.task"],
        # signal handlers of worker and beat processes only (producers and Flower skip them)
        "imports": ["worker.signals"],
        **_credentials_out_of_url(_beat_config(s)),
    }


def _tls_config(s: Settings) -> dict[str, object]:
    """Verify the server's certificate on a ``rediss://`` URL unless the URL says otherwise.

    redis-py (our store, limiter and redbeat) requires a valid certificate by default, but kombu
    falls back to *no* verification when a rediss URL has no ``ssl_cert_reqs``; this makes the
    broker connection as strict as the others. ``ssl_*`` options in the URL replace these.
    """
    if not s.redis_url.startswith("rediss://"):
        return {}
    return {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def _credentials_out_of_url(beat: dict[str, object]) -> dict[str, object]:
    """Move the password of ``redbeat_redis_url`` into ``redbeat_redis_options``.

    A worker sends its configuration to whoever asks (``celery inspect conf``, Flower's
    /api/workers); Celery masks settings whose names say KEY or PASS and the broker URL, but
    not ``redbeat_redis_url``, so a password in it would be shown. redbeat passes its options
    to redis-py, which takes ``username``/``password`` as well from there.
    """
    url = str(beat["redbeat_redis_url"])
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return beat
    options = dict(beat["redbeat_redis_options"])  # type: ignore[call-overload]
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    netloc = parts.netloc.rpartition("@")[2]
    return {
        **beat,
        "redbeat_redis_url": url.replace(parts.netloc, netloc, 1),
        "redbeat_redis_options": options,
    }


def _beat_config(s: Settings) -> dict[str, object]:
    """Beat: redbeat in our Redis, under our prefix; see ``worker.schedule`` for the timings.

    The active beat extends its lock every tick (at most ``beat_max_interval_s`` apart) to
    ``beat_lock_timeout_s``; a standby takes over within the sum of the two after it dies.
    redbeat keeps no local file, so beat writes no ``celerybeat-schedule`` anywhere.
    """
    options: dict[str, object] = {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    }
    url = s.redis_url
    if s.sentinel_master:
        # redbeat spells Sentinel differently from kombu: a redis-sentinel:// URL plus options
        hosts, password, db = parse_sentinel_url(s.redis_url)
        url = "redis-sentinel://"
        options.update(sentinels=hosts, service_name=s.sentinel_master, db=db, password=password)
    return {
        "beat_scheduler": "worker.schedule:RecorderScheduler",
        "beat_max_loop_interval": s.beat_max_interval_s,
        "redbeat_redis_url": url,
        "redbeat_redis_options": options,
        "redbeat_key_prefix": f"{s.key_prefix}:redbeat:",
        "redbeat_lock_timeout": s.beat_lock_timeout_s,
    }


def reconfigure(app: Any) -> None:
    """Load the settings again into ``app``.

    Production processes read the environment once; the demo changes it within one process,
    before anything is published (Celery builds its producer pool on the first publish).
    """
    settings.cache_clear()
    app.conf.update(celery_config(settings()))


def json_stdio_in_worker_and_beat(s: Settings) -> None:
    """``RECORDER_LOG_FORMAT=json`` in ``celery worker`` and ``celery beat``: what Celery prints
    itself (its banner, beat's "is starting" line, the shutdown lines) becomes JSON lines too.

    Celery reads this module while the ``worker`` or ``beat`` command builds its process, before
    it prints anything: the earliest public moment. Other processes (producers, Flower, the
    ``recorder`` command) keep their streams; a worker also does this at ``celeryd_init``.
    """
    if s.log_format == "json" and _celery_command() in ("worker", "beat"):
        logs.json_stdio(secrets=[s.secret])


def _celery_command() -> str | None:
    """``worker``, ``beat``, ``flower``...: the ``celery`` subcommand this process runs, if any."""
    context = click.get_current_context(silent=True)
    return None if context is None else context.info_name


def __getattr__(name: str) -> object:
    """``CELERY_SETTINGS``, what Celery loads as its configuration
    (``app.config_from_object("worker.config:CELERY_SETTINGS")``), is built when Celery first
    reads it, not when this module is imported: a bad setting then surfaces where the process
    can report it in one line (the ``recorder`` command; ``celery worker``, ``beat`` and
    ``flower`` print it and exit 2), never as a traceback."""
    if name == "CELERY_SETTINGS":
        try:
            s = settings()
        except ConfigurationError as exc:
            command = _celery_command()
            if command is None:
                raise  # the `recorder` command or a producer: theirs to report
            print(f"celery {command}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        json_stdio_in_worker_and_beat(s)
        return celery_config(s)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
