"""The ``recorder`` subcommands for operators: ``stats``, ``limits``, ``health`` and ``metrics``.

:func:`stats`, :func:`limits` and :func:`prometheus` return the data (read only: nothing is
reserved or changed); each ``configure_*`` function adds a subcommand's arguments and sets ``run``
(a function of the parsed arguments returning the exit status) for ``tasks.cli.commands`` to list.
``health`` answers :class:`~tasks.cli.format.CommandFailed` (exit status 1) when Redis or a worker
does not answer, with the Redis URL redacted.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from typing import Any

import redis

from tasks import runtime
from tasks.cli import format as fmt
from tasks.cli.format import CommandFailed
from tasks.store import metrics
from worker.app import app
from worker.publish import queue_depth

#: how long ``health`` waits for workers to answer a ping.
HEALTH_PING_TIMEOUT_S = 1.0


def limits() -> dict[str, Any]:
    """The shared rate limiter's state (read only: it reserves no slot)."""
    limiter = runtime.limiter()
    state = limiter.peek()
    return {
        "rate_limit": runtime.config().rate_limit,
        "rate_per_s": limiter.rate_per_s,
        "burst": limiter.burst,
        "factor": state.factor,
        "effective_rate_per_s": round(limiter.rate_per_s * state.factor, 6),
        "cooldown_s": state.wait_s if state.cooldown else 0.0,
        "backlog_s": state.backlog_s,
    }


def stats() -> dict[str, Any]:
    """Jobs per status, the success rate, due jobs, queue depth, the limiter and API figures."""
    store = runtime.store()
    jobs = store.counts()
    finished = jobs["succeeded"] + jobs["failed"]
    return {
        "jobs": jobs,
        "success_rate": round(jobs["succeeded"] / finished, 4) if finished else None,
        "due": store.due_count(),
        "queue_depth": queue_depth(),
        "rate_limit": limits(),
        "api": metrics.snapshot(runtime.redis_conn(), runtime.config().key_prefix),
    }


def prometheus() -> str:
    """Prometheus text of what Flower cannot see (API calls, latency, waits, jobs, queue)."""
    store = runtime.store()
    return metrics.prometheus_text(
        metrics.snapshot(runtime.redis_conn(), runtime.config().key_prefix),
        jobs=store.counts(),
        queue_depth=queue_depth(),
        due=store.due_count(),
    )


# -- stats, limits, metrics ----------------------------------------------------------------------


def configure_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_stats)


def _stats(args: argparse.Namespace) -> int:
    return _show(stats(), fmt.stats_view, args.json)


def configure_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_limits)


def _limits(args: argparse.Namespace) -> int:
    return _show(limits(), fmt.limits_view, args.json)


def _show(data: dict[str, Any], view: Callable[[dict[str, Any]], str], as_json: bool) -> int:
    print(fmt.to_json(data) if as_json else view(data))
    return 0


def configure_metrics(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=_metrics)


def _metrics(args: argparse.Namespace) -> int:
    sys.stdout.write(prometheus())
    return 0


# -- health --------------------------------------------------------------------------------------


def configure_health(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--this-host",
        action="store_true",
        help="only a worker named celery@<this hostname> counts (a container's own check)",
    )
    p.set_defaults(run=_health)


def _health(args: argparse.Namespace) -> int:
    url = fmt.redact(runtime.config().redis_url)
    try:
        runtime.redis_conn().ping()
    except redis.RedisError as exc:
        raise CommandFailed(f"redis does not answer at {url}: {exc}") from None
    destination = [f"celery@{socket.gethostname()}"] if args.this_host else None
    with app.connection_for_write() as connection:
        replies = (
            app.control.ping(
                destination=destination, timeout=HEALTH_PING_TIMEOUT_S, connection=connection
            )
            or []
        )
    if not replies:
        who = f"worker {destination[0]}" if destination else "worker"
        raise CommandFailed(
            f"redis answers, but no {who} replied within {HEALTH_PING_TIMEOUT_S:g}s"
        )
    print(f"ok: redis answers, {len(replies)} worker(s) replied")
    return 0
