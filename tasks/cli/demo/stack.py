"""The demo's stack: the Redis it uses, the worker process, the environment, and their cleanup.

Every ``start_*`` function registers what undoes it on the ``contextlib.ExitStack`` it is given,
so closing the stack stops each process it started (SIGTERM to its process group, then SIGKILL)
and puts the environment back. Which Redis, first that works (:func:`choose_redis`):

1. ``--redis-url``, as given;
2. ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) if it answers;
3. a private ``redis-server`` on a free loopback port, without persistence, if it is on PATH;
4. fakeredis's TCP server, in this process.

On a shared Redis (1 or 2) the demo's keys and queue are named after its own prefix and
:func:`delete_keys` removes them at the end.
"""

from __future__ import annotations

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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import redis

from tasks import runtime
from tasks.cli import format as fmt
from tasks.settings import DEFAULT_REDIS_URL
from worker.app import app
from worker.config import reconfigure
from worker.publish import BROKER_ERRORS, delete_queue

#: the checkout (tasks/cli/demo/stack.py is three levels down): the worker runs there.
PROJECT_ROOT = Path(__file__).resolve().parents[3]
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(stack: contextlib.ExitStack, binary: str) -> str:
    """A private redis-server on a free loopback port; stopped when ``stack`` closes."""
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="recorder-demo-redis-"))
    for _ in range(3):  # the port may be taken between finding it free and binding it
        port = free_port()
        command = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", workdir,
        ]  # fmt: skip
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
        from fakeredis import TcpFakeServer  # local: optional, the [demo] extra
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


def delete_keys(url: str, prefix: str) -> None:
    """Delete the demo's keys (``prefix:*``) and its queue from a shared Redis."""
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


# -- the worker ----------------------------------------------------------------------------------


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


def tail(log: IO[bytes], lines: int = 15) -> str:
    """The last ``lines`` lines of the worker's output."""
    log.seek(0)
    text = log.read().decode(errors="replace").rstrip().splitlines()
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
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
