"""The webhook receiver under load, and Redis memory per job with its recording state.

``make bench-webhooks``, or ``.venv/bin/python tests/benchmarks/webhooks.py [--rate 500]
[--seconds 10] [--jobs 10000] [--only load,memory]``. Needs ``redis-server`` on PATH: each part
runs on a fresh private one (its ``INFO used_memory`` is ours alone); no other Redis is touched.

- ``load``: a real ``recorder webhooks`` process (uvicorn, the key pinned with
  ``VIDEOSDK_WEBHOOK_PUBLIC_KEY``, logging at INFO to a file as shipped) and start jobs for
  ``rate x seconds / 4`` rooms. Every webhook is a real event (``recording-starting``,
  ``-started``, ``-stopping``, ``-stopped`` with a file URL, in that order per room, rooms
  interleaved), signed beforehand with RSA-2048 as VideoSDK signs, so each one is verified and
  applied (one Lua call). An open-loop generator (asyncio on uvloop, raw HTTP/1.1 over
  ``--connections`` keep-alive connections, or a new connection per webhook with
  ``--fresh-connections``) sends webhook *i* at ``t0 + i / rate`` whatever came back before;
  a webhook's latency runs from that scheduled time to the last byte of its answer, so time
  spent waiting for a free connection counts too (no coordinated omission). Printed: the achieved
  rate (answered / time from the first scheduled send to the last answer), p50/p99/max latency,
  the answers by status and outcome, and the receiver's CPU time (``/proc``) per webhook.
  ``--nice -10`` runs the receiver, its Redis and the generator at that niceness, so the other
  work of a shared machine cannot starve them (root only; say so next to the figures).
- ``memory``: ``--jobs`` start jobs stored as ``enqueue_recording`` stores them (its request
  body, without publishing), each then run as a worker records a success (attempts 1, HTTP 200,
  the API's answer), then ``recording-started`` and ``recording-stopped`` applied with a session
  id and a file URL and path as long as VideoSDK's. Printed: ``INFO used_memory`` before, after
  the jobs and after the events, divided by the number of jobs.

Targets: 500 verified webhooks/s held with p99 under 50 ms; under 1.5 KB of Redis per job with
its recording state. Figures as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script, sys.path[0] is this folder, not the project
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import uvloop  # noqa: E402

from tasks.delivery.producer import Producer  # noqa: E402
from tasks.sandbox.signing import Signer  # noqa: E402
from tasks.sandbox.webhooks import encode  # noqa: E402
from tasks.store.jobs import JobStore  # noqa: E402
from tests.benchmarks.harness import percentile  # noqa: E402

RECORDER = Path(sys.executable).with_name("recorder")
LISTENING = re.compile(rb"webhooks listening on http://([\d.]+):(\d+)(/\S+)")
PREFIX = "recorder"
TTL_S = 30 * 24 * 3600
RECORDING_EVENTS = ("recording-starting", "recording-started", "recording-stopping")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- a private Redis and the receiver ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A fresh ``redis-server`` (no persistence) on a free port; its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            client.close()
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def receiver(redis_url: str, public_pem: str, log_path: Path) -> Iterator[tuple[Any, ...]]:
    """A real ``recorder webhooks`` process: (host, port, path, its pid)."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VIDEOSDK_WEBHOOK_PUBLIC_KEY": public_pem,
        "PYTHONUNBUFFERED": "1",
    }
    out = log_path.with_suffix(".out")
    with open(out, "wb") as out_file, open(log_path, "wb") as err_file:
        proc = subprocess.Popen(
            [str(RECORDER), "webhooks", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=out_file,
            stderr=err_file,
            process_group=0,
        )
        try:
            deadline = time.monotonic() + 30
            while not (found := LISTENING.search(out.read_bytes())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"recorder webhooks did not start:\n{log_path.read_text()}")
                time.sleep(0.05)
            host, port, path = found.group(1).decode(), int(found.group(2)), found.group(3)
            yield host, port, path.decode(), proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def redis_pid(url: str) -> int:
    return int(redis.Redis.from_url(url).info("server")["process_id"])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- the webhooks ------------------------------------------------------------------------------


def room_id(rng: random.Random) -> str:
    """A room id shaped as VideoSDK's (``abcd-efgh-ijkl``)."""
    return "-".join("".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(3))


def file_of(room: str, session: str) -> dict[str, str]:
    """A file URL and path as long as VideoSDK's."""
    path = f"encoded/videos/{room}/{session}/{uuid.uuid4().hex[:24]}.mp4"
    return {"fileUrl": f"https://cdn.videosdk.live/{path}", "filePath": path}


def events_of(room: str) -> list[dict[str, Any]]:
    """The four recording webhooks of one room's recording, in order."""
    session = str(uuid.uuid4())
    events = [
        {"webhookType": kind, "data": {"meetingId": room, "sessionId": session}}
        for kind in RECORDING_EVENTS
    ]
    stopped = {"meetingId": room, "sessionId": session, **file_of(room, session)}
    events.append({"webhookType": "recording-stopped", "data": stopped})
    return events


def started_jobs(store: JobStore, rooms: list[str]) -> None:
    """A start job per room, recorded as a worker records a successful start."""
    producer = Producer(store=store, publish=lambda job_id, room_id: None)
    for room in rooms:
        job = producer.enqueue(room)  # as enqueue_recording stores it: window, kind and all
        patch = {
            "status": "succeeded",
            "http_status": 200,
            "response": "Recording started successfully",
            "error": None,
        }
        store.update(job.id, patch, count_attempt=True)


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Load:
    """Results of one run: latencies (s) from each webhook's scheduled time, and answers."""

    latency_s: list[float] = field(default_factory=list)
    scheduled_s: list[float] = field(default_factory=list)
    service_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_s: float = 0.0
    last_s: float = 0.0


def request_bytes(host: str, port: int, path: str, body: bytes, signature: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nvideosdk-signature: {signature}\r\n"
        "User-Agent: bench-webhooks\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def generate(
    target: tuple[str, int, str],
    requests_: list[bytes],
    *,
    rate: float,
    connections: int,
    fresh: bool,
) -> Load:
    """Send ``requests_`` at ``rate`` per second, open loop; see the module docstring."""
    host, port, _ = target
    load = Load()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def sender() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (item := await queue.get()) is not None:
            scheduled, raw = item
            sent = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reader, writer = conn
                writer.write(raw)
                status, body = await read_answer(reader)
                if fresh:
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError) as exc:
                load.errors[type(exc).__name__] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            done = time.perf_counter()
            load.latency_s.append(done - scheduled)
            load.scheduled_s.append(scheduled)
            load.service_s.append(done - sent)
            load.statuses[status] += 1
            if status == 200:
                load.outcomes[json.loads(body).get("outcome", "?")] += 1
            load.last_s = done
        if conn is not None:
            conn[1].close()

    senders = [asyncio.create_task(sender()) for _ in range(connections)]
    t0 = time.perf_counter() + 0.2  # uvloop's loop.time() counts whole milliseconds
    load.first_s = t0
    for i, raw in enumerate(requests_):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((at, raw))
    for _ in senders:
        queue.put_nowait(None)
    await asyncio.gather(*senders)
    return load


def by_second(load: Load) -> list[float]:
    """The p99 latency (ms) of the webhooks scheduled in each second of the run."""
    seconds: dict[int, list[float]] = {}
    for at, latency in zip(load.scheduled_s, load.latency_s, strict=True):
        seconds.setdefault(int(at - load.first_s), []).append(latency * 1000)
    return [round(percentile(seconds[k], 99), 1) for k in sorted(seconds)]


def on_uvloop(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.rate * args.seconds)
    rooms_n = max(1, total // 4)
    rng = random.Random(7)
    rooms = [room_id(rng) for _ in range(rooms_n)]
    signer = Signer()
    log(f"load: signing {total} webhooks of {rooms_n} rooms (RSA-2048)")
    per_room = [events_of(room) for room in rooms]
    ordered = [per_room[r][k] for k in range(4) for r in range(rooms_n)][:total]
    bodies = [encode(event) for event in ordered]
    signed = [(body, signer.sign(body)) for body in bodies]
    with private_redis() as url, tempfile.TemporaryDirectory() as tmp:
        db = redis.Redis.from_url(url)
        store = JobStore(client=db, prefix=PREFIX, ttl_s=TTL_S)
        log(f"load: storing {rooms_n} started jobs")
        started_jobs(store, rooms)
        with receiver(url, signer.public_key_pem, Path(tmp) / "webhooks.log") as running:
            host, port, path, pid = running
            if args.nice is not None:  # on a shared machine: not starved by the other work
                for process in (pid, os.getpid(), redis_pid(url)):
                    os.setpriority(os.PRIO_PROCESS, process, args.nice)
            raws = [request_bytes(host, port, path, body, sig) for body, sig in signed]
            # warm-up: a few forged requests (401, nothing stored) to open the code paths
            warm = [request_bytes(host, port, path, b"{}", "AAAA")] * 50
            on_uvloop(generate(running[:3], warm, rate=200, connections=4, fresh=False))
            cpu0 = cpu_s(pid)
            log(f"load: {total} webhooks at {args.rate:g}/s for {args.seconds:g}s")
            load = on_uvloop(
                generate(
                    running[:3],
                    raws,
                    rate=args.rate,
                    connections=args.connections,
                    fresh=args.fresh_connections,
                )
            )
            cpu_used = cpu_s(pid) - cpu0
            stopped = int(db.eval(COUNT_STOPPED_LUA, 0, PREFIX))
        answered = len(load.latency_s)
        elapsed = load.last_s - load.first_s
        ms = [x * 1000 for x in load.latency_s]
        service_ms = [x * 1000 for x in load.service_s]
        return {
            "sent": total,
            "answered": answered,
            "rate_target": args.rate,
            "rate_achieved": round(answered / elapsed, 1) if elapsed > 0 else None,
            "latency_ms": {
                "p50": round(percentile(ms, 50), 2),
                "p99": round(percentile(ms, 99), 2),
                "max": round(max(ms), 2) if ms else None,
            },
            "p99_ms_by_second": by_second(load),
            "service_ms": {
                "p50": round(percentile(service_ms, 50), 2),
                "p99": round(percentile(service_ms, 99), 2),
            },
            "statuses": dict(load.statuses),
            "outcomes": dict(load.outcomes),
            "errors": dict(load.errors),
            "receiver_cpu_ms_per_webhook": round(cpu_used * 1000 / max(1, answered), 3),
            "jobs_stopped": stopped,
            "connections": args.connections,
            "fresh_connections": args.fresh_connections,
            "nice": args.nice,
        }


#: counts the start jobs whose recording is ``stopped`` (a check that every webhook applied)
COUNT_STOPPED_LUA = """
local n, cursor = 0, '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. ':job:*', 'COUNT', 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    local rec = cjson.decode(redis.call('GET', key))
    if type(rec.recording) == 'table' and rec.recording.status == 'stopped' then n = n + 1 end
  end
until cursor == '0'
return n
"""


# -- memory ------------------------------------------------------------------------------------


def memory_per_job(n: int, jobs_per_room: int, *, recording: bool) -> dict[str, Any]:
    """``INFO used_memory`` growth per job on a fresh Redis: ``n`` start jobs, ``jobs_per_room``
    of each room (a room recorded again and again), each recorded as succeeded and, with
    ``recording``, then given ``recording-started`` and ``recording-stopped`` with its file
    before the room's next job is made (each event applies to the room's latest start job)."""
    rng = random.Random(11)
    rooms = [room_id(rng) for _ in range(max(1, n // jobs_per_room))]
    with private_redis() as url:
        db = redis.Redis.from_url(url)
        store = JobStore(client=db, prefix=PREFIX, ttl_s=TTL_S)
        used0 = int(db.info("memory")["used_memory"])
        for _ in range(jobs_per_room):
            for room in rooms:
                started_jobs(store, [room])
                if not recording:
                    continue
                session = str(uuid.uuid4())
                store.apply_event(room, "recording-started", session_id=session)
                file = file_of(room, session)
                store.apply_event(
                    room,
                    "recording-stopped",
                    session_id=session,
                    file_url=file["fileUrl"],
                    file_path=file["filePath"],
                )
        used1 = int(db.info("memory")["used_memory"])
        jobs = int(db.zcard(f"{PREFIX}:jobs"))
        newest: list[Any] = db.zrange(f"{PREFIX}:jobs", -1, -1)
        sample_key = f"{PREFIX}:job:{newest[0].decode()}"
        return {
            "jobs": jobs,
            "jobs_per_room": jobs_per_room,
            "recording": recording,
            "bytes_per_job": round((used1 - used0) / jobs, 1),
            "record_json_chars": len(db.get(sample_key) or b""),
            "record_memory_usage": db.memory_usage(sample_key, samples=0),
        }


def run_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for per_room in sorted({1, args.jobs_per_room}):
        for recording in (False, True):
            what = "with recordings" if recording else "succeeded, no recording"
            log(f"memory: {args.jobs} start jobs, {per_room} per room, {what}")
            runs.append(memory_per_job(args.jobs, per_room, recording=recording))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="webhooks per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--fresh-connections", action="store_true", help="one per webhook")
    parser.add_argument(
        "--nice",
        type=int,
        default=None,
        help="niceness of the receiver, its Redis and the generator (negative: root only)",
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs of the memory part")
    parser.add_argument(
        "--jobs-per-room", type=int, default=5, help="memory part: jobs of one room (also 1)"
    )
    parser.add_argument("--only", default="load,memory", help="load, memory or both")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        parser.error("redis-server is not on PATH")
    parts = {p.strip() for p in args.only.split(",")}
    figures: dict[str, Any] = {"load_average_before": os.getloadavg()[0]}
    if "load" in parts:
        load = figures["load"] = run_load(args)
        lat = load["latency_ms"]
        how = "keep-alive connections"
        if load["fresh_connections"]:
            how = "senders, a new connection per webhook"
        print(
            f"load: {load['answered']}/{load['sent']} answered at {load['rate_achieved']}/s "
            f"(target {load['rate_target']:g}/s, {load['connections']} {how}): latency p50 "
            f"{lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; answers "
            f"{load['statuses']}, outcomes {load['outcomes']}, errors {load['errors']}; "
            f"p99 by second {load['p99_ms_by_second']} ms; "
            f"receiver CPU {load['receiver_cpu_ms_per_webhook']} ms/webhook; "
            f"{load['jobs_stopped']} jobs stopped"
            + ("" if args.nice is None else f"; receiver, Redis and generator at nice {args.nice}"),
            flush=True,
        )
    if "memory" in parts:
        figures["memory"] = run_memory(args)
        for run in figures["memory"]:
            print(
                f"memory: {run['jobs']} jobs, {run['jobs_per_room']} per room, "
                f"{'stopped recording with its file' if run['recording'] else 'no recording'}: "
                f"{run['bytes_per_job']} B/job (INFO used_memory); one record "
                f"{run['record_json_chars']} chars of JSON, MEMORY USAGE "
                f"{run['record_memory_usage']} B",
                flush=True,
            )
    figures["load_average_after"] = os.getloadavg()[0]
    print(
        f"load average: {figures['load_average_before']:.2f} before, "
        f"{figures['load_average_after']:.2f} after ({os.cpu_count()} CPUs)"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
