"""The ``recorder`` command: its table of subcommands, its parser and ``main``.

Each subcommand is a ``configure`` function that adds its arguments and sets ``run`` (a function
of the parsed arguments returning the exit status), listed once in :data:`COMMANDS`: the job
commands live in ``tasks.cli.jobs``, the operators' ones in ``tasks.cli.ops``, the ``schedule``
group in ``tasks.cli.schedule``. ``sandbox`` and ``demo`` hand the rest of the command line to
their own ``main`` (:data:`DELEGATED`).

Exit status: 0 done (also when the reader of stdout went away: ``recorder jobs | head -1``); 1
not found, not cancellable, the job failed (``--wait``), or Redis or a worker is missing; 2 bad
input or a bad setting (``RECORDER_RATE_LIMIT=10/sec``). Every failure is one line on stderr,
never a traceback, and never shows a secret (URLs are redacted).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import select
import sys
from collections.abc import Callable
from dataclasses import dataclass

from tasks import sandbox
from tasks.cli import format as fmt
from tasks.cli import jobs, metrics, ops, schedule, serve
from tasks.cli.demo import run as demo
from tasks.cli.format import BadUsage, CommandFailed, Parser
from tasks.cli.webhooks import configure as configure_webhooks
from tasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    JobNotFound,
    ValidationError,
)
from worker.publish import BROKER_ERRORS

PROG = "recorder"


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: ``configure`` adds its arguments and ``set_defaults(run=...)``."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]


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
    Command("enqueue", "enqueue a recording job; prints its id", jobs.configure_enqueue),
    Command("stop", "enqueue a stop of a room's recording; prints its id", jobs.configure_stop),
    Command("status", "show one job", jobs.configure_status),
    Command("jobs", "list jobs, newest first", jobs.configure_jobs),
    Command("cancel", "cancel a job that has not started", jobs.configure_cancel),
    Command("retry", "requeue a failed job, or every failed job", jobs.configure_retry),
    Command("stats", "jobs per status, due jobs, queue depth, rate limit", ops.configure_stats),
    Command("limits", "the shared rate limiter's state", ops.configure_limits),
    Command(
        "health",
        "exit 0 when Redis answers and workers consume the queue, the API takes our key",
        ops.configure_health,
    ),
    Command("schedule", schedule.HELP, schedule.configure),
    Command("serve", "the HTTP API for applications in any language", serve.configure),
    Command(
        "metrics",
        "Prometheus metrics: API calls, latency, waits, jobs (--serve: an HTTP exporter)",
        metrics.configure,
    ),
    Command("webhooks", "serve the VideoSDK webhook receiver", configure_webhooks),
)


# -- parsing and running -------------------------------------------------------------------------


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
    args_list = [_as_utf8(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    _replace_what_cannot_be_printed()
    try:
        if args_list and args_list[0] in DELEGATED:
            return DELEGATED[args_list[0]][1](args_list[1:])
        _forget_the_workers_secret()
        args = build_parser().parse_args(args_list)
        status = int(args.run(args))
        sys.stdout.flush()  # here, so a reader that went away is seen below, not at exit
        return status
    except SystemExit as exc:  # --help, or a delegated command's own argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (BadUsage, ValidationError, ConfigurationError) as exc:
        return _fail(str(exc), 2)
    except (CommandFailed, JobNotFound, BrokerUnavailable) as exc:
        return _fail(str(exc), 1)
    except (*BROKER_ERRORS, ConnectionError, TimeoutError) as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return 0  # `recorder jobs | head -1`: the reader had enough; not an outage
        return _fail(f"Redis is unreachable ({type(exc).__name__}): {exc}", 1)


#: variables only workers need: the VideoSDK secret. No subcommand of ``recorder`` calls the
#: API, so none reads it: an unreadable ``VIDEOSDK_SECRET_FILE`` cannot fail ``recorder jobs``,
#: and the secret never enters the memory of an operator's command.
WORKER_SECRETS = ("VIDEOSDK_SECRET", "VIDEOSDK_SECRET_FILE")


def _forget_the_workers_secret() -> None:
    for name in WORKER_SECRETS:
        os.environ.pop(name, None)


def _stdout_closed() -> bool:
    """Whether stdout's reader went away (a pipe whose read end is closed polls as an error);
    if so, stdout is pointed at /dev/null so Python's own flush at exit finds nothing to say."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False
    if closed:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return closed


def _as_utf8(arg: str) -> str:
    """An argument as the UTF-8 text the shell passed, whatever the locale decoded it as (under
    ``LC_ALL=C`` Python keeps undecodable bytes as lone surrogates); bytes that are not UTF-8
    stay surrogates, which validation then refuses naming the field."""
    try:
        return os.fsencode(arg).decode("utf-8")
    except UnicodeDecodeError:
        return arg


def _replace_what_cannot_be_printed() -> None:
    """Under a locale that cannot encode a room's name (``LC_ALL=C``), print ``?`` for what it
    cannot show rather than end in a traceback."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")


def _fail(message: str, status: int) -> int:
    line = " ".join(fmt.redact(message).split())
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
