"""Shared fixtures: a real Redis (dedicated db), the sandbox API, real worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
import redis
from kombu import pools

import tasks
from tasks import runtime
from tasks.job import Job
from tasks.sandbox.server import SandboxServer
from worker.app import app
from worker.config import reconfigure

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: ``make test`` runs the suite in two pytest-xdist processes (whole files each): each gets its
#: own pair of dbs (jobs, CLI), set before any test module reads them
XDIST_DBS = {"gw0": ("11", "13"), "gw1": ("9", "10"), "gw2": ("7", "8"), "gw3": ("5", "6")}
if os.environ.get("PYTEST_XDIST_WORKER") in XDIST_DBS:
    os.environ["RECORDER_TEST_DB"], os.environ["RECORDER_CLI_TEST_DB"] = XDIST_DBS[
        os.environ["PYTEST_XDIST_WORKER"]
    ]
#: each concurrent test run (e.g. several developers on one machine) may pick its own db
TEST_DB = int(os.environ.get("RECORDER_TEST_DB", "11"))
API_KEY = "test-api-key"
#: long and distinctive, so a leak into Redis or a log is easy to find
SECRET = "s3cr3t-7f1d0c9a5be84e2f9c3a-never-log-me"


def wait_for(
    predicate: Callable[[], T], *, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout_s}s")
        time.sleep(interval_s)


def finished(job_ids: Sequence[str]) -> list[Job] | None:
    """The jobs, once every one of them has finished; None before (a ``wait_for`` predicate)."""
    jobs = [tasks.get_job(i) for i in job_ids]
    if all(j is not None and j.finished for j in jobs):
        return jobs  # type: ignore[return-value]
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_DB}"
    try:
        redis.Redis.from_url(url).ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis does not answer at {url}: start it (see README)")
    return url


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test db, flushed before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, secret=SECRET, seed=7) as server:
        yield server


def base_env(redis_url: str, api_base: str, **overrides: str) -> dict[str, str]:
    """The environment a worker or producer of the tests runs with."""
    env = {
        "REDIS_URL": redis_url,
        "VIDEOSDK_API_KEY": API_KEY,
        "VIDEOSDK_SECRET": SECRET,
        "VIDEOSDK_API_BASE": api_base,
        "RECORDER_RATE_LIMIT": "1000/s",
        "RECORDER_BACKOFF_MAX": "0.2",
        "RECORDER_READ_TIMEOUT": "2",
        "RECORDER_CONNECT_TIMEOUT": "1",
        "RECORDER_INLINE_WAIT_MAX": "3",
        "RECORDER_CONCURRENCY": "8",
    }
    env.update(overrides)
    return env


@pytest.fixture
def recorder_env(
    rdb: redis.Redis, redis_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """This process configured as a producer/worker of the test db and the sandbox."""
    env = base_env(redis_url, sandbox.url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_process()
    yield env
    reset_process()


def reset_process() -> None:
    """Read the environment again: our objects, settings and the Celery app's configuration."""
    runtime.reset()
    reconfigure(app)
    # Celery caches the producer pool its remote control (`recorder health`) publishes with,
    # bound to the first broker URL: tests that switch URLs in one process drop it (a test
    # helper only; processes of the project read their settings once)
    pools.reset()
    app.close()
    app.amqp._producer_pool = None


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 15.0
) -> int:
    """Send ``sig`` to a child still running, wait ``timeout_s``, then kill it; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)


class CeleryProcess:
    """A real ``celery -A APP KIND`` subprocess (worker, beat, flower), output to a file."""

    def __init__(
        self,
        kind: str,
        env: dict[str, str],
        log_path: Path,
        *args: str,
        app: str = "worker",
        inherited: dict[str, str] | None = None,
    ) -> None:
        """``inherited`` replaces this process's environment as the base of the child's."""
        self.log_path = log_path
        base = dict(os.environ) if inherited is None else inherited
        full_env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "celery", "-A", app, kind, *args]
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        # its own process group, so kill_group() reaches a prefork worker's children too
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, process_group=0
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> Self:
        """Wait until ``text`` appears in the output; fail if the process exits first."""

        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode}:\n{self.log()}")
            return text in self.log()

        wait_for(seen, timeout_s=timeout_s, interval_s=0.1)
        return self

    def kill_group(self, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> int:
        """Send ``sig`` to the whole process group (a prefork worker's children too) and reap
        the leader; its children, orphaned, are reaped by init."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        code = stop_process(self.proc, sig, timeout_s)
        self._log.close()
        return code


class WorkerProcess(CeleryProcess):
    """A real ``celery -A worker worker`` subprocess."""

    def __init__(
        self, env: dict[str, str], log_path: Path, *args: str, app: str = "worker"
    ) -> None:
        flags = ("--loglevel=INFO", "--without-mingle", "--without-gossip")
        super().__init__("worker", env, log_path, *flags, *args, app=app)

    def wait_ready(self, timeout_s: float = 30.0) -> WorkerProcess:
        return self.wait_for_log("ready.", timeout_s)


@pytest.fixture
def start_worker(
    recorder_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes (stopped at teardown): ``start_worker(*args, **env)``."""
    started: list[WorkerProcess] = []

    def start(*args: str, app: str = "worker", **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess({**recorder_env, **env}, log, *args, app=app)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port, to stop, kill and restart at will."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--dir", str(self.workdir), "--save", "", "--maxmemory-policy", "noeviction"]
        cmd += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):
                return False

        wait_for(answers, timeout_s=10)
        client.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def on_private_redis(
    private_redis: RedisServer, recorder_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> RedisServer:
    """This process as a producer of a private Redis (``REDIS_URL``); ask for it before
    ``start_worker``, so the workers stop before their Redis does."""
    monkeypatch.setenv("REDIS_URL", private_redis.url)
    reset_process()
    return private_redis


def max_in_any_window(times_s: Sequence[float], window_s: float = 1.0) -> int:
    """The most arrivals in any window ``[t, t + window_s)`` that starts at an arrival."""
    ordered, most, end = sorted(times_s), 0, 0
    for start, t in enumerate(ordered):
        while end < len(ordered) and ordered[end] < t + window_s:
            end += 1
        most = max(most, end - start)
    return most
