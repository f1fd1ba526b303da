"""Log lines: JSON shape, text mode, and the redaction safety net."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tasks.logs import (
    JWT,
    REDACTED_JWT,
    REDACTED_SECRET,
    JsonLines,
    OutageLog,
    RecorderFormatter,
    Redactor,
    install,
)
from tasks.settings import settings
from tasks.videosdk.tokens import TokenMinter
from tests.conftest import API_KEY, SECRET
from worker.signals import install_log_format

TOKEN = TokenMinter(api_key=API_KEY, secret=SECRET).token()


def record(
    msg: str = "job %s done", *args: Any, exc: bool = False, **extra: Any
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"boom with {TOKEN} and {SECRET}")
        except RuntimeError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(
        "tasks.delivery.runner", logging.INFO, __file__, 1, msg, args or None, exc_info
    )
    rec.__dict__.update(extra)
    return rec


def as_json(rec: logging.LogRecord, **kwargs: Any) -> dict[str, Any]:
    line = RecorderFormatter(json_lines=True, secrets=[SECRET], **kwargs).format(rec)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_json_line_has_ts_level_logger_message_and_the_extra_fields() -> None:
    rec = record(
        "job %s room=%s status=%s",
        "j1",
        "r1",
        "succeeded",
        job_id="j1",
        room_id="r1",
        status="succeeded",
        attempt=2,
        http_status=200,
        latency_ms=12.5,
        outcome=None,
    )
    out = as_json(rec)
    assert list(out)[:4] == ["ts", "level", "logger", "message"]
    assert out["ts"].endswith("Z") and out["ts"][:2] == "20"
    assert out["level"] == "INFO" and out["logger"] == "tasks.delivery.runner"
    assert out["message"] == "job j1 room=r1 status=succeeded"
    assert {k: out[k] for k in ("job_id", "room_id", "status", "attempt", "http_status")} == {
        "job_id": "j1",
        "room_id": "r1",
        "status": "succeeded",
        "attempt": 2,
        "http_status": 200,
    }
    assert out["latency_ms"] == 12.5 and out["outcome"] is None
    assert "args" not in out and "msg" not in out and "exc_info" not in out


def test_json_keeps_a_multi_line_message_and_traceback_on_one_line() -> None:
    out = as_json(record("first\nsecond", exc=True))
    assert out["message"] == "first\nsecond"
    assert "RuntimeError" in out["exc_info"] and "Traceback" in out["exc_info"]


def test_json_renders_values_json_cannot_hold_as_text() -> None:
    out = as_json(record(data={"when": object(), "n": [1, 2]}))
    assert out["data"]["n"] == [1, 2] and out["data"]["when"].startswith("<object")


@pytest.mark.parametrize("json_lines", [True, False])
def test_a_jwt_and_the_secret_are_redacted_wherever_they_hide(json_lines: bool) -> None:
    rec = record(
        "token %s secret %s url %s",
        TOKEN,
        SECRET,
        "redis://:hunter2pw@redis:6379/0",
        exc=True,
        room_id=f"room-{TOKEN}",
        data={"nested": [SECRET, {"auth": TOKEN}]},
    )
    line = RecorderFormatter(
        "%(message)s", json_lines=json_lines, secrets=[SECRET, None, ""]
    ).format(rec)
    assert SECRET not in line and TOKEN not in line and not JWT.search(line)
    assert "hunter2pw" not in line and "redis://***@redis:6379/0" in line
    assert REDACTED_JWT in line and REDACTED_SECRET in line
    if json_lines:
        out = json.loads(line)
        assert out["room_id"] == f"room-{REDACTED_JWT}"
        assert out["data"]["nested"] == [REDACTED_SECRET, {"auth": REDACTED_JWT}]


def test_any_jwt_shaped_string_is_redacted_not_only_our_own() -> None:
    foreign = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert foreign not in RecorderFormatter(json_lines=True).format(record("t=%s", foreign))


def test_text_mode_keeps_the_inner_text_and_appends_fields_it_does_not_show() -> None:
    inner = logging.Formatter("[%(levelname)s] %(message)s")
    rec = record(
        "job %s retrying", "j1", job_id="j1", room_id="r1", status="retrying", attempt=None
    )
    line = RecorderFormatter(inner=inner, secrets=[SECRET]).format(rec)
    assert line == "[INFO] job j1 retrying room_id=r1"


def test_text_mode_puts_fields_before_the_traceback() -> None:
    rec = record("failed", exc=True, job_id="j9")
    first, *rest = RecorderFormatter("%(message)s").format(rec).splitlines()
    assert first == "failed job_id=j9" and rest[0].startswith("Traceback")


def test_a_record_that_cannot_be_formatted_gives_a_line_not_an_exception() -> None:
    line = RecorderFormatter(json_lines=True).format(record("%d items", "not-a-number"))
    assert json.loads(line)["message"].startswith("could not format a log record")


def test_install_wraps_each_handler_once_however_often_it_runs() -> None:
    logger = logging.getLogger("tests.logs.install")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("plain: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install(logger, json_lines=False, secrets=[SECRET])
        install(logger, json_lines=False, secrets=[SECRET])
        formatter = handler.formatter
        assert isinstance(formatter, RecorderFormatter)
        assert not isinstance(formatter.inner, RecorderFormatter)
        logger.warning("secret is %s", SECRET)
        assert stream.getvalue() == f"plain: secret is {REDACTED_SECRET}\n"
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def clean_settings() -> Iterator[None]:
    settings.cache_clear()
    yield
    settings.cache_clear()


def test_the_celery_logging_signal_installs_json_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, clean_settings: None
) -> None:
    monkeypatch.setenv("RECORDER_LOG_FORMAT", "json")
    monkeypatch.setenv("VIDEOSDK_SECRET", SECRET)
    logger = logging.getLogger("tests.logs.signal")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        install_log_format(logger=logger)
        formatter = handler.formatter
        assert isinstance(formatter, RecorderFormatter) and formatter.json_lines
        assert SECRET not in formatter.format(record("x %s", SECRET))
    finally:
        logger.removeHandler(handler)


# -- what Celery prints itself, and outages -------------------------------------------------------


def test_json_lines_turns_each_print_into_one_object_and_passes_json_through() -> None:
    raw = io.StringIO()
    stream = JsonLines(raw, logger="celery.stdout", level="INFO", redact=Redactor([SECRET]))
    print(" \n -------------- celery@host v5\n--- ***** -----\n[tasks]\n", file=stream)
    print("worker: Warm shutdown (MainProcess)", file=stream)
    stream.write('{"ts": "x", "level": "INFO", "logger": "a", "message": "m"}\n')
    print("", file=stream)  # a blank line is dropped
    stream.write(f"no newline yet {SECRET}")
    stream.flush()
    lines = raw.getvalue().splitlines()
    assert len(lines) == 4
    objects = [json.loads(line) for line in lines]
    assert objects[0]["message"].startswith("-------------- celery@host v5\n")
    assert objects[0]["level"] == "INFO" and objects[0]["logger"] == "celery.stdout"
    assert objects[1]["message"] == "worker: Warm shutdown (MainProcess)"
    assert objects[2] == {"ts": "x", "level": "INFO", "logger": "a", "message": "m"}
    assert objects[3]["message"] == f"no newline yet {REDACTED_SECRET}"
    assert stream.fileno() is None, "Celery's safe_say writes nothing without a descriptor"


def test_json_lines_on_stderr_calls_a_python_warning_a_warning() -> None:
    raw = io.StringIO()
    stream = JsonLines(raw, logger="celery.stderr", level="ERROR")
    stream.write("/x/platforms.py:893: SecurityWarning: running as root\n  warn(...)\n")
    stream.write("Traceback (most recent call last):\n  boom\n")
    levels = [json.loads(line)["level"] for line in raw.getvalue().splitlines()]
    assert levels == ["WARNING", "ERROR"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_a_line_when_it_starts_one_a_minute_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    outage = OutageLog(logging.getLogger("tests.outage"), "dispatcher", clock=clock)
    with caplog.at_level(logging.INFO, logger="tests.outage"):
        outage.recovered()  # nothing was wrong: nothing to say
        for _ in range(241):  # two minutes of failures every half second
            outage.failed(ConnectionError("refused"))
            clock.now += 0.5
        outage.recovered()
        outage.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines[0] == "dispatcher: ConnectionError: refused (retrying; next line in 60s if it lasts)"
    )
    assert lines[1].startswith("dispatcher: still failing after 60s (121 tries)")
    assert lines[2].startswith("dispatcher: still failing after 120s")
    assert lines[3] == "dispatcher: working again after 120.5s (241 failed tries)"
    assert len(lines) == 4
