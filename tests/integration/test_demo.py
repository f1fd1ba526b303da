"""``recorder demo`` as a user runs it: a subprocess that must finish and leave nothing behind.

Also ``recorder health`` against a real worker (it needs one, so it lives with the integration
tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, WorkerProcess

pytestmark = pytest.mark.integration

DEMO_TIMEOUT_S = 120


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tasks.cli", "demo", *args]


def started_pids(output: str) -> list[int]:
    """The pids the demo reports for the processes it starts (worker, redis-server)."""
    return [int(pid) for pid in re.findall(r"\bpid (\d+)", output)]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie counts as gone: it runs no code)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        demo_command(*args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


def outcome_rows(stdout: str) -> list[list[str]]:
    """The rows of the demo's outcomes table (room, status, attempts, http, error)."""
    return _table(stdout, ["room", "status"])


def recording_rows(stdout: str) -> list[list[str]]:
    """The rows of the demo's recordings table (room, recording, file)."""
    return _table(stdout, ["room", "recording"])


def _table(stdout: str, header: list[str]) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == header)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("demo:") or (line.split()[:1] == ["room"] and "recording" in line):
            break
        rows.append(line.split())
    return rows


def assert_ran_and_cleaned_up(result: subprocess.CompletedProcess[str], jobs: int) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    rows = outcome_rows(result.stdout)
    assert len(rows) == jobs
    statuses = {row[0]: row[1] for row in rows}
    assert all(row[1] in {"succeeded", "failed", "cancelled", "expired"} for row in rows)
    assert sum(row[1] == "succeeded" for row in rows) >= jobs - 4
    assert statuses["missing-room"] == "failed"
    # the host who joins late is recorded; the room nobody joins expires
    assert statuses["room-late-host"] == "succeeded"
    assert statuses["room-nobody-joins"] == "expired"
    assert next(row for row in rows if row[0] == "missing-room")[-1] == "room_not_found"
    assert f"{jobs}/{jobs} jobs finished" in result.stdout
    # every started recording was stopped, and the webhooks brought its file URL
    recordings = recording_rows(result.stdout)
    succeeded = [row[0] for row in rows if row[1] == "succeeded"]
    assert [row[0] for row in recordings] == list(dict.fromkeys(succeeded))  # a room, once
    assert all(row[1] == "stopped" and row[2].startswith("https://") for row in recordings)
    assert f"{jobs}/{jobs} done" in result.stderr, "the progress bar reached the end"
    pids = started_pids(result.stdout)
    assert pids, "the demo reports the pids it started"
    assert not [pid for pid in pids if alive(pid)], "a process started by the demo survived it"
    assert "stopped everything it started" in result.stdout


def test_demo_runs_every_job_to_an_end_and_leaves_no_process(redis_url: str) -> None:
    # Given REDIS_URL answers: the demo uses it, under its own prefix and queue
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.set("someone-else:key", "1")
    result = run_demo("--jobs", "8", env={**os.environ, "REDIS_URL": redis_url})
    assert_ran_and_cleaned_up(result, 8)
    assert "(REDIS_URL, with the demo's own prefix and queue)" in result.stdout
    # kombu's shared binding-expiry index stays, as it does for any Celery worker
    left = set(client.keys("*")) - {b"_kombu.binding_deadlines"}
    assert left == {b"someone-else:key"}, "it deleted its own keys and no others"
    client.flushdb()


def test_demo_starts_a_private_redis_server_when_redis_url_does_not_answer() -> None:
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run_demo("--jobs", "6", env=env)
    assert_ran_and_cleaned_up(result, 6)
    assert "private redis-server" in result.stdout


def test_demo_falls_back_to_fakeredis_without_redis_server_or_redis_url() -> None:
    # Given no redis-server on PATH and a REDIS_URL where nothing listens
    env = {**os.environ, "PATH": "/nonexistent", "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run_demo("--jobs", "6", env=env)
    assert_ran_and_cleaned_up(result, 6)
    assert "fakeredis in this process" in result.stdout


def test_demo_stops_everything_on_ctrl_c() -> None:
    # Given a demo far from done (many jobs, a slow rate)...
    proc = subprocess.Popen(
        demo_command("--jobs", "300", "--rate-limit", "5/s"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        # a shell started in the background ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    seen = ""
    try:
        for line in proc.stdout:
            seen += line
            if line.startswith("demo: enqueued"):
                break
        # ...when the terminal sends Ctrl-C to its process group
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Then it stops its worker and Redis and says so
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in rest and "stopped everything it started" in rest
    pids = started_pids(seen)
    assert pids
    assert not [pid for pid in pids if alive(pid)]


def test_health_exits_0_when_a_worker_replies(
    start_worker: Callable[..., WorkerProcess],
    recorder_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tasks import cli

    start_worker()
    code = cli.main(["health"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "ok: redis answers, 1 worker(s) replied\n"
    assert cli.main(["health", "--this-host"]) == 0


def test_health_this_host_ignores_workers_of_other_hosts(
    start_worker: Callable[..., WorkerProcess],
    recorder_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tasks import cli

    start_worker("-n", "celery@some-other-host")
    assert cli.main(["health"]) == 0
    capsys.readouterr()
    assert cli.main(["health", "--this-host"]) == 1
    assert "no worker celery@" in capsys.readouterr().err
