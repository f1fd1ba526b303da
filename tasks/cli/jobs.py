"""The ``recorder`` subcommands about jobs: ``enqueue`` (and ``--wait``), ``stop``, ``status``,
``jobs``, ``cancel`` and ``retry``.

Each ``configure_*`` function adds a subcommand's arguments and sets ``run`` (a function of the
parsed arguments returning the exit status); ``tasks.cli.commands`` lists them. A "no" answer is
:class:`~tasks.cli.format.CommandFailed` (exit status 1), bad input
:class:`~tasks.cli.format.BadUsage` (exit status 2).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime

from tasks import runtime
from tasks.api import (
    cancel_job,
    enqueue_recording,
    get_job,
    list_jobs,
    retry_job,
    stop_recording,
)
from tasks.cli import format as fmt
from tasks.cli.format import (
    BadUsage,
    CommandFailed,
    add_recording_options,
    parse_time,
    recording_options,
    seconds,
)
from tasks.errors import JobNotFound
from tasks.job import CANCELLABLE, Job, Status

#: how often ``enqueue --wait`` looks at the job.
WAIT_POLL_S = 0.2
WAIT_TIMEOUT_S = 120.0
#: ``retry --failed`` replays at most this many jobs (the producer's list limit).
RETRY_BATCH_MAX = 1000
#: a job id is uuid4 hex; a JOB_ID argument that is part of one is looked up as a prefix
_HEX = re.compile(r"[0-9a-f]{1,31}")
PREFIX_SCAN_COUNT = 10_000
PREFIX_MATCHES_SHOWN = 5


def _print_job(job: Job, as_json: bool) -> None:
    print(fmt.to_json(job.to_dict()) if as_json else fmt.job_view(job))


def _job_or_raise(job_id: str) -> Job:
    """The job ``job_id`` names: its whole id, or any unique prefix of it (the 12 characters
    ``recorder jobs`` shows). An ambiguous prefix is BadUsage naming the matches."""
    job = get_job(job_id)
    if job is not None:
        return job
    matches = jobs_by_prefix(job_id) if _HEX.fullmatch(job_id) else []
    if not matches:
        raise JobNotFound(job_id)
    if len(matches) > 1:
        shown = ", ".join(j.id for j in matches[:PREFIX_MATCHES_SHOWN])
        more = len(matches) - PREFIX_MATCHES_SHOWN
        raise BadUsage(
            f"{len(matches)} jobs have ids starting with {job_id!r}: {shown}"
            f"{f' and {more} more' if more > 0 else ''}; give more of the id"
        )
    return matches[0]


def jobs_by_prefix(prefix: str) -> list[Job]:
    """Stored jobs whose id starts with ``prefix``, newest first.

    One ZSCAN of the index of every job id (``{p}:jobs``) with ``MATCH prefix*``, in pages of
    :data:`PREFIX_SCAN_COUNT`: Redis walks the whole index (30-50 ms per 100,000 jobs on a busy
    2-core machine, tests/test_cli.py bounds it) and returns only the matches, whose records are
    then read in one MGET. Ids whose record expired are left out.
    """
    store = runtime.store()
    found: dict[str, float] = {}
    for member, score in store.client.zscan_iter(
        store.key("jobs"), match=f"{prefix}*", count=PREFIX_SCAN_COUNT
    ):
        found[member.decode() if isinstance(member, bytes) else str(member)] = score
    ids = sorted(found, key=lambda i: found[i], reverse=True)
    records = store.client.mget([store.key("job", i) for i in ids]) if ids else []
    return [Job.from_record(raw) for raw in records if raw]


# -- enqueue, status, jobs -----------------------------------------------------------------------


def configure_enqueue(p: argparse.ArgumentParser) -> None:
    p.add_argument("room_id", metavar="ROOM_ID")
    add_recording_options(p)
    p.add_argument("--idempotency-key", metavar="K")
    p.add_argument("--at", metavar="ISO8601", help="hold the job as scheduled until then")
    fmt.add_job_options(p)
    _add_wait_options(p)
    p.set_defaults(run=_enqueue)


def _add_wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="wait until the job is finished")
    p.add_argument(
        "--timeout",
        type=seconds,
        default=WAIT_TIMEOUT_S,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {WAIT_TIMEOUT_S:g})",
    )
    p.add_argument("--json", action="store_true", help="print the job as JSON")


def _enqueue(args: argparse.Namespace) -> int:
    run_at = parse_time(args.at, "--at") if args.at is not None else None
    job = enqueue_recording(
        args.room_id,
        **recording_options(args),
        idempotency_key=args.idempotency_key,
        run_at=run_at,
        **fmt.job_options(args),
    )
    return _answer(job, args)


def configure_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("room_id", metavar="ROOM_ID")
    p.add_argument("--at", metavar="ISO8601", help="stop at this time, not now")
    p.add_argument("--idempotency-key", metavar="K")
    fmt.add_notify_option(p)
    _add_wait_options(p)
    p.set_defaults(run=_stop)


def _stop(args: argparse.Namespace) -> int:
    run_at = parse_time(args.at, "--at") if args.at is not None else None
    job = stop_recording(
        args.room_id,
        run_at=run_at,
        idempotency_key=args.idempotency_key,
        notify_task=args.notify_task,
    )
    return _answer(job, args)


def _answer(job: Job, args: argparse.Namespace) -> int:
    """Print a new job's id (or JSON), or with ``--wait`` its end; exit 1 if it did not succeed."""
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


def configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID", help="the id, or any unique prefix of it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    _print_job(_job_or_raise(args.job_id), args.json)
    return 0


def configure_jobs(p: argparse.ArgumentParser) -> None:
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


def configure_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(run=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    before = _job_or_raise(args.job_id)
    job = cancel_job(before.id) if before.status in CANCELLABLE else before
    print(job.status.value)
    if before.status not in CANCELLABLE or job.status is not Status.CANCELLED:
        raise CommandFailed(
            f"job {job.id} is {job.status.value}: only a scheduled or queued job can be cancelled"
        )
    return 0


def configure_retry(p: argparse.ArgumentParser) -> None:
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
        job = retry_job(before.id) if before.status is Status.FAILED else before
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
