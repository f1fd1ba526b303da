from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.errors import (
    AlreadyRecording,
    CallTimedOut,
    ConnectionFailed,
    RateLimited,
    RequestRefused,
    ServerFailed,
    TokenRejected,
)
from tasks.videosdk.retry import RETRY_AFTER_MAX_S, backoff_s, is_retryable, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_grows_exponentially_within_jitter_and_the_cap(attempt: int) -> None:
    rng = random.Random(attempt)
    step = min(60.0, 2.0 ** (attempt - 1))
    for _ in range(50):
        wait = backoff_s(attempt, backoff_max_s=60.0, rng=rng)
        assert step / 2 <= wait <= step


def test_backoff_jitter_spreads_waits() -> None:
    rng = random.Random(1)
    waits = {round(backoff_s(5, backoff_max_s=60.0, rng=rng), 3) for _ in range(20)}
    assert len(waits) > 10


def test_retry_after_wins_over_backoff_even_past_the_cap() -> None:
    assert backoff_s(1, backoff_max_s=5.0, retry_after_s=120.0) == 120.0
    assert backoff_s(1, backoff_max_s=5.0, retry_after_s=10 * 3600.0) == RETRY_AFTER_MAX_S


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("3", now_s=NOW) == 3.0
    assert parse_retry_after(" 0 ", now_s=NOW) == 0.0
    assert parse_retry_after("9999999999", now_s=NOW) == RETRY_AFTER_MAX_S


@pytest.mark.parametrize("value", ["-5", "Infinity", "-inf", "1e400", "NaN"])
def test_parse_retry_after_negative_or_not_finite_is_absent(value: str) -> None:
    assert parse_retry_after(value, now_s=NOW) is None


def test_a_zero_or_tiny_retry_after_waits_at_least_the_ordinary_backoff() -> None:
    rng = random.Random(5)
    for attempt in range(1, 6):
        floor = min(5.0, 2.0 ** (attempt - 1)) / 2
        assert backoff_s(attempt, backoff_max_s=5.0, retry_after_s=0.0, rng=rng) >= floor


@given(st.text(max_size=40))
def test_any_header_gives_absent_or_a_finite_delay_of_at_most_an_hour(value: str) -> None:
    parsed = parse_retry_after(value, now_s=NOW)
    assert parsed is None or (math.isfinite(parsed) and 0.0 <= parsed <= RETRY_AFTER_MAX_S)


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_delta_seconds_are_taken_up_to_an_hour(seconds: float) -> None:
    assert parse_retry_after(repr(seconds), now_s=NOW) == min(seconds, RETRY_AFTER_MAX_S)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9999, 1, 1)))
def test_http_dates_give_the_delay_until_then_within_zero_and_an_hour(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC, microsecond=0)
    parsed = parse_retry_after(format_datetime(aware, usegmt=True), now_s=NOW)
    assert parsed == pytest.approx(min(max(aware.timestamp() - NOW, 0.0), RETRY_AFTER_MAX_S))


@given(
    st.integers(min_value=1, max_value=20),
    st.one_of(st.none(), st.floats(min_value=0, max_value=RETRY_AFTER_MAX_S)),
)
def test_every_wait_is_finite_at_least_the_jittered_step_and_at_most_an_hour(
    attempt: int, retry_after_s: float | None
) -> None:
    wait = backoff_s(attempt, backoff_max_s=60.0, retry_after_s=retry_after_s)
    assert math.isfinite(wait) and min(60.0, 2.0 ** (attempt - 1)) / 2 <= wait
    assert wait <= max(60.0, RETRY_AFTER_MAX_S)


def test_parse_retry_after_http_date() -> None:
    header = format_datetime(datetime.fromtimestamp(NOW + 42, UTC), usegmt=True)
    assert parse_retry_after(header, now_s=NOW) == pytest.approx(42.0)


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    header = format_datetime(datetime.fromtimestamp(NOW - 42, UTC), usegmt=True)
    assert parse_retry_after(header, now_s=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "Mon, 99 Foo 2026", "12abc"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now_s=NOW) is None


def test_only_transient_failures_are_retried() -> None:
    assert is_retryable(CallTimedOut("t"))
    assert is_retryable(ConnectionFailed("c"))
    assert is_retryable(RateLimited("r", http_status=429))
    assert is_retryable(ServerFailed("s", http_status=503))
    assert is_retryable(TokenRejected("u", http_status=401))
    assert not is_retryable(RequestRefused("x", http_status=400))
    assert not is_retryable(AlreadyRecording("a", http_status=400))
    assert not is_retryable(ValueError("other"))


def test_refused_error_types_name_the_status() -> None:
    assert RequestRefused("x", http_status=404).to_record()["type"] == "room_not_found"
    assert RequestRefused("x", http_status=422).to_record()["type"] == "invalid_object"
    assert RequestRefused("x", http_status=418).to_record()["type"] == "http_error"
