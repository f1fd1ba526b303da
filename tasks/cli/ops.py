"""The ``recorder`` subcommands for operators: ``stats``, ``limits`` and ``health``.

:func:`stats` and :func:`limits` return the data (read only: nothing is reserved or changed);
the probes :func:`workers`, :func:`oldest_wait` and :func:`auth_refusals` answer the questions
``health`` asks and the metrics (``tasks.cli.metrics``) export. Each ``configure_*`` function
adds a subcommand's arguments and sets ``run`` (a function of the parsed arguments returning the
exit status) for ``tasks.cli.commands`` to list. ``health`` answers
:class:`~tasks.cli.format.CommandFailed` (exit status 1, one line saying why) when Redis or a
worker does not answer, no worker consumes the queue, a job has waited in the queue longer than
a consuming worker would leave it, or the API has refused every recent call as unauthorized.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from tasks import runtime
from tasks.cli import format as fmt
from tasks.cli.format import CommandFailed, seconds
from tasks.job import Status
from tasks.store import metrics
from worker.app import app
from worker.publish import queue_depth

#: how long ``health`` (and a scrape) waits for workers to answer.
HEALTH_PING_TIMEOUT_S = 1.0
#: a job waiting in the queue longer than this means nobody consumes it: a consuming worker
#: takes a message within one delivery (at most an inline wait plus one call, about 35 s).
MAX_QUEUE_WAIT_S = 45.0
#: the window in which ``health`` looks at the API's answers, and how many refusals (401, 403)
#: with no other answer turn it red.
AUTH_WINDOW_S = 60.0
AUTH_REFUSALS_MIN = 2
AUTH_STATUSES = ("401", "403")


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
    finished = jobs["succeeded"] + jobs["failed"] + jobs["expired"]  # an expired job: a missed one
    return {
        "jobs": jobs,
        "success_rate": round(jobs["succeeded"] / finished, 4) if finished else None,
        "due": store.due_count(),
        "queue_depth": queue_depth(),
        "rate_limit": limits(),
        "api": metrics.snapshot(runtime.redis_conn(), runtime.config().key_prefix),
    }


# -- probes --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workers:
    """Who answered the remote control, and which of them consume our queue."""

    replied: tuple[str, ...]
    consuming: tuple[str, ...]


def workers(*, host: str | None = None, timeout_s: float = HEALTH_PING_TIMEOUT_S) -> Workers:
    """Ask every worker which queues it consumes (one broadcast); ``host``: only workers named
    ``<anything>@host`` count (``celery@host``, ``worker2@host``).

    A worker whose consumer was cancelled (``celery control cancel_consumer``) still answers,
    with no queue: it replies but does not consume.
    """
    queue = runtime.config().queue
    with app.connection_for_write() as connection:
        inspect = app.control.inspect(timeout=timeout_s, connection=connection)
        replies: dict[str, Any] = inspect.active_queues() or {}
    if host is not None:
        replies = {name: q for name, q in replies.items() if name.rpartition("@")[2] == host}
    consuming = [
        name for name, queues in replies.items() if any(q.get("name") == queue for q in queues)
    ]
    return Workers(replied=tuple(sorted(replies)), consuming=tuple(sorted(consuming)))


@dataclass(frozen=True, slots=True)
class Waiting:
    """The oldest message of the queue: its job and how long that job has waited for it."""

    job_id: str
    wait_s: float


def oldest_wait(*, now_s: float | None = None) -> Waiting | None:
    """How long the job of the queue's oldest message has been waiting to be taken; None when
    the queue is empty or its oldest message is not a job that is waiting (one already finished,
    or its record is gone: a harmless duplicate).

    kombu's Redis transport pushes on the left and consumers pop on the right, so the oldest
    message is the list's last element. The job has waited since it was last put on the queue:
    its last change, its due time (``run_at``) or its next attempt, whichever is latest.
    """
    queue = runtime.config().queue
    raw = runtime.redis_conn().lindex(queue, -1)
    if raw is None:
        return None
    try:
        job_id = str(json.loads(raw)["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None
    job = runtime.store().get(job_id)
    if job is None or job.status not in (Status.QUEUED, Status.RETRYING):
        return None
    since = max(
        datetime.fromisoformat(value).timestamp()
        for value in (job.updated_at, job.run_at, job.next_attempt_at)
        if value
    )
    now_s = time.time() if now_s is None else now_s
    return Waiting(job_id=job_id, wait_s=max(0.0, now_s - since))


def auth_refusals(*, window_s: float = AUTH_WINDOW_S) -> tuple[int, dict[str, int]]:
    """(refusals, answers by status) of the API calls every worker made in the last
    ``window_s``: refusals are 401 (bad key or secret) and 403 (a token without the role)."""
    prefix = runtime.config().key_prefix
    calls = metrics.recent_calls(runtime.redis_conn(), prefix, window_s=window_s)
    answers = {status: n for status, n in calls.items() if status.isdigit()}
    return sum(answers.get(s, 0) for s in AUTH_STATUSES), answers


# -- stats, limits -------------------------------------------------------------------------------


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


# -- health --------------------------------------------------------------------------------------


def configure_health(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--this-host",
        action="store_true",
        help="only workers named <name>@<this hostname> count (a container's own check)",
    )
    p.add_argument(
        "--max-queue-wait",
        type=seconds,
        default=MAX_QUEUE_WAIT_S,
        metavar="S",
        help="a job waiting in the queue longer than S seconds means no worker consumes it "
        f"(default {MAX_QUEUE_WAIT_S:g})",
    )
    p.set_defaults(run=_health)


def _health(args: argparse.Namespace) -> int:
    url = fmt.redact(runtime.config().redis_url)
    try:
        runtime.redis_conn().ping()
    except redis.RedisError as exc:
        raise CommandFailed(f"redis does not answer at {url}: {exc}") from None
    host = socket.gethostname() if args.this_host else None
    found = workers(host=host)
    queue = runtime.config().queue
    if not found.replied:
        who = f"worker celery@{host} (or <name>@{host})" if host else "worker"
        raise CommandFailed(
            f"redis answers, but no {who} replied within {HEALTH_PING_TIMEOUT_S:g}s"
        )
    if not found.consuming:
        raise CommandFailed(
            f"{len(found.replied)} worker(s) replied, but none consumes queue {queue!r}: "
            "restart them (or `celery -A worker control add_consumer` it)"
        )
    waiting = oldest_wait()
    if waiting is not None and waiting.wait_s > args.max_queue_wait:
        raise CommandFailed(
            f"job {waiting.job_id} has waited {waiting.wait_s:.0f}s in queue {queue!r} and no "
            f"worker took it: the workers are not consuming; restart them"
        )
    refusals, answers = auth_refusals()
    if refusals >= AUTH_REFUSALS_MIN and refusals == sum(answers.values()):
        shown = ", ".join(f"{n} x {s}" for s, n in answers.items())
        raise CommandFailed(
            f"the API refused every call of the last {AUTH_WINDOW_S:g}s as unauthorized "
            f"({shown}): check VIDEOSDK_API_KEY and VIDEOSDK_SECRET"
        )
    print(f"ok: redis answers, {len(found.replied)} worker(s) replied")
    return 0
