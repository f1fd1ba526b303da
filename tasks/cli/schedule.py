"""``recorder schedule add|list|remove``: recurring schedules from the command line.

Wired into ``tasks.cli`` by :func:`add_parser` (or :func:`configure` for a parser made there).
Bad input raises ``BadUsage`` or ``ValidationError``, which ``recorder`` turns into exit status 2
with one line; an unknown name for ``remove`` is exit status 1, also with one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tasks.cli import format as fmt
from tasks.cli.format import BadUsage, add_recording_options, duration, recording_options
from tasks.schedules.api import add_schedule, list_schedules, remove_schedule
from tasks.schedules.store import Schedule

HELP = "recurring recordings: add, list or remove schedules (run by `celery -A worker beat`)"


def add_parser(subparsers: Any) -> None:
    """Add ``schedule`` to the ``recorder`` command's sub-parsers."""
    configure(subparsers.add_parser("schedule", help=HELP, description=HELP))


def configure(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``add``, ``list`` and ``remove`` actions."""
    actions = parser.add_subparsers(dest="schedule_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add or replace a schedule", description=_ADD_HELP)
    add.add_argument("name", metavar="NAME")
    add.add_argument("room_id", metavar="ROOM_ID")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help='five fields, e.g. "0 9 * * MON"')
    when.add_argument(
        "--every", type=duration, metavar="DURATION", help="e.g. 30s, 5m, 1h or plain seconds"
    )
    add.add_argument("--tz", metavar="TZ", help="with --cron: IANA time zone (default UTC)")
    add_recording_options(add)
    fmt.add_job_options(add)
    add.add_argument("--disabled", action="store_true", help="store it without firing it")
    add.add_argument("--json", action="store_true", help="print the schedule as JSON")
    add.set_defaults(run=run_add)

    show = actions.add_parser("list", help="list schedules with their next run")
    show.add_argument("--json", action="store_true", help="print a JSON array of schedules")
    show.set_defaults(run=run_list)

    remove = actions.add_parser("remove", help="remove a schedule (exit 1 if unknown)")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(run=run_remove)


_ADD_HELP = (
    "Add a schedule (a schedule of the same name is replaced). Each firing enqueues one job, "
    "deduplicated by its scheduled time."
)


def run_add(args: argparse.Namespace) -> int:
    if args.tz is not None and args.cron is None:
        raise BadUsage("--tz goes with --cron: an --every schedule has no time zone")
    schedule = add_schedule(
        args.name,
        args.room_id,
        cron=args.cron,
        every_s=args.every,
        timezone=args.tz or "UTC",
        enabled=not args.disabled,
        **recording_options(args),
        **fmt.job_options(args),
    )
    if args.json:
        print(fmt.to_json(schedule.to_dict()))
    else:
        print(f"{schedule.name}: {when(schedule)}; next run {schedule.next_run_at or '-'}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    found = list_schedules()
    if args.json:
        print(fmt.to_json([s.to_dict() for s in found]))
    else:
        print(table(found) if found else "no schedules")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    if not remove_schedule(args.name):
        print(f"recorder: no schedule named {args.name!r}", file=sys.stderr, flush=True)
        return 1
    print(f"removed {args.name}")
    return 0


def when(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron}"
    return f"every {schedule.every_s:g}s"


def table(found: list[Schedule]) -> str:
    """``recorder schedule list``: one line per schedule, by name."""
    return fmt.table(
        ("name", "room", "schedule", "tz", "enabled", "next run"),
        (
            (
                s.name,
                s.room_id,
                when(s),
                s.timezone if s.cron is not None else None,
                "yes" if s.enabled else "no",
                s.next_run_at,
            )
            for s in found
        ),
    )
