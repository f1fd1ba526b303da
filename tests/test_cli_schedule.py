"""``recorder schedule add|list|remove``, through a parser wired as ``tasks.cli`` wires it."""

from __future__ import annotations

import json
import sys

import pytest

import tasks
from tasks.cli import schedule as cli_schedule
from tasks.cli.format import BadUsage, Parser
from tasks.errors import ValidationError


def run(*argv: str) -> int:
    """Parse and run like ``recorder`` does: bad input is exit 2 with one line on stderr."""
    parser = Parser(prog="recorder")
    cli_schedule.add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(list(argv))
        return int(args.run(args))
    except (BadUsage, ValidationError) as exc:
        print(f"recorder: {exc}", file=sys.stderr)
        return 2


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("45", 45), ("1.5", 1.5)]
)
def test_every_takes_a_duration_or_plain_seconds(text: str, seconds: float) -> None:
    assert cli_schedule.duration(text) == seconds


def test_add_then_list_then_remove(
    recorder_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("schedule", "add", "standup", "room-1", "--cron", "0 9 * * MON", "--tz",
               "Europe/Berlin", "--config", '{"layout": {"type": "GRID"}}') == 0  # fmt: skip
    assert run("schedule", "add", "tick", "room-2", "--every", "5m", "--disabled") == 0
    assert capsys.readouterr().out.startswith("standup: cron 0 9 * * MON; next run 20")

    assert run("schedule", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "room", "schedule", "tz", "enabled", "next", "run"]
    assert lines[1].split()[:8] == ["standup", "room-1", "cron", "0", "9", "*", "*", "MON"]
    assert lines[1].split()[8:10] == ["Europe/Berlin", "yes"]
    assert lines[2].split() == ["tick", "room-2", "every", "300s", "-", "no", "-"]

    assert run("schedule", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == ["standup", "tick"]
    assert listed[0]["options"] == {"config": {"layout": {"type": "GRID"}}}

    assert run("schedule", "remove", "tick") == 0
    assert [s.name for s in tasks.list_schedules()] == ["standup"]


def test_a_start_window_goes_with_the_schedule(
    recorder_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("schedule", "add", "w", "room-1", "--every", "30s", "--start-window", "15m") == 0
    [schedule] = tasks.list_schedules()
    assert schedule.options == {"start_window_s": 900}


def test_removing_an_unknown_schedule_is_exit_1(
    recorder_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("schedule", "remove", "nope") == 1
    assert capsys.readouterr().err.strip() == "recorder: no schedule named 'nope'"


@pytest.mark.parametrize(
    "argv",
    [
        ["room-1"],
        ["room-1", "--cron", "0 9 * * *", "--every", "30s"],
        ["room-1", "--every", "5x"],
        ["room-1", "--every", "0"],
        ["room-1", "--every", "30s", "--tz", "Europe/Berlin"],
        ["room-1", "--cron", "0 25 * * *"],
        ["room-1", "--cron", "0 9 * * *", "--tz", "Nowhere/Land"],
        ["room-1", "--every", "30s", "--config", "{not json"],
    ],
)
def test_bad_input_is_exit_2_with_one_line(
    recorder_env: dict[str, str], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert run("schedule", "add", "standup", *argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert tasks.list_schedules() == []
