"""Settings: one typed object, read from the environment once.

The Celery configuration derived from it is ``worker.config``.

Every variable is documented in the README and ``.env.example``. Nothing else in the project reads
``os.environ``; domain classes receive what they need from here as keyword arguments.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from tasks.errors import ConfigurationError, ValidationError
from tasks.job import DEFAULT_START_WINDOW_S
from tasks.logs import redact_url_credentials
from tasks.window import NOT_LIVE_PATTERNS, check_start_window

DEFAULT_API_BASE = "https://api.videosdk.live"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: kombu's Redis transport redelivers a message not acked within this long. It must exceed the
#: longest delivery: waits over ``inline_wait_max_s`` are handed back to the store's due set, so
#: a delivery is at most ``max_attempts`` x (connect + read timeout + inline wait), about 5 min
#: with the defaults. 15 min leaves room for that while bounding how long a message prefetched
#: by a worker killed with SIGKILL waits before it is redelivered.
VISIBILITY_TIMEOUT_S = 900
DEFAULT_QUEUE = "recorder"
#: ``RECORDER_CONCURRENCY=auto`` (the default) sizes a worker's pool in this range...
CONCURRENCY_MIN = 32
CONCURRENCY_MAX = 256
#: ...assuming this API latency, seconds, until calls have been measured (``sized_concurrency``)
ASSUMED_API_LATENCY_S = 0.5


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: ``RECORDER_LOG_FORMAT``: ``json`` is one JSON object per line (see ``tasks.logs``).
LOG_FORMATS = ("text", "json")


class Secret(str):
    """A string that never shows itself in ``repr`` (so not in tracebacks or settings dumps)."""

    def __repr__(self) -> str:
        return "Secret('********')"


def parse_rate(text: str) -> float:
    """``"10/s"``, ``"600/m"`` or ``"3600/h"`` as calls per second; raises ConfigurationError."""
    match = _RATE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"RECORDER_RATE_LIMIT must look like N/s, N/m or N/h with N > 0, got {text!r}"
        )
    return float(match.group(1)) / _PER[match.group(2)]


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of videosdk-recorder, with units in the names."""

    redis_url: str = DEFAULT_REDIS_URL
    api_base: str = DEFAULT_API_BASE
    api_key: str | None = None
    secret: Secret | None = field(default=None, repr=False)
    rate_limit: str = "10/s"
    rate_per_s: float = 10.0
    rate_burst: int = 1
    max_attempts: int = 8
    max_lost_deliveries: int = 3
    sweep_interval_s: float = 10.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 3600.0
    job_ttl_s: int = 30 * 24 * 3600
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    inline_wait_max_s: float = 3.0
    worker_pool: str = "threads"
    #: None ("auto"): sized at worker start by :func:`sized_concurrency`
    worker_concurrency: int | None = None
    sentinel_master: str | None = None
    log_format: str = "text"
    key_prefix: str = "recorder"
    queue: str = "recorder"
    task_events: bool = True
    beat_max_interval_s: float = 5.0
    beat_lock_timeout_s: int = 25
    start_window_s: float = 600.0
    not_live_patterns: tuple[str, ...] = NOT_LIVE_PATTERNS
    webhook_url: str | None = None
    webhook_public_key: str | None = None
    reconcile_after_s: float = 120.0
    notify_queue: str = "celery"
    api_tokens: tuple[str, ...] = field(default=(), repr=False)

    @property
    def lease_s(self) -> float:
        """How long one delivery may hold a job before another may take it over.

        Longer than the longest single step a worker takes while holding it: an inline wait plus
        one HTTP call with both timeouts, plus a margin. The lease is renewed at every attempt.
        """
        return self.inline_wait_max_s + self.connect_timeout_s + self.read_timeout_s + 5.0

    @property
    def redbeat_key_prefix(self) -> str:
        """Where celery-redbeat keeps beat's lock (its ``redbeat_key_prefix`` setting); our
        schedules live in our own keys (``tasks.schedules.store``)."""
        return f"{self.key_prefix}:redbeat:"

    def require_credentials(self) -> tuple[str, Secret]:
        """The API key and secret, or ConfigurationError with a one-line reason."""
        if not self.api_key:
            raise ConfigurationError("VIDEOSDK_API_KEY is not set: the worker needs it")
        if not self.secret:
            raise ConfigurationError(
                "VIDEOSDK_SECRET (or VIDEOSDK_SECRET_FILE) is not set: the worker needs it"
            )
        return self.api_key, self.secret

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; raises ConfigurationError naming the bad one."""
        env = os.environ if env is None else env
        rate_limit = env.get("RECORDER_RATE_LIMIT", "10/s")
        beat_max_interval_s = _number(env, "RECORDER_BEAT_MAX_INTERVAL", 5.0, float, minimum=0.1)
        beat_lock_timeout_s = _number(env, "RECORDER_BEAT_LOCK_TIMEOUT", 25, int, minimum=1)
        if beat_lock_timeout_s < 2 * beat_max_interval_s:
            # the active beat extends its lock once a tick: a lock that can expire between two
            # ticks lets a standby fire beside it (redbeat#129)
            raise ConfigurationError(
                "RECORDER_BEAT_LOCK_TIMEOUT must be at least twice RECORDER_BEAT_MAX_INTERVAL, "
                f"got {beat_lock_timeout_s} and {beat_max_interval_s:g}"
            )
        return cls(
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            api_base=_api_base(env.get("VIDEOSDK_API_BASE") or DEFAULT_API_BASE),
            api_key=env.get("VIDEOSDK_API_KEY") or None,
            secret=_read_secret(env),
            rate_limit=rate_limit,
            rate_per_s=parse_rate(rate_limit),
            rate_burst=_number(env, "RECORDER_RATE_BURST", 1, int, minimum=1),
            max_attempts=_number(env, "RECORDER_MAX_ATTEMPTS", 8, int, minimum=1),
            max_lost_deliveries=_number(env, "RECORDER_MAX_LOST_DELIVERIES", 3, int, minimum=1),
            sweep_interval_s=_number(env, "RECORDER_SWEEP_INTERVAL", 10.0, float, minimum=0.2),
            backoff_max_s=_number(env, "RECORDER_BACKOFF_MAX", 60.0, float, minimum=0.0),
            job_ttl_s=_number(env, "RECORDER_JOB_TTL", 30 * 24 * 3600, int, minimum=60),
            connect_timeout_s=_number(env, "RECORDER_CONNECT_TIMEOUT", 5.0, float, minimum=0.1),
            read_timeout_s=_number(env, "RECORDER_READ_TIMEOUT", 30.0, float, minimum=0.1),
            inline_wait_max_s=_number(env, "RECORDER_INLINE_WAIT_MAX", 3.0, float, minimum=0.0),
            worker_pool=env.get("RECORDER_POOL", "threads"),
            worker_concurrency=_concurrency(env),
            sentinel_master=env.get("REDIS_SENTINEL_MASTER") or None,
            log_format=_choice(env, "RECORDER_LOG_FORMAT", "text", LOG_FORMATS),
            key_prefix=env.get("RECORDER_KEY_PREFIX", "recorder"),
            queue=env.get("RECORDER_QUEUE", DEFAULT_QUEUE),
            task_events=_flag(env, "RECORDER_TASK_EVENTS", True),
            beat_max_interval_s=beat_max_interval_s,
            beat_lock_timeout_s=beat_lock_timeout_s,
            start_window_s=_start_window(env),
            not_live_patterns=NOT_LIVE_PATTERNS + _phrases(env, "RECORDER_NOT_LIVE_PATTERNS"),
            webhook_url=env.get("RECORDER_WEBHOOK_URL") or None,
            webhook_public_key=_read_text(
                env, "VIDEOSDK_WEBHOOK_PUBLIC_KEY", "VIDEOSDK_WEBHOOK_PUBLIC_KEY_FILE"
            ),
            reconcile_after_s=_number(env, "RECORDER_RECONCILE_AFTER", 120.0, float, minimum=1.0),
            notify_queue=env.get("RECORDER_NOTIFY_QUEUE") or "celery",
            api_tokens=_tokens(env),
        )


def sized_concurrency(rate_per_s: float, latency_s: float | None) -> int:
    """Worker slots that sustain ``rate_per_s`` against an API answering in ``latency_s``.

    Little's law: calls in flight = rate x latency; half as much again covers the latency's tail
    and each job's own time in the worker. ``latency_s`` None (nothing measured yet) assumes
    :data:`ASSUMED_API_LATENCY_S`. Within [:data:`CONCURRENCY_MIN`, :data:`CONCURRENCY_MAX`].
    A thread pool of C slots against latency d is capped at C / d calls/s per worker, whatever
    the rate limit (32 threads at 250 ms = 128/s), hence sizing by both.
    """
    in_flight = rate_per_s * (ASSUMED_API_LATENCY_S if latency_s is None else latency_s)
    return max(CONCURRENCY_MIN, min(CONCURRENCY_MAX, math.ceil(in_flight * 1.5)))


def _concurrency(env: Mapping[str, str]) -> int | None:
    text = env.get("RECORDER_CONCURRENCY", "auto").strip().lower()
    if text in ("", "auto"):
        return None
    return _number(env, "RECORDER_CONCURRENCY", CONCURRENCY_MIN, int, minimum=1)


def _start_window(env: Mapping[str, str]) -> float:
    """``RECORDER_START_WINDOW``: seconds, or 90s / 15m / 2h."""
    text = env.get("RECORDER_START_WINDOW", "").strip()
    if not text:
        return DEFAULT_START_WINDOW_S
    try:
        window_s = check_start_window(parse_duration(text))
    except (ValueError, ValidationError):
        raise ConfigurationError(
            f"RECORDER_START_WINDOW must be a positive duration (600, 90s, 15m, 2h), got {text!r}"
        ) from None
    assert window_s is not None
    return window_s


def _tokens(env: Mapping[str, str]) -> tuple[str, ...]:
    """``RECORDER_API_TOKENS``: comma-separated bearer tokens, each 16 characters or more."""
    tokens = tuple(t.strip() for t in env.get("RECORDER_API_TOKENS", "").split(",") if t.strip())
    if any(len(t) < 16 for t in tokens):
        raise ConfigurationError("RECORDER_API_TOKENS: every token must be 16 characters or more")
    return tokens


def _phrases(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of phrases, lower-cased, empty items dropped."""
    return tuple(p.strip().lower() for p in env.get(name, "").split(",") if p.strip())


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` as seconds; raises ValueError."""
    text = text.strip().lower()
    scale = DURATION_UNITS.get(text[-1:])
    number = float(text[:-1] if scale else text)
    if not math.isfinite(number):
        raise ValueError(f"not a finite duration: {text!r}")
    return number * (scale or 1.0)


def _api_base(url: str) -> str:
    """``VIDEOSDK_API_BASE`` without its trailing slash; an http(s) URL with a host, or else
    ConfigurationError (a worker must not start to fail every job inside the task)."""
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact_url_credentials(url)
        raise ConfigurationError(
            f"VIDEOSDK_API_BASE must be an http:// or https:// URL with a host, got {shown!r}"
        )
    return url.strip().rstrip("/")


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _read_secret(env: Mapping[str, str]) -> Secret | None:
    text = _read_text(env, "VIDEOSDK_SECRET", "VIDEOSDK_SECRET_FILE")
    return None if text is None else Secret(text)


def _read_text(env: Mapping[str, str], name: str, file_name: str) -> str | None:
    """``name``'s value, else the text of the file ``file_name`` names, else None."""
    if env.get(name):
        return env[name]
    path = env.get(file_name)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"{file_name}={path} cannot be read: {exc.strerror}") from None
    if not text:
        raise ConfigurationError(f"{file_name}={path} is empty")
    return text


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N, kind: type[N], *, minimum: N) -> N:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read once on first use."""
    return Settings.from_env()
