"""Logs: one line per record, JSON or text, with secrets, tokens and URL credentials redacted.

:class:`RecorderFormatter` renders a record either as one JSON object per line (``ts``, ``level``,
``logger``, ``message``, then every ``extra`` field the record carries, then ``exc_info`` /
``stack_info`` as text) or as the text of the formatter it wraps (Celery's own, so worker logs look
as they always did) followed by the structured fields the message does not already show, as
``key=value``.

Redaction is a safety net, not the policy (the code never logs a token or the secret): whatever
a record holds, the line written never contains anything shaped like a JWT, the configured
secret(s), or the credentials of a ``scheme://user:password@host`` URL. The last is
:func:`redact_url_credentials`, which the ``recorder`` command's messages go through too.

Two helpers for lines that do not come from a formatter: :class:`JsonLines` (what Celery prints
itself, its banner and shutdown lines, as JSON objects: :func:`json_stdio`) and
:class:`OutageLog` (a failure that repeats every loop turn logged when it starts, at most once a
minute while it lasts, and when it ends).
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from tasks.job import utc_iso

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
REDACTED_JWT = "[redacted-jwt]"
REDACTED_SECRET = "[redacted-secret]"
#: ``redis://:pw@host``, ``https://user:pw@host`` or ``https://token@host``: the whole userinfo.
#: a URL's userinfo: everything from ``scheme://`` up to the LAST ``@`` before the host (a raw
#: ``@`` in a password is accepted by redis-py and kombu), not crossing a path, white space or the
#: ``;`` that starts the next URL of a Sentinel list
_URL_CREDENTIALS = re.compile(
    r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:(?!;[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/])*@"
)

#: the fields the runner's state-change and call lines carry, in the order text mode shows them.
FIELDS = (
    "job_id",
    "room_id",
    "status",
    "attempt",
    "http_status",
    "error_type",
    "latency_ms",
    "outcome",
)
#: attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact_url_credentials(text: str) -> str:
    """``text`` with the userinfo of any ``scheme://userinfo@host`` in it replaced by ``***``."""
    return _URL_CREDENTIALS.sub(r"\1***@", text) if "://" in text else text


class Redactor:
    """Replaces secrets, JWT-shaped strings and URL credentials in text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # longest first, so a secret containing another is replaced whole
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED_SECRET)
        if "eyJ" in text:
            text = JWT.sub(REDACTED_JWT, text)
        return redact_url_credentials(text)

    def value(self, value: Any) -> Any:
        """``value`` with every string in it (nested too) redacted; other scalars as they are."""
        if isinstance(value, str):
            return self(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, dict):
            return {self(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self(str(value))


class RecorderFormatter(logging.Formatter):
    """Renders records as JSON lines or as text, always redacted; see the module docstring.

    ``inner`` is the formatter whose text mode output is kept (default: a plain
    ``logging.Formatter`` with ``fmt``/``datefmt``).
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        *,
        json_lines: bool = False,
        secrets: Iterable[str | None] = (),
        inner: logging.Formatter | None = None,
    ) -> None:
        super().__init__(fmt, datefmt)
        self.json_lines = json_lines
        self.redact = Redactor(secrets)
        self.inner = inner or logging.Formatter(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        try:
            line = self._json(record) if self.json_lines else self._text(record)
        except Exception as exc:  # a log line must never take the process down
            line = json.dumps(
                {
                    "ts": utc_iso(record.created),
                    "level": "ERROR",
                    "logger": __name__,
                    "message": f"could not format a log record: {type(exc).__name__}",
                }
            )
        return self.redact(line)

    def _text(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        message = record.getMessage()
        shown = [
            f"{name}={value}"
            for name in FIELDS
            if (value := getattr(record, name, None)) is not None and str(value) not in message
        ]
        if not shown:
            return text
        head, sep, tail = text.partition("\n")  # fields stay on the first line, before a traceback
        return f"{head} {' '.join(shown)}{sep}{tail}"

    def _json(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out and not name.startswith("_"):
                out[name] = self.redact.value(value)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = self.redact(record.exc_text)
        if record.stack_info:
            out["stack_info"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def install(
    logger: logging.Logger, *, json_lines: bool, secrets: Iterable[str | None] = ()
) -> None:
    """Put a :class:`RecorderFormatter` on every handler of ``logger``, wrapping the one it had.

    Safe to call again (a handler already carrying one gets a fresh one around the same inner
    formatter), so Celery's repeated logging set-up never nests formatters.
    """
    secrets = list(secrets)
    for handler in logger.handlers:
        current = handler.formatter
        inner = current.inner if isinstance(current, RecorderFormatter) else current
        handler.setFormatter(RecorderFormatter(json_lines=json_lines, secrets=secrets, inner=inner))


class JsonLines(io.TextIOBase):
    """A text stream that writes what it is given as JSON log lines on ``raw``.

    Text is collected until a write ends a line, then written as ONE object (``ts``, ``level``,
    ``logger``, ``message``), so a multi-line ``print`` (Celery's banner) or a warning with its
    source line stays one object. Text that already is a JSON object (our formatter's lines, when
    a log handler writes here) passes through as it is; blank lines are dropped.
    """

    def __init__(
        self, raw: TextIO, *, logger: str, level: str, redact: Callable[[str], str] = str
    ) -> None:
        super().__init__()
        self.raw = raw
        self.logger = logger
        self.level = level
        self.redact = redact
        self._pending = ""
        self._lock = threading.RLock()  # a signal handler may write while a write is on

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            if self._pending.endswith("\n"):
                chunk, self._pending = self._pending, ""
                self._emit(chunk)
        return len(text)

    def _emit(self, chunk: str) -> None:
        if chunk.startswith("{"):
            self.raw.write(chunk)
        elif chunk.strip():
            message = self.redact(chunk.strip())
            level = self.level
            if level == "ERROR" and "Warning:" in message.partition("\n")[0]:
                level = "WARNING"  # a Python warning, shown on stderr
            line = {"ts": utc_iso(time.time()), "level": level, "logger": self.logger}
            self.raw.write(json.dumps({**line, "message": message}, ensure_ascii=False) + "\n")
        self.raw.flush()

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                chunk, self._pending = self._pending + "\n", ""
                self._emit(chunk)
        self.raw.flush()

    def fileno(self) -> int | None:  # type: ignore[override]
        """None: Celery's ``safe_say`` (its shutdown lines) writes to a stream's file descriptor
        when it has one, bypassing the stream; without one it writes nothing, and the worker
        logs those lines itself (``worker.signals``)."""
        return None

    def isatty(self) -> bool:
        return False  # no colours in JSON

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", None) or "utf-8"


def json_stdio_active() -> bool:
    """Whether :func:`json_stdio` has replaced this process's streams."""
    return isinstance(sys.__stdout__, JsonLines)


def json_stdio(secrets: Iterable[str | None] = ()) -> None:
    """Make everything this process writes to stdout and stderr a JSON line.

    Celery prints its banner and shutdown lines straight to ``sys.__stdout__`` (not through
    logging, not through ``sys.stdout``), so both pairs are replaced; log handlers created later
    on ``sys.__stderr__`` write their JSON lines through unchanged. Idempotent.
    """
    redact = Redactor(secrets)
    for name, level in (("stdout", "INFO"), ("stderr", "ERROR")):
        current = getattr(sys, f"__{name}__")
        if isinstance(current, JsonLines) or current is None:
            continue
        stream = JsonLines(current, logger=f"celery.{name}", level=level, redact=redact)
        setattr(sys, f"__{name}__", stream)
        if getattr(sys, name) is current:
            setattr(sys, name, stream)


class OutageLog:
    """Logs a failure that repeats on every turn of a loop without a line per turn.

    :meth:`failed` logs the first failure at WARNING, then at most one line per ``repeat_s``
    while failures go on; :meth:`recovered` logs one line when the first success follows, with
    how long it lasted. ``what`` names the loop in each line.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        repeat_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what
        self.repeat_s = repeat_s
        self.clock = clock
        self.since: float | None = None
        self.failures = 0
        self._last_line = 0.0

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.failures += 1
        if self.since is None:
            self.since = self._last_line = now
            self.log.warning(
                "%s: %s: %s (retrying; next line in %gs if it lasts)",
                self.what,
                type(exc).__name__,
                exc,
                self.repeat_s,
                extra={"outcome": "outage_started"},
            )
        elif now - self._last_line >= self.repeat_s:
            self._last_line = now
            self.log.warning(
                "%s: still failing after %.0fs (%d tries): %s: %s",
                self.what,
                now - self.since,
                self.failures,
                type(exc).__name__,
                exc,
                extra={"outcome": "outage_continues"},
            )

    def recovered(self) -> None:
        if self.since is None:
            return
        lasted_s = self.clock() - self.since
        self.log.warning(
            "%s: working again after %.1fs (%d failed tries)",
            self.what,
            lasted_s,
            self.failures,
            extra={"outcome": "outage_ended"},
        )
        self.since, self.failures = None, 0
