"""Beat at scale: N schedules on ``* * * * *``, all due on the same minute.

A private ``redis-server`` (AOF on, as in production), a real ``celery -A worker beat`` with the
shipped timings (lock 25 s, max interval 5 s) holding the lock, and a standby beat that would
take the lock the moment it lapsed. The schedules are stored, then for each of ``--minutes``
minutes the script measures when the last of that minute's N jobs was created (the record's
creation time, beat's clock) relative to the minute, and when the last of their messages was on
the queue (polled every 50 ms); no worker runs, so the jobs wait queued.
At the end: beat's peak RSS (``VmHWM``), whether it kept its lock all along (the same lock token
in Redis, the standby never leading, both beats still running), and how long
``list_schedules()`` takes for all N.

Run: ``.venv/bin/python tests/benchmarks/beat_scale.py [--schedules 10000] [--minutes 2]``
(``make bench-beat``). Needs ``redis-server`` on PATH; touches no other Redis. Exits 1 when a
target is missed: every job within ``--within`` s (10) of its minute, the lock kept, RSS under
``--rss-mib`` (200), the list under 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis

import tasks
from tasks import runtime
from tasks.schedules.api import store
from tasks.schedules.firing import validated
from tests.conftest import RedisServer, base_env, reset_process, wait_for
from tests.integration.conftest import BeatProcess

LOCK_KEY = "recorder:redbeat::lock"


def rss_kib(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of ``pid`` from /proc, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def add_schedules(n: int) -> float:
    """Store ``n`` schedules on ``* * * * *`` before a minute they all share; that minute."""
    if 60 - time.time() % 60 < 25:  # not enough time to store them all first: the next one
        time.sleep(60 - time.time() % 60 + 0.5)
    minute = (int(time.time()) // 60 + 1) * 60
    schedules = store()
    started = time.perf_counter()
    for i in range(n):
        schedules.put(validated(f"s{i:05}", f"room-{i}", cron="* * * * *", options={}))
    print(f"stored {n:,} schedules in {time.perf_counter() - started:.1f} s")
    if time.time() >= minute:
        raise SystemExit("storing took past the minute they were meant to share; use fewer")
    return float(minute)


def created_between(db: redis.Redis, start: int, count: int, timeout_s: float) -> list[float]:
    """Creation times (epoch s) of the first and the last of jobs ``start`` to
    ``start + count - 1`` in creation order, once they exist."""
    end = start + count
    wait_for(lambda: db.zcard("recorder:jobs") >= end, timeout_s=timeout_s, interval_s=0.05)
    return [
        db.zrange("recorder:jobs", i, i, withscores=True)[0][1] / 1000 for i in (start, end - 1)
    ]


def all_published_at(db: redis.Redis, count: int, timeout_s: float) -> float:
    """When the queue first held ``count`` messages (no worker takes them), polled every 50 ms."""
    wait_for(lambda: db.llen("recorder") >= count, timeout_s=timeout_s, interval_s=0.05)
    return time.time()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=2)
    parser.add_argument("--within", type=float, default=10.0, help="target, s after the minute")
    parser.add_argument("--rss-mib", type=float, default=200.0, help="target peak RSS of beat")
    args = parser.parse_args()
    n = args.schedules
    workdir = Path(tempfile.mkdtemp(prefix="beat-scale-"))
    server = RedisServer(workdir).start()
    beats: list[BeatProcess] = []
    saved = dict(os.environ)
    try:
        env = base_env(server.url, "http://127.0.0.1:9")  # beat never calls the API
        os.environ.update(env)  # this process stores and lists the schedules
        reset_process()
        db = runtime.redis_conn()
        leader = BeatProcess(env, workdir / "beat-0.log").wait_for_log("beat: Acquired lock")
        standby = BeatProcess(env, workdir / "beat-1.log").wait_for_log("beat: Starting...")
        beats += [leader, standby]
        token = db.get(LOCK_KEY)
        rss_now = [0]

        def watch_rss() -> None:
            while leader.proc.poll() is None:
                rss_now[0] = max(rss_now[0], rss_kib(leader.pid, "VmRSS"))
                time.sleep(0.2)

        threading.Thread(target=watch_rss, daemon=True).start()
        minute = add_schedules(n)
        lags = []
        for round_ in range(1, args.minutes + 1):
            first_s, last_s = created_between(db, n * (round_ - 1), n, minute - time.time() + 120)
            published_s = all_published_at(db, n * round_, 120)
            lags.append(last_s - minute)
            print(
                f"minute {round_}: {n:,} jobs created, the first {first_s - minute:+.2f} s and "
                f"the last {last_s - minute:+.2f} s after the minute; all their messages on the "
                f"queue {published_s - minute:+.1f} s after it"
            )
            minute += 60
        peak_mib = rss_kib(leader.pid, "VmHWM") / 1024
        kept = (
            db.get(LOCK_KEY) == token
            and leader.proc.poll() is None
            and standby.proc.poll() is None
            and not standby.leading
            and "lost the lock" not in leader.log()
        )
        times = []
        for _ in range(3):
            started = time.perf_counter()
            listed = tasks.list_schedules()
            times.append(time.perf_counter() - started)
        assert len(listed) == n
        list_s = statistics.median(times)
        print(
            f"beat RSS peak: {peak_mib:.0f} MiB (VmHWM; sampled VmRSS max {rss_now[0] / 1024:.0f})"
        )
        print(f"beat kept its lock: {'yes' if kept else 'NO'} (same token, standby never leading)")
        print(f"list_schedules() of {n:,}: {list_s * 1000:.0f} ms (median of 3)")
        ok = max(lags) <= args.within and kept and peak_mib < args.rss_mib and list_s < 1.0
        print("targets met" if ok else "TARGET MISSED", f"(logs in {workdir})")
        return 0 if ok else 1
    finally:
        for beat in beats:
            beat.stop()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    sys.exit(main())
