"""Text in and out of the ``recorder`` command: option parsing, job views, tables, stats.

Reading: the parser class (bad usage is an exception, so ``main`` decides the exit status), the
recording options shared by every command that creates jobs, JSON options and ISO 8601 times.
The two answers a command gives as exceptions are here too: :class:`BadUsage` (exit status 2) and
:class:`CommandFailed` (exit status 1).
Writing: pure functions from values to strings, testable without Redis. Nothing here prints, and
nothing here may show a secret (URLs go through :func:`redact`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from tasks.job import Job, whole
from tasks.logs import redact_url_credentials
from tasks.settings import parse_duration

_MISSING = "-"


# -- reading ------------------------------------------------------------------------------------


class BadUsage(Exception):
    """Raised when the command line is wrong (exit status 2)."""


class CommandFailed(Exception):
    """Raised when the command ran but the answer is no: not cancellable, job failed (exit 1)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadUsage(f"{message} (see `{self.prog} --help`)")


def add_recording_options(parser: argparse.ArgumentParser) -> None:
    """The recording options of ``enqueue`` (and of anything else that creates jobs)."""
    parser.add_argument("--template-url", metavar="URL")
    parser.add_argument("--transcription", metavar="JSON", help='e.g. {"enabled": true}')
    parser.add_argument("--summary", metavar="JSON", help='e.g. {"enabled": true, "prompt": "…"}')
    parser.add_argument("--config", metavar="JSON", help='e.g. {"layout": {"type": "GRID"}}')
    parser.add_argument("--webhook-url", metavar="URL")
    parser.add_argument("--aws-dir-path", metavar="PATH")
    parser.add_argument(
        "--start-window",
        type=duration,
        metavar="DURATION",
        help="how long after its due time a start may be tried (90s, 15m, 2h; default "
        "RECORDER_START_WINDOW, 10m); a job not started by then ends expired",
    )


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Options of the job beyond the API's body: its stop and its notifications."""
    parser.add_argument(
        "--max-duration",
        type=duration,
        metavar="DURATION",
        help="stop the recording this long after it started (45m, 2h, seconds)",
    )
    add_notify_option(parser)


def add_notify_option(parser: argparse.ArgumentParser) -> None:
    """``--notify-task``, of every command that creates a job (starts and stops)."""
    parser.add_argument(
        "--notify-task", metavar="TASK", help="a Celery task sent the job on every change"
    )


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``enqueue_recording`` (or ``add_schedule``) from
    :func:`add_job_options`; options not given are left out."""
    given = {"max_duration_s": args.max_duration, "notify_task": args.notify_task}
    return {k: v for k, v in given.items() if v is not None}


def recording_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``enqueue_recording`` from :func:`add_recording_options`."""
    return {
        "template_url": args.template_url,
        "transcription": json_option(args.transcription, "--transcription"),
        "summary": json_option(args.summary, "--summary"),
        "config": json_option(args.config, "--config"),
        "webhook_url": args.webhook_url,
        "aws_dir_path": args.aws_dir_path,
        **({"start_window_s": args.start_window} if args.start_window is not None else {}),
    }


def duration(text: str) -> float:
    """``30s``, ``5m``, ``1h``, ``1d`` or plain seconds, more than 0 (an argparse type)."""
    try:
        value = parse_duration(text)
    except ValueError:
        message = f"not a duration like 30s, 5m, 1h or 45: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return whole(value)


def json_option(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadUsage(f"{flag}: not valid JSON: {exc}") from None


def parse_time(text: str, flag: str) -> datetime:
    """An ISO 8601 time with a time zone (``Z`` accepted); BadUsage otherwise."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadUsage(f"{flag}: not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        raise BadUsage(f"{flag}: needs a time zone, e.g. 2030-01-31T09:00:00Z or ...+01:00")
    return when


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


# -- writing ------------------------------------------------------------------------------------


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced by ``***``."""
    return redact_url_credentials(text)


def to_json(value: Any) -> str:
    """Indented JSON, keys in their given order."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def error_type(job: Job) -> str:
    return (job.error or {}).get("type") or _MISSING


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table: left-aligned columns two spaces apart, ``-`` for None."""
    cells = [[_MISSING if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def jobs_table(jobs: Sequence[Job]) -> str:
    """``recorder jobs``: one line per job, newest first as given."""
    return table(
        ("id", "room", "kind", "status", "attempts", "http", "updated", "error", "recording"),
        (
            (
                j.id[:12],
                j.room_id,
                j.kind.value,
                j.status.value,
                j.attempts,
                j.http_status,
                j.updated_at,
                error_type(j),
                (j.recording or {}).get("status"),
            )
            for j in jobs
        ),
    )


def outcomes_table(jobs: Sequence[Job]) -> str:
    """The demo's final table: what became of each job."""
    return table(
        ("room", "status", "attempts", "http", "error"),
        ((j.room_id, j.status.value, j.attempts, j.http_status, error_type(j)) for j in jobs),
    )


def job_view(job: Job) -> str:
    """``recorder status``: ``key: value`` lines; optional fields only when set."""
    data = job.to_dict()
    always = (
        "id",
        "room_id",
        "status",
        "attempts",
        "created_at",
        "updated_at",
        "finished_at",
        "http_status",
        "error",
        "idempotency_key",
        "request",
        "response",
    )
    optional = (
        "kind",
        "run_at",
        "next_attempt_at",
        "start_deadline",
        "recording",
        "stop_job_id",
        "schedule",
        "maybe_started",
        "deliveries",
    )
    keys = [*always, *(k for k in optional if data.get(k))]
    width = max(len(k) for k in keys)
    return "\n".join(f"{k + ':':<{width + 1}} {_value(k, data.get(k))}" for k in keys)


def _value(key: str, value: Any) -> str:
    if value is None:
        return _MISSING
    if key == "error" and isinstance(value, dict):
        return f"{value.get('type')}: {value.get('message')}"
    if key == "recording" and isinstance(value, dict):
        return recording_text(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def recording_text(recording: dict[str, Any]) -> str:
    """``stopped  file=https://...  session=...`` from a job's ``recording``."""
    parts = [str(recording.get("status"))]
    for key, label in (("file_url", "file"), ("session_id", "session")):
        if recording.get(key):
            parts.append(f"{label}={recording[key]}")
    return "  ".join(parts)


def progress_line(job: Job) -> str:
    """One line for ``enqueue --wait`` each time the job changes status."""
    line = f"{job.status.value}  attempts={job.attempts}"
    if job.http_status is not None:
        line += f"  http={job.http_status}"
    if job.error:
        line += f"  error={error_type(job)}"
    return line


def progress_bar(done: int, total: int, *, width: int = 30) -> str:
    """``[#######.......] 12/20 done``."""
    filled = width if total <= 0 else min(width, done * width // total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done"


def limits_view(limits: dict[str, Any]) -> str:
    """The rate limiter's state, one ``key: value`` per line."""
    return "\n".join(
        [
            f"rate limit:     {limits['rate_limit']} ({limits['rate_per_s']:g}/s, "
            f"burst {limits['burst']})",
            f"effective rate: {limits['effective_rate_per_s']:g}/s (factor {limits['factor']:g})",
            f"cooldown:       {limits['cooldown_s']:.3f} s",
            f"backlog:        {limits['backlog_s']:.3f} s",
        ]
    )


def stats_view(stats: dict[str, Any]) -> str:
    """``recorder stats``: jobs per status, then due, queue depth and the rate limit."""
    jobs: dict[str, int] = stats["jobs"]
    width = max(len(s) for s in jobs)
    lines = ["jobs:"]
    lines += [f"  {status + ':':<{width + 1}} {count}" for status, count in jobs.items()]
    rate = stats["success_rate"]
    api = stats["api"]
    latency = api["api_latency_ms"]
    calls = ", ".join(f"{k}: {v}" for k, v in api["api_calls"].items()) or "none yet"
    lines += [
        f"success rate:   {'-' if rate is None else f'{rate:.1%}'} (of finished jobs)",
        f"due:            {stats['due']}",
        f"queue depth:    {stats['queue_depth']}",
        f"API calls:      {calls}",
        "API latency:    "
        + ", ".join(f"{q} {_ms(latency[q])}" for q in ("p50", "p90", "p99"))
        + f" over {latency['count']} calls",
        limits_view(stats["rate_limit"]),
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    """Three significant digits, so 2.4 ms and 2.9 ms read as different (not both as 3 ms)."""
    if value is None:
        return "-"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} ms"
