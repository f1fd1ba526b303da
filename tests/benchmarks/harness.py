"""Processes for ``run.py``: the sandbox API, Celery and Dramatiq workers, and their CPU time.

Every process started here is registered with a :class:`Processes` and stopped by its
``stop_all`` (SIGTERM, then SIGKILL for it and any child it left), which ``run.py`` calls in a
``finally``. Waits are bounded: each takes a deadline and raises ``RuntimeError`` past it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "bench-api-key"
SECRET = "bench-secret-long-enough-for-hs256-0123456789"
#: Celery workers start on this empty queue and are switched to the real one by remote control,
#: so every job is queued before any is taken and all workers start at the same moment.
HOLD_QUEUE = "bench-hold"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{current}/task/{tid}/children").read_text()
                    for child in text.split():
                        found.append(int(child))
                        todo.append(int(child))
    return found


def cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads).

    Their reaped children's time (cutime, cstime) is added too: with ``pids`` a whole process
    tree, a child that exits between two readings still counts, in its parent's figures.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime: fields 14 to 17 of proc(5)
            total += sum(int(f) for f in fields[11:15])
    return total / _CLK_TCK


def redis_cpu_s(db: Any) -> float:
    """CPU seconds redis-server has used (INFO cpu: user + system, all its threads).

    The whole server: other clients of the same Redis (tests running meanwhile) count too.
    """
    info = db.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Started:
    """One process we started: its Popen, log file and a name for messages."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tree(self) -> list[int]:
        if self.proc.poll() is not None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{tail}")


@dataclass
class Processes:
    """Registry of every process the benchmark started; ``stop_all`` ends them all."""

    log_dir: Path
    started: list[Started] = field(default_factory=list)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Started:
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        started = Started(name, proc, log_path)
        self.started.append(started)
        return started

    def stop(self, items: Sequence[Started], timeout_s: float = 20.0) -> None:
        """SIGTERM these processes, wait, then SIGKILL them and any child left behind."""
        trees = {id(s): s.tree() for s in items}
        for s in items:
            if s.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for s in items:
            try:
                s.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait(5)
            for pid in trees[id(s)][1:]:  # prefork children, dramatiq workers
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if s in self.started:
                self.started.remove(s)

    def stop_all(self) -> None:
        self.stop(list(reversed(self.started)), timeout_s=15.0)

    def stop_all_but(self, keep: Started) -> None:
        """Stop everything except ``keep`` (the sandbox, after a section failed)."""
        self.stop([s for s in reversed(self.started) if s is not keep], timeout_s=15.0)


class Sandbox:
    """The sandbox API in its own process (``tasks.sandbox.main``) and its control endpoints.

    ``collect_garbage=False`` turns the process's automatic garbage collection off, for a
    benchmark that judges arrival stamps: a collection of its call log paused the sandbox for up
    to 83 ms, and the calls that arrived meanwhile were stamped at once (a bunch of the
    sandbox's, not the workers'). Its memory then grows by what cycles it leaves, for as long as
    the benchmark runs.
    """

    def __init__(self, procs: Processes, *, collect_garbage: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = "import sys; from tasks.sandbox import main; sys.exit(main(sys.argv[1:]))"
        if not collect_garbage:
            code = "import gc; gc.disable(); " + code
        cmd = [sys.executable, "-c", code, "--port", str(self.port)]
        cmd += ["--api-key", API_KEY, "--secret", SECRET]
        self.started = procs.spawn("sandbox", cmd, {})
        self.http = requests.Session()

        def healthy() -> bool:
            self.started.check_alive()
            try:
                return self.http.get(f"{self.url}/_sandbox/health", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout_s=30, what="the sandbox to answer")

    def reset(self, *, latency_s: float = 0.0) -> None:
        """Forget calls and rooms, and answer start calls after ``latency_s``."""
        self.http.post(f"{self.url}/_sandbox/reset", timeout=10).raise_for_status()
        faults = {"latency_s": latency_s, "latency_jitter_s": 0.0}
        self.http.post(f"{self.url}/_sandbox/faults", json=faults, timeout=10).raise_for_status()

    def calls(self) -> list[dict[str, Any]]:
        """Start calls in arrival order (``t`` is the arrival epoch in the sandbox process)."""
        resp = self.http.get(f"{self.url}/_sandbox/calls", timeout=60)
        resp.raise_for_status()
        return [c for c in resp.json() if c["path"].endswith("/start")]

    def cpu_s(self) -> float:
        return cpu_s(self.started.tree())


def new_tag() -> str:
    return uuid.uuid4().hex[:6]


class CeleryWorkers:
    """``count`` Celery worker processes of ``app_module``, started on the hold queue."""

    def __init__(
        self,
        procs: Processes,
        app: Any,
        *,
        app_module: str,
        env: dict[str, str],
        count: int,
        extra_args: Sequence[str] = (),
        label: str = "worker",
    ) -> None:
        self.procs, self.app, self.tag = procs, app, new_tag()
        self.names = [f"{label}{i}-{self.tag}@{socket.gethostname()}" for i in range(count)]
        self.started: list[Started] = []
        for name in self.names:
            cmd = [sys.executable, "-m", "celery", "-A", app_module, "worker", "-n", name]
            cmd += ["--loglevel=INFO", "--without-mingle", "--without-gossip"]
            cmd += ["-Q", HOLD_QUEUE, *extra_args]
            self.started.append(procs.spawn(f"{label}{len(self.started)}", cmd, env))

    def check_alive(self) -> None:
        for s in self.started:
            s.check_alive()

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        def all_answer() -> bool:
            self.check_alive()
            replies = self.app.control.ping(destination=self.names, timeout=0.5)
            return {name for reply in replies for name in reply} >= set(self.names)

        wait_for(all_answer, timeout_s=timeout_s, interval_s=0.2, what="workers to answer")

    def release(self, queue: str, names: Sequence[str] | None = None) -> float:
        """Make these workers (default all) consume ``queue``; returns the epoch it was sent."""
        names = list(names or self.names)
        sent = time.time()
        replies = self.app.control.add_consumer(queue, destination=names, reply=True, timeout=5)
        if len(replies) != len(names):
            raise RuntimeError(f"add_consumer answered by {len(replies)} of {len(names)}")
        return sent

    def pids(self) -> list[int]:
        return [pid for s in self.started for pid in s.tree()]

    def stop(self) -> None:
        self.procs.stop(self.started)


class DramatiqWorkers:
    """A ``dramatiq tests.benchmarks.dramatiq_actor`` process tree (its workers fork)."""

    def __init__(self, procs: Processes, *, env: dict[str, str], args: Sequence[str]) -> None:
        self.procs = procs
        cmd = [sys.executable, "-m", "dramatiq", "tests.benchmarks.dramatiq_actor", *args]
        self.started = procs.spawn("dramatiq", cmd, env)

    def check_alive(self) -> None:
        self.started.check_alive()

    def wait_ready(self, client: Any, processes: int, timeout_s: float = 90.0) -> None:
        """Wait until every worker process has heartbeated (it fetches once it runs)."""
        from tests.benchmarks.dramatiq_actor import NAMESPACE

        def beating() -> bool:
            self.check_alive()
            return int(client.zcard(f"{NAMESPACE}:__heartbeats__")) >= processes

        wait_for(beating, timeout_s=timeout_s, interval_s=0.2, what="dramatiq workers")

    def pids(self) -> list[int]:
        return self.started.tree()

    def stop(self) -> None:
        self.procs.stop([self.started])
