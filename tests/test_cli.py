"""Tests of the ``recorder`` command, run in-process against a real Redis (no worker needed)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from tasks import runtime
from tasks.api import enqueue_recording, get_job
from tasks.cli import commands as cli
from tasks.cli import format as cli_format
from tasks.cli import jobs as cli_jobs
from tasks.cli import ops as cli_ops
from tasks.job import Job, Status
from tasks.store import metrics
from tests.conftest import reset_process

#: a database of its own, so other test modules (and their workers) never see these jobs
CLI_TEST_DB = int(os.environ.get("RECORDER_CLI_TEST_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{CLI_TEST_DB}"
#: nothing listens on port 1
DEAD_REDIS_URL = "redis://:hunter2-password@127.0.0.1:1/0"
SETTINGS_VARS = ("REDIS_URL", "RECORDER_KEY_PREFIX", "REDIS_SENTINEL_MASTER", "RECORDER_RATE_LIMIT")


def _use_redis(url: str) -> None:
    """Point the runtime, and the Celery app that publishes jobs, at ``url``."""
    os.environ["REDIS_URL"] = url
    reset_process()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment variables the runtime reads, restored (and the runtime rebuilt) after."""
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    yield
    monkeypatch.undo()
    reset_process()


@pytest.fixture
def rdb(env: None) -> Iterator[redis.Redis]:
    """A client of the CLI's test db, flushed before and after; the runtime points at it."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis does not answer at {REDIS_URL}")
    client.flushdb()
    _use_redis(REDIS_URL)
    yield client
    client.flushdb()
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("recorder: ")
    return lines[0]


def soon(delta_s: float = 3600) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


def make_failed(room: str) -> Job:
    job = enqueue_recording(room)
    error = {"type": "room_not_found", "message": "Room not found"}
    result = runtime.store().update(
        job.id, {"status": "failed", "http_status": 404, "error": error}
    )
    assert result.applied and result.job is not None
    return result.job


# -- enqueue ---------------------------------------------------------------------------------------


def test_enqueue_prints_the_job_id_and_stores_it_queued(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "enqueue", "room-1")
    assert code == 0 and err == ""
    job_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    job = get_job(job_id)
    assert job is not None and job.status is Status.QUEUED and job.room_id == "room-1"
    assert rdb.llen("recorder") == 1, "one message on the Celery queue"


def test_enqueue_json_prints_the_job_with_the_body_it_will_send(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "enqueue", "room-1", "--json",
        "--config", '{"layout": {"type": "GRID", "gridSize": 2}, "mode": "audio"}',
        "--transcription", '{"enabled": true}',
        "--webhook-url", "https://example.com/hook",
        "--aws-dir-path", "recordings/",
    )  # fmt: skip
    assert code == 0
    job = json.loads(out)
    assert job["status"] == "queued" and job["room_id"] == "room-1" and job["attempts"] == 0
    assert job["request"] == {
        "roomId": "room-1",
        "config": {"layout": {"type": "GRID", "gridSize": 2}, "mode": "audio"},
        "transcription": {"enabled": True},
        "webhookUrl": "https://example.com/hook",
        "awsDirPath": "recordings/",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "{layout"], "recorder: --config: not valid JSON: "),
        (["--transcription", "yes"], "recorder: --transcription: not valid JSON: "),
        (["--summary", ""], "recorder: --summary: not valid JSON: "),
        (["--config", '{"layout": {"type": "DIAGONAL"}}'], "recorder: config.layout.type"),
        (["--config", '{"quality": "ultra"}'], "recorder: config.quality"),
        (["--at", "2030-01-31T09:00:00"], "recorder: --at: needs a time zone"),
        (["--at", "next tuesday"], "recorder: --at: not an ISO 8601 time"),
        (["--idempotency-key", ""], "recorder: idempotency_key"),
        (["--timeout", "-1"], "recorder: argument --timeout"),
        (["--colour", "red"], "recorder: unrecognized arguments: --colour red"),
        (["--summary", '{"enabled": true, "prompt": "\\ud800"}'], "recorder: summary.prompt"),
        (["--idempotency-key", "k\udc80"], "recorder: idempotency_key: must be text encodable"),
    ],
)
def test_enqueue_rejects_bad_input_with_exit_2_and_stores_nothing(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "enqueue", "room-1", *args)
    assert code == 2 and out == ""
    assert one_line(err).startswith(message)
    assert rdb.dbsize() == 0, "no job record, index or queue message"


def test_enqueue_at_an_aware_time_holds_the_job_as_scheduled(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "enqueue", "room-1", "--at", soon(), "--json")
    assert code == 0
    job = json.loads(out)
    assert job["status"] == "scheduled" and job["run_at"] is not None
    assert rdb.llen("recorder") == 0, "published only when due"


def test_enqueue_with_the_same_idempotency_key_prints_the_same_id(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(capsys, "enqueue", "room-1", "--idempotency-key", "standup-1")[1]
    second = run(capsys, "enqueue", "room-1", "--idempotency-key", "standup-1")[1]
    assert first == second and rdb.llen("recorder") == 1


def _finish_later(job_id: str, statuses: list[dict[str, object]]) -> threading.Thread:
    """Play a worker: apply each patch to the job 0.3 s apart."""

    def play() -> None:
        for patch in statuses:
            time.sleep(0.3)
            runtime.store().update(job_id, patch)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return thread


def test_enqueue_wait_shows_progress_and_exits_0_when_the_job_succeeds(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a "worker" that takes the job as soon as it is enqueued
    real_enqueue = enqueue_recording
    patches: list[dict[str, object]] = [
        {"status": "running", "attempts": 1},
        {"status": "retrying", "error": {"type": "server_error", "message": "502"}},
        {"status": "running", "attempts": 2, "error": None},
        {"status": "succeeded", "http_status": 200},
    ]

    def enqueue_and_work(*args: object, **kwargs: object) -> Job:
        job = real_enqueue(*args, **kwargs)  # type: ignore[arg-type]
        _finish_later(job.id, patches)
        return job

    monkeypatch.setattr(cli_jobs, "enqueue_recording", enqueue_and_work)
    # When we enqueue with --wait
    code, out, err = run(capsys, "enqueue", "room-1", "--wait", "--timeout", "10", "--json")
    # Then each status change is one line on stderr, and the final job is printed
    assert code == 0
    assert json.loads(out)["status"] == "succeeded"
    progress = [line.split("  ", 1)[1] for line in err.strip().splitlines()]
    assert progress == [
        "queued  attempts=0",
        "running  attempts=1",
        "retrying  attempts=1  error=server_error",
        "running  attempts=2",
        "succeeded  attempts=2  http=200",
    ]


def test_enqueue_wait_exits_1_when_the_job_fails(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_enqueue = enqueue_recording
    failed = {
        "status": "failed",
        "http_status": 404,
        "error": {"type": "room_not_found", "message": "Room not found"},
    }

    def enqueue_and_fail(*args: object, **kwargs: object) -> Job:
        job = real_enqueue(*args, **kwargs)  # type: ignore[arg-type]
        _finish_later(job.id, [failed])
        return job

    monkeypatch.setattr(cli_jobs, "enqueue_recording", enqueue_and_fail)
    code, out, err = run(capsys, "enqueue", "missing-1", "--wait", "--timeout", "10")
    assert code == 1
    assert "status:          failed" in out
    assert err.strip().splitlines()[-1].endswith("failed: room_not_found")


def test_enqueue_wait_gives_up_after_the_timeout_with_exit_1(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, _, err = run(capsys, "enqueue", "room-1", "--at", soon(), "--wait", "--timeout", "0.5")
    assert code == 1 and time.monotonic() - started < 5
    assert "not finished after 0.5s (still scheduled)" in err


# -- status, jobs ----------------------------------------------------------------------------------


def test_status_shows_the_job_as_text_and_as_json(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    job = enqueue_recording("room-1", idempotency_key="k-1")
    code, out, _ = run(capsys, "status", job.id)
    assert code == 0
    view = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert view["id"].strip() == job.id and view["status"].strip() == "queued"
    assert view["idempotency_key"].strip() == "k-1" and view["finished_at"].strip() == "-"
    code, out, _ = run(capsys, "status", job.id, "--json")
    assert code == 0 and json.loads(out) == job.to_dict()


def test_status_of_an_unknown_id_exits_1(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "status", "0" * 32)
    assert code == 1 and out == ""
    assert one_line(err) == f"recorder: no job with id '{'0' * 32}'"


def test_jobs_json_is_an_array_filtered_by_room_newest_first(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    a1 = enqueue_recording("room-a")
    enqueue_recording("room-b")
    a2 = enqueue_recording("room-a")
    code, out, _ = run(capsys, "jobs", "--room", "room-a", "--json")
    assert code == 0
    jobs = json.loads(out)
    assert [j["id"] for j in jobs] == [a2.id, a1.id]
    code, out, _ = run(capsys, "jobs", "--room", "nobody", "--json")
    assert code == 0 and json.loads(out) == []


def test_jobs_table_has_a_row_per_job(rdb: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    job = enqueue_recording("room-a")
    failed = make_failed("room-b")
    code, out, _ = run(capsys, "jobs")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split() == [
        "id", "room", "kind", "status", "attempts", "http", "updated", "error", "recording"
    ]  # fmt: skip
    assert rows[0].split()[:4] == [failed.id[:12], "room-b", "start", "failed"]
    assert rows[0].split()[-2:] == ["room_not_found", "-"]
    assert rows[1].split()[:4] == [job.id[:12], "room-a", "start", "queued"]
    code, out, _ = run(capsys, "jobs", "--status", "failed", "--limit", "5", "--json")
    assert [j["id"] for j in json.loads(out)] == [failed.id]


@pytest.mark.parametrize("args", [["--status", "done"], ["--limit", "0"], ["--limit", "x"]])
def test_jobs_rejects_a_bad_filter_with_exit_2(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = run(capsys, "jobs", *args)
    assert code == 2 and out == ""
    one_line(err)


# -- cancel, retry ---------------------------------------------------------------------------------


def test_cancel_a_queued_job_then_again(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    job = enqueue_recording("room-1")
    code, out, err = run(capsys, "cancel", job.id)
    assert (code, out, err) == (0, "cancelled\n", "")
    cancelled = get_job(job.id)
    assert cancelled is not None and cancelled.status is Status.CANCELLED
    assert cancelled.finished_at is not None
    code, out, err = run(capsys, "cancel", job.id)
    assert code == 1 and out == "cancelled\n"
    assert "only a scheduled or queued job can be cancelled" in one_line(err)


def test_cancel_a_finished_or_unknown_job_exits_1(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = make_failed("room-1")
    code, out, err = run(capsys, "cancel", failed.id)
    assert code == 1 and out == "failed\n"
    code, out, err = run(capsys, "cancel", "nope")
    assert code == 1 and out == "" and one_line(err) == "recorder: no job with id 'nope'"


def test_retry_requeues_a_failed_job_once(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = make_failed("room-1")
    rdb.delete("recorder")  # the queue: count only the retry's message
    code, out, _ = run(capsys, "retry", failed.id)
    assert (code, out) == (0, "requeued 1 job(s)\n")
    job = get_job(failed.id)
    assert job is not None and job.status is Status.QUEUED and job.error is None
    assert rdb.llen("recorder") == 1
    code, out, err = run(capsys, "retry", failed.id)
    assert code == 1 and "is queued, not failed" in one_line(err)
    code, _, err = run(capsys, "retry", "nope")
    assert code == 1 and one_line(err) == "recorder: no job with id 'nope'"


def test_retry_failed_replays_the_failed_jobs_of_a_room_since_a_time(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    a1, a2, b1 = make_failed("room-a"), make_failed("room-a"), make_failed("room-b")
    enqueue_recording("room-a")  # queued: not replayed
    code, out, _ = run(capsys, "retry", "--failed", "--room", "room-a", "--since", soon(60))
    assert (code, out) == (0, "requeued 0 job(s)\n")
    code, out, _ = run(capsys, "retry", "--failed", "--room", "room-a", "--since", soon(-60))
    assert (code, out) == (0, "requeued 2 job(s)\n")
    assert [get_job(j.id).status for j in (a1, a2, b1)] == [  # type: ignore[union-attr]
        Status.QUEUED,
        Status.QUEUED,
        Status.FAILED,
    ]
    code, out, _ = run(capsys, "retry", "--failed")
    assert (code, out) == (0, "requeued 1 job(s)\n")


@pytest.mark.parametrize(
    "args",
    [[], ["abc", "--failed"], ["abc", "--room", "r"], ["--failed", "--since", "yesterday"]],
)
def test_retry_needs_either_a_job_id_or_failed(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, _, err = run(capsys, "retry", *args)
    assert code == 2
    one_line(err)


# -- stats, limits, health -------------------------------------------------------------------------


def test_stats_json_counts_jobs_per_status_and_the_queue(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    enqueue_recording("room-1")
    cli.main(["cancel", enqueue_recording("room-2").id])
    enqueue_recording("room-3", run_at=datetime.now(UTC) + timedelta(hours=1))
    capsys.readouterr()
    code, out, _ = run(capsys, "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["jobs"] == {
        "scheduled": 1, "queued": 1, "running": 0, "retrying": 0,
        "succeeded": 0, "failed": 0, "cancelled": 1, "expired": 0,
    }  # fmt: skip
    assert stats["due"] == 1 and stats["queue_depth"] == 2
    assert stats["rate_limit"]["rate_per_s"] == 10.0 and stats["rate_limit"]["factor"] == 1.0
    code, out, _ = run(capsys, "stats")
    assert code == 0 and "queued:    1" in out and "queue depth:    2" in out


def test_limits_shows_the_rate_limiter_without_taking_a_slot(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["RECORDER_RATE_LIMIT"] = "120/m"
    reset_process()
    runtime.limiter().on_rate_limited(5.0)  # a 429 with Retry-After: 5
    code, out, _ = run(capsys, "limits", "--json")
    assert code == 0
    limits = json.loads(out)
    assert limits["rate_limit"] == "120/m" and limits["rate_per_s"] == 2.0
    assert 4.0 < limits["cooldown_s"] <= 5.0
    assert rdb.get("recorder:rl:tat") is None, "peeking reserves nothing"
    code, out, _ = run(capsys, "limits")
    assert code == 0 and out.startswith("rate limit:     120/m (2/s, burst 1)")


def test_health_without_a_worker_exits_1_with_one_line(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_ops, "HEALTH_PING_TIMEOUT_S", 0.2)
    code, out, err = run(capsys, "health")
    assert code == 1 and out == ""
    assert one_line(err) == "recorder: redis answers, but no worker replied within 0.2s"


@pytest.mark.parametrize(
    "argv",
    [["status", "abc"], ["jobs"], ["enqueue", "room-1"], ["stats"], ["health"], ["cancel", "x"]],
)
def test_an_unreachable_redis_is_exit_1_with_one_line_and_no_password(
    env: None, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _use_redis(DEAD_REDIS_URL)
    code, _, err = run(capsys, *argv)
    assert code == 1
    line = one_line(err)
    assert "hunter2" not in err
    assert "redis" in line.lower()


def test_a_raw_at_sign_in_the_redis_password_shows_none_of_it(
    env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # redis-py and kombu accept a raw "@" in the password: all of the userinfo is hidden
    _use_redis("redis://:Tr0ub@dor&3@127.0.0.1:1/0")
    code, _, err = run(capsys, "health")
    assert code == 1 and "Tr0ub" not in err and "dor&3" not in err
    assert "redis://***@127.0.0.1:1/0" in err


# -- parsing and delegation ------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in [c.name for c in cli.COMMANDS] + list(cli.DELEGATED):
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), name


def test_no_command_or_an_unknown_one_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2
    code, _, err = run(capsys, "record")
    assert code == 2 and "invalid choice: 'record'" in one_line(err)


def test_demo_and_sandbox_parse_their_own_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--help")
    assert code == 0 and "usage: recorder demo" in out
    code, _, err = run(capsys, "demo", "--jobs", "0")
    assert code == 2 and "--jobs" in one_line(err)
    code, _, err = run(capsys, "demo", "--rate-limit", "fast")
    assert code == 2 and "--rate-limit" in one_line(err)
    code, out, _ = run(capsys, "sandbox", "--help")
    assert code == 0 and "usage: recorder sandbox" in out


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "jobs", "--limit", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("recorder: limit")


def test_a_locale_that_cannot_show_a_room_name_gets_replacements_not_a_traceback(
    rdb: redis.Redis,
) -> None:
    # Given a job for a room whose name has non-ASCII letters and an emoji
    enqueue_recording("raum-ü-🎥")
    # When the command runs under a locale that encodes ASCII only
    locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env = {**os.environ, "REDIS_URL": REDIS_URL, **locale}
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "jobs", "--room", "raum-ü-🎥"],
        capture_output=True, timeout=60, env=env,
    )  # fmt: skip
    # Then it finds the room (the argument is read as the UTF-8 the shell passed) and prints
    # the row with replacements
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr and b"raum-?-?" in result.stdout


# -- formatting ------------------------------------------------------------------------------------


def test_progress_bar_fills_in_proportion() -> None:
    assert cli_format.progress_bar(0, 20, width=10) == "[..........] 0/20 done"
    assert cli_format.progress_bar(12, 20, width=10) == "[######....] 12/20 done"
    assert cli_format.progress_bar(20, 20, width=10) == "[##########] 20/20 done"


def test_redact_hides_credentials_in_urls() -> None:
    text = "cannot reach redis://:pw@h:1/0 or rediss://user:pw@h2 (see http://x/y)"
    assert cli_format.redact(text) == (
        "cannot reach redis://***@h:1/0 or rediss://***@h2 (see http://x/y)"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:Tr0ub@dor&3@127.0.0.1:6399/0", "redis://***@127.0.0.1:6399/0"),
        ("rediss://u:a@b@c@h/0?x=1", "rediss://***@h/0?x=1"),
        (
            "sentinel://:p@w@h1:26379;sentinel://:p@w@h2:26379",
            "sentinel://***@h1:26379;sentinel://***@h2:26379",
        ),
        ("http://127.0.0.1:8080/v2/a@b", "http://127.0.0.1:8080/v2/a@b"),
    ],
)
def test_redact_hides_all_of_the_userinfo_up_to_the_last_at_sign(text: str, shown: str) -> None:
    assert cli_format.redact(text) == shown


def test_parse_time_accepts_z_and_offsets_only() -> None:
    assert cli_format.parse_time("2030-01-31T09:00:00Z", "--at").tzinfo is not None
    assert cli_format.parse_time("2030-01-31T09:00:00+01:00", "--at").utcoffset() == timedelta(
        hours=1
    )
    with pytest.raises(cli_format.BadUsage, match="needs a time zone"):
        cli_format.parse_time("2030-01-31T09:00:00", "--at")


# -- short ids, settings, pipes -------------------------------------------------------------------


def test_status_takes_the_short_id_that_jobs_prints(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    job = enqueue_recording("room-short")
    code, out, _ = run(capsys, "status", job.id[:12], "--json")
    assert code == 0 and json.loads(out)["id"] == job.id
    code, out, _ = run(capsys, "cancel", job.id[:8])
    assert (code, out) == (0, "cancelled\n")


def test_an_ambiguous_prefix_is_exit_2_naming_the_matches(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two jobs whose ids share a first character (16 jobs make that certain)
    jobs = [enqueue_recording(f"room-{i}") for i in range(17)]
    shared = next(j.id[0] for j in jobs if sum(k.id[0] == j.id[0] for k in jobs) > 1)
    matching = [j.id for j in jobs if j.id.startswith(shared)]
    code, out, err = run(capsys, "status", shared)
    assert code == 2 and out == ""
    line = one_line(err)
    assert f"{len(matching)} jobs have ids starting with '{shared}'" in line
    assert all(i in line for i in matching[:5]) and "give more of the id" in line
    code, _, err = run(capsys, "status", "f" * 31 if shared != "f" * 31 else "e" * 31)
    assert code == 1 and "no job with id" in one_line(err)


def test_a_prefix_is_found_fast_among_100k_jobs(rdb: redis.Redis) -> None:
    # Given 100,000 job ids in the index of every job (records only for ours)
    rng = random.Random(11)
    pipe = rdb.pipeline(transaction=False)
    for i in range(100_000):
        pipe.zadd("recorder:jobs", {f"{rng.getrandbits(128):032x}": i})
        if i % 10_000 == 9_999:
            pipe.execute()
    job = enqueue_recording("room-needle")
    # When its 12-character prefix is looked up
    started = time.perf_counter()
    found = cli_jobs.jobs_by_prefix(job.id[:12])
    elapsed_s = time.perf_counter() - started
    # Then it is found alone, well within an interactive command's time
    assert [j.id for j in found] == [job.id]
    assert elapsed_s < 0.5, f"prefix lookup took {elapsed_s * 1000:.0f} ms"


def recorder(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "REDIS_URL": REDIS_URL, **env}
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", *argv],
        capture_output=True, text=True, timeout=60, env=full,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "named", "commands"),
    [
        ("RECORDER_RATE_LIMIT", "10/sec", "RECORDER_RATE_LIMIT must look like N/s",
         (["jobs"], ["status", "abc"], ["enqueue", "r"], ["health"])),
        ("RECORDER_JOB_TTL", "a month", "RECORDER_JOB_TTL must be a int", (["stats"],)),
    ],
)  # fmt: skip
def test_a_bad_setting_is_one_line_and_exit_2_in_every_command(
    rdb: redis.Redis, variable: str, value: str, named: str, commands: tuple[list[str], ...]
) -> None:
    for argv in commands:
        result = recorder(*argv, **{variable: value})
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr.startswith(f"recorder: {named}") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_commands_that_do_not_call_the_api_never_read_the_secret(rdb: redis.Redis) -> None:
    job = enqueue_recording("room-secret")
    unreadable = {"VIDEOSDK_SECRET_FILE": "/nonexistent/videosdk_secret"}
    for argv in (["jobs"], ["status", job.id[:12]]):
        result = recorder(*argv, **unreadable)
        assert result.returncode == 0, (argv, result.stderr)


def test_a_reader_that_goes_away_is_not_an_outage(rdb: redis.Redis) -> None:
    # Given `recorder status ID | head -1`: the reader closes the pipe before the output is out
    job = enqueue_recording("room-pipe")
    env = {**os.environ, "REDIS_URL": REDIS_URL}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "status", job.id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    # Then it ends quietly: no "Redis is unreachable", no traceback
    assert proc.wait(60) == 0, err
    assert err == ""


def test_stats_shows_latency_to_a_tenth_of_a_millisecond(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given calls of 2-3 ms (shown as 12 ms by the old buckets)
    increments: dict[str, int] = {}
    for i in range(200):
        latency_s = 0.002 + 0.001 * i / 199
        metrics.merge(
            increments, metrics.call_increments(http_status=200, outcome="", latency_s=latency_s)
        )
    metrics.record(rdb, metrics.key("recorder"), increments)
    _, out, _ = run(capsys, "stats", "--json")
    latency = json.loads(out)["api"]["api_latency_ms"]
    assert latency["p50"] == pytest.approx(2.5, rel=0.1)
    assert latency["p90"] == pytest.approx(2.9, rel=0.1)
    _, out, _ = run(capsys, "stats")
    assert re.search(r"API latency:    p50 2\.\d\d ms, p90 [23]\.\d\d ms", out), out


def test_health_is_red_when_a_job_waits_in_the_queue_though_workers_say_they_consume(
    rdb: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given workers that claim to consume the queue (as after celery#10302) and a job nobody took
    assert cli_ops.oldest_wait() is None, "an empty queue has nothing waiting"
    job = enqueue_recording("room-waiting")
    waiting = cli_ops.oldest_wait(now_s=time.time() + 100)
    assert waiting is not None and waiting.job_id == job.id and 99 < waiting.wait_s < 102
    consuming = cli_ops.Workers(replied=("celery@a",), consuming=("celery@a",))
    monkeypatch.setattr(cli_ops, "workers", lambda **_: consuming)
    assert run(capsys, "health")[0] == 0, "not yet waited longer than a worker would leave it"
    # When it has waited longer than --max-queue-wait
    time.sleep(1.1)
    code, out, err = run(capsys, "health", "--max-queue-wait", "1")
    # Then health is red, naming the job and the queue
    assert code == 1 and out == ""
    assert re.match(rf"recorder: job {job.id} has waited \ds in queue 'recorder'", one_line(err))
