"""The measurements that are not drains: sandbox capacity, enqueue, latency, lookup, limiter."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tests.benchmarks.context import Context, _create_records, in_processes, log
from tests.benchmarks.harness import CeleryWorkers, percentile

# -- 1. sandbox capacity ----------------------------------------------------------------------


def _hammer(env: dict[str, str], port: int, seconds: float, threads: int) -> dict[str, int]:
    """In a spawned process: ``threads`` keep-alive clients POST start calls for ``seconds``."""
    os.environ.update(env)
    from tests.benchmarks.plain_celery import token

    headers = {"Authorization": token(), "Content-Type": "application/json"}
    counts: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: dict[str, int] = {}
        prefix, i = f"cap-{os.getpid()}-{n}-", 0
        while time.monotonic() < deadline:
            conn.request(
                "POST", "/v2/recordings/start", json.dumps({"roomId": f"{prefix}{i}"}), headers
            )
            resp = conn.getresponse()
            resp.read()
            mine[str(resp.status)] = mine.get(str(resp.status), 0) + 1
            i += 1
        conn.close()
        with lock:
            for status, count in mine.items():
                counts[status] = counts.get(status, 0) + count

    pool = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + 30)
    return counts


def section_capacity(ctx: Context, processes: int = 2, threads: int = 4) -> dict[str, Any]:
    """Section 1: start calls per second the sandbox answers, no latency, and its CPU per call."""
    seconds = max(1.5, 4.0 * ctx.scale)
    ctx.sandbox.reset()
    log(f"sandbox capacity: {processes} client processes x {threads} threads, {seconds:g}s")
    env = ctx.ref_env
    with get_context("spawn").Pool(processes) as pool:  # terminated on leaving the block
        # a short round first: spawned clients import their modules before the timed one
        pool.starmap_async(_hammer, [(env, ctx.sandbox.port, 0.2, 1)] * processes).get(120)
        ctx.sandbox.reset()
        cpu0, started = ctx.sandbox.cpu_s(), time.perf_counter()
        args = [(env, ctx.sandbox.port, seconds, threads)] * processes
        counts: dict[str, int] = {}
        for result in pool.starmap_async(_hammer, args).get(seconds + 120):
            for status, n in result.items():
                counts[status] = counts.get(status, 0) + n
        wall_s, cpu_used_s = time.perf_counter() - started, ctx.sandbox.cpu_s() - cpu0
    ctx.sandbox.reset()
    total = sum(counts.values())
    cpu_us = cpu_used_s / total * 1e6 if total else float("nan")
    return {
        "client_processes": processes,
        "client_threads": threads,
        "seconds": round(wall_s, 2),
        "requests": total,
        "statuses": counts,
        "requests_per_s": round(total / wall_s, 1),
        "sandbox_cpu_us_per_request": round(cpu_us, 1),
        "sandbox_one_core_bound_per_s": round(1e6 / cpu_us, 1) if total else None,
        "sandbox_cores_used": round(cpu_used_s / wall_s, 2),
    }


# -- 2. enqueue rate --------------------------------------------------------------------------


def section_enqueue(ctx: Context, rounds: int = 5) -> dict[str, Any]:
    """Section 2: enqueue_recording vs a bare ``.delay()`` (and Dramatiq's ``.send()``).

    The systems take turns in ``rounds`` rounds (order rotated), so load from other processes
    on the machine falls on all of them alike.
    """
    from tasks import enqueue_recording
    from tests.benchmarks import dramatiq_actor, plain_celery

    jobs = ctx.jobs(5000, minimum=200)
    per_round = max(1, jobs // rounds)
    ctx.flush()
    ctx.use_ours(ctx.ours_env)
    calls = {
        "ours": lambda room: enqueue_recording(room),
        "plain": lambda room: plain_celery.start_recording.delay({"roomId": room}),
        "dramatiq": lambda room: dramatiq_actor.start_recording.send({"roomId": room}),
    }
    for name, call in calls.items():  # connections, scripts, first-use imports
        for i in range(50):
            call(f"warm-{name}-{i}")
    spent = dict.fromkeys(calls, 0.0)
    log(f"enqueue: {per_round * rounds} jobs per system in {rounds} rounds")
    order = list(calls)
    for r in range(rounds):
        for name in order[r % 3 :] + order[: r % 3]:
            call = calls[name]
            started = time.perf_counter()
            for i in range(per_round):
                call(f"enq-{name}-{r}-{i}")
            spent[name] += time.perf_counter() - started
    total = per_round * rounds
    rates = {name: round(total / s, 1) for name, s in spent.items()}
    ctx.flush()
    return {
        "jobs": total,
        "per_s": rates,
        "us_per_job": {name: round(s / total * 1e6, 1) for name, s in spent.items()},
        "ours_over_plain": round(rates["ours"] / rates["plain"], 3),
        "ours_over_dramatiq": round(rates["ours"] / rates["dramatiq"], 3),
    }


# -- 5. latency -------------------------------------------------------------------------------


def section_latency(ctx: Context, rate_per_s: float = 20.0) -> dict[str, Any]:
    """Section 5: enqueue -> API call arrival at a light, paced load (ours; plain for scale)."""
    from tasks import enqueue_recording
    from tests.benchmarks import plain_celery
    from worker.app import app

    jobs = ctx.jobs(200, minimum=20)
    out: dict[str, Any] = {"jobs": jobs, "rate_per_s": rate_per_s, "rows": []}
    setups = [
        ("ours", "1 proc, threads 32 (default)", app, "worker", ctx.ours_env, (), "recorder"),
        (
            "plain",
            "1 proc, threads 32",
            plain_celery.app,
            "tests.benchmarks.plain_celery",
            ctx.ref_env,
            ("-P", "threads", "-c", "32"),
            plain_celery.QUEUE,
        ),
    ]
    for system, label, celery_app, module, env, args, queue in setups:
        ctx.flush()
        ctx.sandbox.reset()
        if system == "ours":
            ctx.use_ours(env)
        log(f"latency {system}: {jobs} jobs at {rate_per_s:g}/s")
        workers = CeleryWorkers(
            ctx.procs,
            celery_app,
            app_module=module,
            env=env,
            count=1,
            extra_args=args,
            label=f"lat-{system}",
        )
        sent: dict[str, float] = {}
        enqueue_ms: list[float] = []
        try:
            workers.wait_ready()
            workers.release(queue)
            time.sleep(0.5)  # let the consumer settle before the first job
            began = time.monotonic()
            for i in range(jobs):
                pause = began + i / rate_per_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                room = f"lat-{system}-{i}"
                t0 = time.time()
                if system == "ours":
                    enqueue_recording(room)
                else:
                    plain_celery.start_recording.delay({"roomId": room})
                sent[room] = t0
                enqueue_ms.append((time.time() - t0) * 1000)
            ctx.wait_progress(
                lambda: len(ctx.sandbox.calls()), jobs, check=workers.check_alive, what="calls"
            )
        finally:
            workers.stop()
        arrivals = {c["room_id"]: c["t"] for c in ctx.sandbox.calls()}
        lat = [(arrivals[r] - t0) * 1000 for r, t0 in sent.items() if r in arrivals]
        out["rows"].append(
            {
                "system": system,
                "setup": label,
                "arrived": len(lat),
                "p50_ms": round(percentile(lat, 50), 2),
                "p90_ms": round(percentile(lat, 90), 2),
                "p99_ms": round(percentile(lat, 99), 2),
                "max_ms": round(max(lat), 2) if lat else None,
                "enqueue_call_p50_ms": round(percentile(enqueue_ms, 50), 2),
            }
        )
    ctx.flush()
    return out


# -- 6. lookup and memory ---------------------------------------------------------------------


def section_lookup(ctx: Context, jobs_per_room: int = 5) -> dict[str, Any]:
    """Section 6: get_job / list_jobs(room_id) with 100,000 records stored, and bytes per job."""
    from tasks import get_job, list_jobs, runtime

    records = ctx.jobs(100_000, minimum=2000)
    ctx.flush()
    ctx.use_ours(ctx.ours_env)
    store = runtime.store()
    rooms = [f"look-{i // jobs_per_room}" for i in range(records)]
    random.Random(7).shuffle(rooms)
    used0 = int(ctx.ours_db.info("memory")["used_memory"])
    log(f"lookup: storing {records} records")
    create_s = in_processes(_create_records, ctx.ours_env, rooms)
    used1 = int(ctx.ours_db.info("memory")["used_memory"])
    db = ctx.ours_db
    n_ids = int(db.zcard(store.key("jobs")))
    ids = [i.decode() for i in db.zrandmember(store.key("jobs"), 2000)]
    room_ids = sorted(set(rooms))
    lookups = max(500, round(5000 * ctx.scale))
    rng = random.Random(11)
    get_us, list_us, listed = [], [], 0
    for _ in range(50):  # warm the connection and the code paths
        get_job(ids[0])
        list_jobs(room_id=room_ids[0])
    for _ in range(lookups):
        job_id, room = rng.choice(ids), rng.choice(room_ids)
        t0 = time.perf_counter_ns()
        job = get_job(job_id)
        t1 = time.perf_counter_ns()
        found = list_jobs(room_id=room)
        t2 = time.perf_counter_ns()
        assert job is not None and found
        get_us.append((t1 - t0) / 1000)
        list_us.append((t2 - t1) / 1000)
        listed += len(found)
    # memory: a sample of records, and each one's share of the indexes it is in
    sample = ids[:200]
    record = _mean([db.memory_usage(store.key("job", i), samples=0) for i in sample])
    jobs_index = (db.memory_usage(store.key("jobs"), samples=0) or 0) / n_ids
    queued = store.key("status", "queued")
    status_index = (db.memory_usage(queued, samples=0) or 0) / max(1, int(db.zcard(queued)))
    room_keys = [store.key("room", r) for r in room_ids[:200]]
    room_index = _mean(
        [(db.memory_usage(k, samples=0) or 0) / max(1, int(db.zcard(k))) for k in room_keys]
    )
    total = record + jobs_index + status_index + room_index
    raw = db.get(store.key("job", sample[0])) or b""
    ctx.flush()
    return {
        "records": n_ids,
        "rooms": len(room_ids),
        "create_s": round(create_s, 2),
        "create_per_s": round(records / create_s, 1),
        "lookups": lookups,
        "get_job_us": {
            "p50": round(percentile(get_us, 50), 1),
            "p99": round(percentile(get_us, 99), 1),
        },
        "list_jobs_room_us": {
            "p50": round(percentile(list_us, 50), 1),
            "p99": round(percentile(list_us, 99), 1),
            "jobs_per_call": round(listed / lookups, 2),
        },
        "bytes_per_job": {
            "record": round(record, 1),
            "record_json_chars": len(raw),
            "jobs_index_entry": round(jobs_index, 1),
            "status_index_entry": round(status_index, 1),
            "room_index_share": round(room_index, 1),
            "total_memory_usage": round(total, 1),
            "used_memory_delta": round((used1 - used0) / records, 1),
        },
    }


def _mean(values: Sequence[float | int | None]) -> float:
    got = [float(v) for v in values if v is not None]
    return sum(got) / len(got) if got else float("nan")


# -- 7. limiter -------------------------------------------------------------------------------


def section_limiter(ctx: Context) -> dict[str, Any]:
    """Section 7: the colleague's ``tests/benchmarks/limiter.py`` if importable, else our own.

    It runs its own in-process sandbox and its own workers on our reference db (flushed before
    and after); it changes this process's environment, which is restored afterwards.
    """
    seconds = max(1.0, 5.0 * ctx.scale)
    ctx.flush()
    saved = dict(os.environ)
    try:
        try:
            from tests.benchmarks import limiter
        except ImportError as exc:
            log(f"limiter: tests/benchmarks/limiter.py not importable ({exc}); own version")
            return _own_limiter(ctx, seconds)
        log(f"limiter: tests/benchmarks/limiter.py, {seconds:g}s per limit")
        with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
            out = Path(tmp) / "limiter.json"
            argv = ["--out", str(out), "--redis-url", ctx.ref_url, "--seconds", f"{seconds:g}"]
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = limiter.main(argv)
            if not out.exists():
                raise RuntimeError(f"limiter.py wrote nothing (exit {code}):\n{printed.getvalue()}")
            report = json.loads(out.read_text())
        return {"source": "tests/benchmarks/limiter.py", "exit": code, "report": report}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        ctx.use_ours(ctx.ours_env)
        ctx.flush()


def _own_limiter(ctx: Context, seconds: float, threads: int = 16) -> dict[str, Any]:
    """A simple version: threads take slots from the real limiter; slot times are judged."""
    from tasks.store.ratelimit import RedisRateLimiter

    rows = []
    for limit in (5.0, 50.0, 500.0):
        ctx.flush()
        limiter = RedisRateLimiter(client=ctx.ours_db, rate_per_s=limit, prefix="bench-own")
        stamps: list[float] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def take(
            lim: RedisRateLimiter = limiter,
            until: float = deadline,
            out: list[float] = stamps,
            guard: threading.Lock = lock,
        ) -> None:
            while time.monotonic() < until:
                admission = lim.acquire(max_wait_s=3.0)
                if admission.reserved:
                    time.sleep(admission.wait_s)
                    with guard:
                        out.append(time.time())
                else:
                    time.sleep(min(admission.wait_s, 0.5))

        pool = [threading.Thread(target=take) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(seconds + 10)
        stamps.sort()
        most, end = 0, 0
        for start, stamp in enumerate(stamps):
            while end < len(stamps) and stamps[end] < stamp + 1.0:
                end += 1
            most = max(most, end - start)
        span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
        rows.append(
            {
                "limit_per_s": limit,
                "calls": len(stamps),
                "max_1s_over_limit": round(most / limit, 3),
                "mean_over_limit": round((len(stamps) - 1) / span / limit, 3),
            }
        )
    ctx.flush()
    return {"source": "own (in-process threads on RedisRateLimiter)", "report": {"runs": rows}}
