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
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

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
FIELDS = ("job_id", "room_id", "status", "attempt", "http_status", "latency_ms", "outcome")
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
