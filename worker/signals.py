"""Signal handlers of worker and beat processes: log format, start-up checks, the workaround.

Imported by Celery's loader in worker and beat processes only (the ``imports`` setting), never
by producers, so importing ``tasks`` runs none of it.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from typing import Any

import redis
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_init,
    worker_ready,
    worker_shutting_down,
)
from celery.utils.sysinfo import is_auto_concurrency

from tasks import logs, runtime
from tasks.errors import ConfigurationError
from tasks.settings import sized_concurrency
from tasks.store import metrics

#: Celery's own per-task lines ("Task ... received", "Task ... succeeded in ...") say less than
#: the runner's state lines (job, room, status, attempt, HTTP status, latency) and cost a formatted
#: line each per job: below debug level the worker leaves them out (warnings and errors stay).
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")
#: how often a worker deletes the metrics hash's stale ``recent:`` fields (tasks.store.metrics)
METRICS_PRUNE_INTERVAL_S = 60.0
#: a thread-pool worker's GIL switch interval (``sys.setswitchinterval``), seconds; Python's is
#: 5 ms. The consumer thread makes blocking Redis round trips for each message (the next
#: ``BRPOP``, kombu's unacked bookkeeping) and after each one waits for the GIL: up to the
#: switch interval while the pool's threads and the dispatcher run Python.
SWITCH_INTERVAL_S = 0.0005
#: a thread-pool worker's first garbage-collector threshold (``gc.set_threshold``); Python's is
#: 700. Each job's objects live for its rate-limit wait and its call (a few hundred ms): with
#: 700 they outlive the young generations and pile up in the oldest, whose collection then
#: stopped the worker for 100-145 ms every 10 s (a dip of 20-40 calls at 200/s). At 50,000
#: the young collections are rarer and most of those objects are gone before one.
GC_THRESHOLD_0 = 50_000
logger = logging.getLogger(__name__)


@after_setup_logger.connect
@after_setup_task_logger.connect
def install_log_format(logger: logging.Logger, **_: Any) -> None:
    """Give the worker's and beat's log handlers our formatter: JSON or text, always redacted.

    ``RECORDER_LOG_FORMAT=json`` gives one JSON object per line. Bad settings are reported by
    the credential check (worker) or at start-up (beat); logging falls back to text meanwhile.
    """
    try:
        s = runtime.config()
    except ConfigurationError:
        logs.install(logger, json_lines=False)
        return
    logs.install(logger, json_lines=s.log_format == "json", secrets=[s.secret])


@celeryd_init.connect
def json_stdio(**_: Any) -> None:
    """``RECORDER_LOG_FORMAT=json``: Celery's banner, its shutdown lines and any warning printed
    before logging is set up become JSON lines (``tasks.logs.json_stdio``). Sent before the
    worker checks its privileges or prints anything; ``worker.config`` may have done it already.
    """
    try:
        s = runtime.config()
    except ConfigurationError:
        return
    if s.log_format == "json":
        logs.json_stdio(secrets=[s.secret])


@worker_shutting_down.connect
def say_shutdown_as_json(sig: str = "", how: str = "", **_: Any) -> None:
    """In JSON mode Celery's own "worker: Warm shutdown (MainProcess)" is not written (it writes
    to a file descriptor our stream does not have): the same words, as a JSON line."""
    if logs.json_stdio_active():
        print(f"worker: {how} shutdown (MainProcess, {sig})", file=sys.__stdout__, flush=True)


@worker_init.connect
def size_the_pool(sender: Any = None, **_: Any) -> None:
    """``RECORDER_CONCURRENCY=auto``: size a starting worker's pool to the rate limit and the
    API's measured latency (``tasks.settings.sized_concurrency``).

    The configuration says ``"auto"`` (``worker.config``); Celery sends ``worker_init`` before
    it resolves that into a CPU count and builds the pool, so the worker's ``concurrency`` set
    here is the pool's size. A ``--concurrency N`` on the command line is left alone, and so is
    a prefork pool (processes are sized to the CPUs, by Celery's own ``auto``).
    """
    s = runtime.config()
    auto = is_auto_concurrency(getattr(sender, "concurrency", None))
    if s.worker_concurrency is None and auto and s.worker_pool == "threads":
        sender.concurrency = sized_concurrency(s.rate_per_s, runtime.measured_api_latency_s())


@worker_init.connect
def tune_the_interpreter(**_: Any) -> None:
    """A thread-pool worker: :data:`SWITCH_INTERVAL_S` and :data:`GC_THRESHOLD_0`, measured in
    ``tests/benchmarks/herd.py`` (one worker, 200 calls/s). Both are process-wide interpreter
    settings with public APIs; a prefork pool's processes are left as Python sets them. The
    pool is the configured one (``RECORDER_POOL``, as for :func:`size_the_pool`): select
    prefork with the variable, not ``-P prefork`` (README, "Pool and concurrency")."""
    if runtime.config().worker_pool != "threads":
        return
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.set_threshold(GC_THRESHOLD_0, *gc.get_threshold()[1:])


@worker_init.connect
def quiet_celery_task_lines(sender: Any = None, **_: Any) -> None:
    """Runs before the worker builds its task strategies and tracers, which read the level once."""
    loglevel = getattr(sender, "loglevel", logging.INFO)
    if isinstance(loglevel, str):
        loglevel = logging.getLevelName(loglevel.upper())
    if loglevel > logging.DEBUG:
        for name in CELERY_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@worker_init.connect
def check_credentials(**_: Any) -> None:
    """Stop the worker at start-up, with one line, when the API key or secret is missing."""
    try:
        runtime.config().require_credentials()
    except ConfigurationError as exc:
        print(f"recorder worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


@worker_ready.connect
def prune_recent_metrics(**_: Any) -> None:
    """Keep the metrics hash bounded in a deployment nobody reads it in: every
    :data:`METRICS_PRUNE_INTERVAL_S`, delete its ``recent:`` fields past their window."""
    s = runtime.config()

    def loop() -> None:
        while not stop.wait(METRICS_PRUNE_INTERVAL_S):
            try:
                metrics.prune(runtime.redis_conn(), s.key_prefix)
            except (redis.RedisError, OSError) as exc:  # Redis down: the dispatcher says so
                logger.debug("metrics not pruned: %s: %s", type(exc).__name__, exc)

    stop = threading.Event()
    threading.Thread(target=loop, name="recorder-metrics-prune", daemon=True).start()
