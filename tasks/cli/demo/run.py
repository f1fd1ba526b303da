"""``recorder demo``: the whole pipeline on this machine, leaving no process behind.

It starts a Redis, the sandbox API (with some 5xx and latency) and one real Celery worker, enqueues
a batch of jobs (one to a missing room, one duplicate room, one scheduled a little later), shows a
progress bar, then the outcome of every job, and stops everything it started, also on Ctrl-C or
SIGTERM. Exit status 0 when every job reached a final state, 1 otherwise.

Which Redis, first that works:
1. ``--redis-url``, as given;
2. ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) if it answers;
3. a private ``redis-server`` on a free loopback port, without persistence, if it is on PATH;
4. fakeredis's TCP server, in this process.
The demo's job records and its Celery queue are named after a per-run prefix
(``RECORDER_KEY_PREFIX``, ``RECORDER_QUEUE``), so it never touches real workers' jobs or messages
on a shared Redis; its keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import redis

from tasks import runtime
from tasks.api import enqueue_recording, get_job
from tasks.cli import format as fmt
from tasks.errors import ConfigurationError
from tasks.job import Job, Status
from tasks.sandbox.server import Faults, SandboxServer
from tasks.settings import DEFAULT_REDIS_URL, parse_rate
from worker.app import app
from worker.config import reconfigure
from worker.publish import BROKER_ERRORS, delete_queue

PROJECT_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "demo-key"
SECRET = "demo-secret"
POLL_S = 0.2
#: no job picked up this long after the worker started: it is not consuming, give up.
STALL_S = 30.0
WORKER_STOP_S = 10.0
REDIS_START_S = 5.0


class DemoFailed(Exception):
    """Raised when the demo cannot go on (no Redis, the worker died or consumes nothing)."""


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


# -- Redis ---------------------------------------------------------------------------------------


def _answers(url: str, timeout_s: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(stack: contextlib.ExitStack, binary: str) -> str:
    """A private redis-server on a free loopback port; stopped when ``stack`` closes."""
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="recorder-demo-redis-"))
    for _ in range(3):  # the port may be taken between finding it free and binding it
        port = _free_port()
        command = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            workdir,
        ]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(stop_process, proc, "redis-server", 5.0)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + REDIS_START_S
        while proc.poll() is None and time.monotonic() < deadline:
            if _answers(url, 0.2):
                say(f"redis     private redis-server (pid {proc.pid}) at {url}")
                return url
            time.sleep(0.05)
    raise DemoFailed("redis-server is on PATH but did not start")


def start_fakeredis(stack: contextlib.ExitStack) -> str:
    """fakeredis's TCP server in a thread of this process; stopped when ``stack`` closes."""
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise DemoFailed(
            "no Redis: pass --redis-url, put redis-server on PATH, or install the demo extra "
            "(pip install 'videosdk-recorder[demo]') for fakeredis"
        ) from None
    server = TcpFakeServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    stack.callback(stop)
    url = f"redis://127.0.0.1:{server.server_address[1]}/0"
    _preload_scripts(url)
    say(f"redis     fakeredis in this process at {url} (no redis-server on PATH)")
    return url


def _preload_scripts(url: str) -> None:
    """Load every Lua script of ours (the ``*_LUA`` constants) before anyone calls EVALSHA.

    fakeredis's TCP server answers NOSCRIPT and then drops the connection, so redis-py's usual
    fallback (SCRIPT LOAD, EVALSHA again) fails with "Connection closed by server"; a worker
    would then ack a delivery it never ran, leaving its job ``queued``.
    """
    client = redis.Redis.from_url(url)
    try:
        for module in list(sys.modules.values()):
            if not getattr(module, "__name__", "").startswith(("tasks.", "worker.")):
                continue
            for name, value in vars(module).items():
                if name.endswith("_LUA") and isinstance(value, str):
                    client.script_load(value)
    finally:
        client.close()


def choose_redis(stack: contextlib.ExitStack, explicit_url: str | None) -> tuple[str, bool]:
    """The Redis URL to use, and whether it is shared (so our keys must be deleted after)."""
    if explicit_url:
        if not _answers(explicit_url):
            raise DemoFailed(f"--redis-url {fmt.redact(explicit_url)} does not answer")
        say(f"redis     {fmt.redact(explicit_url)} (as given)")
        return explicit_url, True
    # REDIS_URL's server first, as given: the demo's own key prefix and queue keep it apart from
    # any real workers there, and its keys are deleted afterwards
    shared = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if _answers(shared):
        say(f"redis     {fmt.redact(shared)} (REDIS_URL, with the demo's own prefix and queue)")
        return shared, True
    binary = shutil.which("redis-server")
    if binary:
        return start_redis_server(stack, binary), False
    return start_fakeredis(stack), False


# -- processes -----------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], name: str, wait_s: float) -> None:
    """SIGTERM the process's group, wait up to ``wait_s``, then SIGKILL it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        say(f"{name} (pid {proc.pid}) did not stop within {wait_s:g}s: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the leader left behind in its group


def start_worker(
    stack: contextlib.ExitStack, env: dict[str, str], *, concurrency: int, run_id: str
) -> tuple[subprocess.Popen[Any], IO[bytes]]:
    """A real ``celery -A worker worker`` in its own process group; its output goes to a file."""
    log = stack.enter_context(tempfile.TemporaryFile(prefix="recorder-demo-worker-"))  # noqa: SIM115
    command = [
        sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=WARNING",
        "-c", str(concurrency), "-n", f"recorder-demo-{run_id}@%h",
        # no waiting for, or syncing with, other workers that may share the broker
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    stack.callback(stop_process, proc, "worker", WORKER_STOP_S)
    return proc, log


def _tail(log: IO[bytes], lines: int = 15) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace").rstrip().splitlines()
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while cleaning up, so a second Ctrl-C cannot leak a process."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ for the duration, rebuilding the runtime (and Celery app)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    runtime.reset()
    reconfigure(app)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        runtime.reset()
        reconfigure(app)


# -- the batch -----------------------------------------------------------------------------------


def plan(count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` jobs as (room, options), with a missing room, a duplicate and a scheduled one."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    specials: list[tuple[str, dict[str, Any]]] = [
        ("missing-room", {}),  # the sandbox answers 404
        ("room-01", {}),  # a second start for room-01: refused as already recording
        ("room-scheduled", {"run_at": datetime.now(UTC) + timedelta(seconds=2)}),
    ]
    plain = max(count - len(specials), min(count, 1))
    for i in range(1, plain + 1):
        options: dict[str, Any] = {}
        if i % 4 == 0:
            options["config"] = {"layout": {"type": "GRID"}, "quality": "high"}
        if i % 5 == 0:
            options["transcription"] = {"enabled": True}
        jobs.append((f"room-{i:02d}", options))
    return jobs + specials[: count - len(jobs)]


def wait_until_finished(
    ids: list[str], *, timeout_s: float, worker: subprocess.Popen[Any], log: IO[bytes]
) -> list[Job]:
    """Poll the jobs until all are finished or ``timeout_s`` passes; draw a progress bar."""
    tty = sys.stderr.isatty()
    start = time.monotonic()
    shown = ""
    while True:
        jobs = [job for job in map(get_job, ids) if job is not None]
        done = sum(job.finished for job in jobs)
        statuses = Counter(job.status.value for job in jobs if not job.finished)
        busy = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        line = fmt.progress_bar(done, len(ids)) + (f"  ({busy})" if busy else "")
        if line != shown:
            print(("\r" + line.ljust(len(shown))) if tty else line, end="" if tty else "\n",
                  file=sys.stderr, flush=True)  # fmt: skip
            shown = line
        elapsed_s = time.monotonic() - start
        if done == len(ids) or elapsed_s >= timeout_s:
            break
        if worker.poll() is not None:
            raise DemoFailed(f"the worker exited with status {worker.returncode}:\n{_tail(log)}")
        if elapsed_s > STALL_S and all(j.status is Status.QUEUED and not j.attempts for j in jobs):
            raise DemoFailed(
                f"no job was picked up within {STALL_S:g}s: the worker does not consume from this "
                f"Redis (the fakeredis fallback may not carry Celery's transport; put "
                f"redis-server on PATH or pass --redis-url). Worker output:\n{_tail(log)}"
            )
        time.sleep(POLL_S)
    if tty:
        print(file=sys.stderr)
    return jobs


def summary(jobs: list[Job], total: int, elapsed_s: float, calls: list[dict[str, Any]]) -> str:
    outcomes = Counter(job.status.value for job in jobs)
    parts = ", ".join(f"{n} {status}" for status, n in outcomes.most_common())
    answered = Counter(call.get("status") for call in calls)
    errors = sum(n for status, n in answered.items() if isinstance(status, int) and status >= 500)
    finished = sum(job.finished for job in jobs)
    return (
        f"{finished}/{total} jobs finished in {elapsed_s:.1f}s: {parts}; "
        f"{len(calls)} API calls, {errors} answered 5xx"
    )


# -- main ----------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = fmt.Parser(
        prog="recorder demo",
        description="Run Redis, the sandbox API and a real worker on this machine, push a batch "
        "of jobs through them, show what became of each, then stop everything.",
    )
    add = parser.add_argument
    add("--jobs", type=int, default=20, metavar="N", help="jobs to enqueue (default 20)")
    add("--timeout", type=float, default=60.0, metavar="S", help="longest wait (default 60)")
    add("--redis-url", metavar="URL", help="use this Redis (default: REDIS_URL if it answers)")
    add("--error-rate", type=float, default=0.15, metavar="F", help="sandbox 5xx share (0.15)")
    add("--rate-limit", default="20/s", metavar="N/s", help="RECORDER_RATE_LIMIT (20/s)")
    add("--concurrency", type=int, default=8, metavar="N", help="worker threads (8)")
    add("--seed", type=int, default=None, metavar="N", help="make the sandbox repeatable")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.timeout <= 0 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be at least 1, --timeout more than 0")
    try:
        parse_rate(args.rate_limit)
    except ConfigurationError:
        parser.error(f"--rate-limit must look like N/s, N/m or N/h, got {args.rate_limit!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    args = _parse(argv)
    run_id = uuid.uuid4().hex[:8]
    stack = contextlib.ExitStack()
    main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return _run(args, run_id, stack)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        say("interrupted: stopping everything")
        return 130
    except DemoFailed as exc:
        print(f"recorder demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        with _signals_deferred():
            stack.close()
        say("stopped everything it started")
        if main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _run(args: argparse.Namespace, run_id: str, stack: contextlib.ExitStack) -> int:
    url, shared = choose_redis(stack, args.redis_url)
    prefix = f"recorder-demo-{run_id}"
    if shared:
        stack.callback(_delete_keys, url, prefix)
    sandbox = SandboxServer(
        api_key=API_KEY,
        secret=SECRET,
        faults=Faults(latency_s=0.05, latency_jitter_s=0.1, error_rate=args.error_rate),
        seed=args.seed,
    ).start()
    stack.callback(sandbox.stop)
    say(f"sandbox   {sandbox.url} ({args.error_rate:.0%} answered 5xx, 50-150 ms latency)")
    env = {
        "REDIS_URL": url,
        "VIDEOSDK_API_KEY": API_KEY,
        "VIDEOSDK_SECRET": SECRET,
        "VIDEOSDK_API_BASE": sandbox.url,
        "RECORDER_RATE_LIMIT": args.rate_limit,
        "RECORDER_BACKOFF_MAX": "2",
        "RECORDER_INLINE_WAIT_MAX": "3",
        "RECORDER_KEY_PREFIX": prefix,
        "RECORDER_QUEUE": prefix,
        "RECORDER_POOL": "threads",
    }
    stack.enter_context(_environment(env))
    worker, log = start_worker(stack, env, concurrency=args.concurrency, run_id=run_id)
    say(f"worker    pid {worker.pid}, {args.concurrency} threads, rate limit {args.rate_limit}")

    started = time.monotonic()
    batch = plan(args.jobs)
    ids = [enqueue_recording(room, **options).id for room, options in batch]
    say(f"enqueued  {len(ids)} jobs: {_describe(batch)}")
    jobs = wait_until_finished(ids, timeout_s=args.timeout, worker=worker, log=log)
    elapsed_s = time.monotonic() - started
    print(fmt.outcomes_table(jobs), flush=True)
    say(summary(jobs, len(ids), elapsed_s, sandbox.calls()))
    if len(jobs) < len(ids) or not all(job.finished for job in jobs):
        print(f"recorder demo: not every job finished within {args.timeout:g}s", file=sys.stderr)
        return 1
    return 0


def _describe(batch: list[tuple[str, dict[str, Any]]]) -> str:
    notes: list[str] = []
    rooms = [room for room, _ in batch]
    if "missing-room" in rooms:
        notes.append("missing-room gets a 404")
    if rooms.count("room-01") > 1:
        notes.append("room-01 is started twice")
    if "room-scheduled" in rooms:
        notes.append("room-scheduled runs 2 s later")
    return "; ".join(notes) or "plain rooms"


def _delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        # the demo's queue is named after the prefix too: kombu deletes it and its bindings
        delete_queue(prefix, broker_url=url)
    except (redis.RedisError, *BROKER_ERRORS) as exc:
        say(f"could not delete the demo's keys ({prefix}:*): {exc}")
    finally:
        client.close()
