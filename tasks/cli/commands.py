"""The ``recorder`` command: enqueue, look up, cancel and replay jobs; stats, health, sandbox, demo.

Each subcommand is a ``configure`` function that adds its arguments and sets ``run`` (a function
of the parsed arguments returning the exit status), listed once in :data:`COMMANDS`. A group such
as ``schedule add|list|remove`` is one configure function adding its own sub-parsers, and
:func:`add_recording_options` / :func:`recording_options` give it the options ``enqueue`` takes.
``sandbox`` and ``demo`` hand the rest of the command line to their own ``main``.

Exit status: 0 done; 1 not found, not cancellable, the job failed (``--wait``), or Redis, a
setting or a worker is missing; 2 bad input. Every failure is one line on stderr, never a
traceback, and never shows a secret (URLs are redacted).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from tasks import runtime, sandbox
from tasks.api import cancel_job, enqueue_recording, get_job, list_jobs, retry_job
from tasks.cli import format as fmt
from tasks.cli import schedule
from tasks.cli.demo import run as demo
from tasks.cli.format import (
    BadUsage,
    Parser,
    add_recording_options,
    parse_time,
    recording_options,
    seconds,
)
from tasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    JobNotFound,
    ValidationError,
)
from tasks.job import CANCELLABLE, Job, Status
from tasks.store import metrics
from worker.app import app
from worker.publish import BROKER_ERRORS, queue_depth

PROG = "recorder"
#: how often ``enqueue --wait`` looks at the job.
WAIT_POLL_S = 0.2
WAIT_TIMEOUT_S = 120.0
#: how long ``health`` waits for workers to answer a ping.
HEALTH_PING_TIMEOUT_S = 1.0
#: ``retry --failed`` replays at most this many jobs (the producer's list limit).
RETRY_BATCH_MAX = 1000
#: kombu's Redis transport keeps a queue's messages in one list per priority step.


class CommandFailed(Exception):
    """Raised when the command ran but the answer is no: not cancellable, job failed (exit 1)."""


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: ``configure`` adds its arguments and ``set_defaults(run=...)``."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]


def _print_job(job: Job, as_json: bool) -> None:
    print(fmt.to_json(job.to_dict()) if as_json else fmt.job_view(job))


def _job_or_raise(job_id: str) -> Job:
    job = get_job(job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


# -- enqueue, status, jobs -----------------------------------------------------------------------


def _configure_enqueue(p: argparse.ArgumentParser) -> None:
    p.add_argument("room_id", metavar="ROOM_ID")
    add_recording_options(p)
    p.add_argument("--idempotency-key", metavar="K")
    p.add_argument("--at", metavar="ISO8601", help="hold the job as scheduled until then")
    p.add_argument("--wait", action="store_true", help="wait until the job is finished")
    p.add_argument(
        "--timeout",
        type=seconds,
        default=WAIT_TIMEOUT_S,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {WAIT_TIMEOUT_S:g})",
    )
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(run=_enqueue)


def _enqueue(args: argparse.Namespace) -> int:
    run_at = parse_time(args.at, "--at") if args.at is not None else None
    job = enqueue_recording(
        args.room_id,
        **recording_options(args),
        idempotency_key=args.idempotency_key,
        run_at=run_at,
    )
    if not args.wait:
        print(fmt.to_json(job.to_dict()) if args.json else job.id)
        return 0
    job, finished = wait_for(job, timeout_s=args.timeout)
    _print_job(job, args.json)
    if not finished:
        raise CommandFailed(
            f"job {job.id} not finished after {args.timeout:g}s (still {job.status.value})"
        )
    if job.status is not Status.SUCCEEDED:
        reason = f": {fmt.error_type(job)}" if job.error else ""
        raise CommandFailed(f"job {job.id} {job.status.value}{reason}")
    return 0


def wait_for(job: Job, *, timeout_s: float, poll_s: float = WAIT_POLL_S) -> tuple[Job, bool]:
    """Poll until ``job`` is finished or ``timeout_s`` passes: (latest record, finished).

    Writes one progress line to stderr whenever the status or the attempt count changes.
    """
    deadline = time.monotonic() + timeout_s
    shown: tuple[Status, int] | None = None
    while True:
        if (job.status, job.attempts) != shown:
            shown = (job.status, job.attempts)
            print(f"{job.id[:12]}  {fmt.progress_line(job)}", file=sys.stderr, flush=True)
        if job.finished or time.monotonic() >= deadline:
            return job, job.finished
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        latest = get_job(job.id)
        if latest is None:
            raise CommandFailed(f"job {job.id} vanished while waiting (expired or deleted)")
        job = latest


def _configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    _print_job(_job_or_raise(args.job_id), args.json)
    return 0


def _configure_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--room", metavar="ROOM_ID")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="print a JSON array of jobs")
    p.set_defaults(run=_jobs)


def _jobs(args: argparse.Namespace) -> int:
    jobs = list_jobs(room_id=args.room, status=args.status, limit=args.limit)
    if args.json:
        print(fmt.to_json([job.to_dict() for job in jobs]))
    else:
        print(fmt.jobs_table(jobs) if jobs else "no jobs")
    return 0


# -- cancel, retry -------------------------------------------------------------------------------


def _configure_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(run=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    before = _job_or_raise(args.job_id)
    job = cancel_job(args.job_id) if before.status in CANCELLABLE else before
    print(job.status.value)
    if before.status not in CANCELLABLE or job.status is not Status.CANCELLED:
        raise CommandFailed(
            f"job {job.id} is {job.status.value}: only a scheduled or queued job can be cancelled"
        )
    return 0


def _configure_retry(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID", nargs="?")
    p.add_argument("--failed", action="store_true", help="replay every failed job")
    p.add_argument("--room", metavar="ROOM_ID", help="with --failed: only this room's jobs")
    p.add_argument("--since", metavar="ISO8601", help="with --failed: only jobs created since")
    p.set_defaults(run=_retry)


def _retry(args: argparse.Namespace) -> int:
    if (args.job_id is None) == (not args.failed):
        raise BadUsage("give either a JOB_ID or --failed")
    if args.job_id is not None:
        if args.room is not None or args.since is not None:
            raise BadUsage("--room and --since go with --failed, not with a JOB_ID")
        before = _job_or_raise(args.job_id)
        job = retry_job(args.job_id) if before.status is Status.FAILED else before
        if before.status is not Status.FAILED or job.status is not Status.QUEUED:
            raise CommandFailed(f"job {job.id} is {job.status.value}, not failed: not requeued")
        print("requeued 1 job(s)")
        return 0
    since = parse_time(args.since, "--since") if args.since is not None else None
    requeued = 0
    for job in list_jobs(status=Status.FAILED, room_id=args.room, limit=RETRY_BATCH_MAX):
        if since is not None and datetime.fromisoformat(job.created_at) < since:
            continue
        if retry_job(job.id).status is Status.QUEUED:
            requeued += 1
    print(f"requeued {requeued} job(s)")
    return 0


# -- stats, limits, health -----------------------------------------------------------------------


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
    store = runtime.store()
    jobs = store.counts()
    finished = jobs["succeeded"] + jobs["failed"]
    return {
        "jobs": jobs,
        "success_rate": round(jobs["succeeded"] / finished, 4) if finished else None,
        "due": store.due_count(),
        "queue_depth": queue_depth(runtime.config().queue),
        "rate_limit": limits(),
        "api": metrics.snapshot(runtime.redis_conn(), runtime.config().key_prefix),
    }


def prometheus() -> str:
    """Prometheus text of what Flower cannot see (API calls, latency, waits, jobs, queue)."""
    store = runtime.store()
    return metrics.prometheus_text(
        metrics.snapshot(runtime.redis_conn(), runtime.config().key_prefix),
        jobs=store.counts(),
        queue_depth=queue_depth(runtime.config().queue),
        due=store.due_count(),
    )


def _configure_metrics(p: argparse.ArgumentParser) -> None:
    p.set_defaults(run=lambda a: _print(prometheus()))


def _print(text: str) -> int:
    sys.stdout.write(text)
    return 0


def _configure_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=lambda a: _show(stats(), fmt.stats_view, a.json))


def _configure_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=lambda a: _show(limits(), fmt.limits_view, a.json))


def _show(data: dict[str, Any], view: Callable[[dict[str, Any]], str], as_json: bool) -> int:
    print(fmt.to_json(data) if as_json else view(data))
    return 0


def _configure_health(p: argparse.ArgumentParser) -> None:
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


# -- delegated commands --------------------------------------------------------------------------


def _sandbox(argv: list[str]) -> int:
    return sandbox.main(argv)


def _demo(argv: list[str]) -> int:
    return demo.main(argv)


#: commands that parse their own arguments: everything after the name is theirs.
DELEGATED: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "sandbox": ("a local VideoSDK-compatible API (see `recorder sandbox --help`)", _sandbox),
    "demo": ("the whole pipeline on this machine (see `recorder demo --help`)", _demo),
}

COMMANDS: tuple[Command, ...] = (
    Command("enqueue", "enqueue a recording job; prints its id", _configure_enqueue),
    Command("status", "show one job", _configure_status),
    Command("jobs", "list jobs, newest first", _configure_jobs),
    Command("cancel", "cancel a job that has not started", _configure_cancel),
    Command("retry", "requeue a failed job, or every failed job", _configure_retry),
    Command("stats", "jobs per status, due jobs, queue depth, rate limit", _configure_stats),
    Command("limits", "the shared rate limiter's state", _configure_limits),
    Command("health", "exit 0 when Redis answers and a worker replies", _configure_health),
    Command("schedule", schedule.HELP, schedule.configure),
    Command("metrics", "Prometheus text: API calls, latency, waits, jobs", _configure_metrics),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Start VideoSDK cloud recordings reliably.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.configure(sub.add_parser(command.name, help=command.help, description=command.help))
    for name, (help_, _) in DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``recorder`` command; returns the exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    try:
        if args_list and args_list[0] in DELEGATED:
            return DELEGATED[args_list[0]][1](args_list[1:])
        args = build_parser().parse_args(args_list)
        return int(args.run(args))
    except SystemExit as exc:  # --help, or a delegated command's own argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (BadUsage, ValidationError) as exc:
        return _fail(str(exc), 2)
    except (CommandFailed, JobNotFound, ConfigurationError, BrokerUnavailable) as exc:
        return _fail(str(exc), 1)
    except (*BROKER_ERRORS, ConnectionError, TimeoutError) as exc:
        return _fail(f"Redis is unreachable ({type(exc).__name__}): {exc}", 1)


def _fail(message: str, status: int) -> int:
    line = " ".join(fmt.redact(message).split())
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
