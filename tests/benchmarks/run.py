"""``make bench``: our pipeline next to plain Celery and Dramatiq, on one Redis and one sandbox.

Sections (``--only a,b``; all by default, in this order):

- ``capacity``     the sandbox API's own capacity (it runs as its own process), no latency
- ``enqueue``      ``enqueue_recording`` vs a bare ``.delay()`` of a minimal task (target >= 0.5)
- ``drain``        5,000 jobs: ours vs a plain Celery task vs a Dramatiq actor that only POST,
                   prefork and thread pools, two processes each, five rounds taking turns;
                   CPU per job of the workers (with their children) and Redis together
                   (target <= 1.5x plain); throughput ratio for information, no target
- ``api_latency``  a 250 ms API, one worker with each system's defaults, our rate limit
                   100/s (ours: >= 95 jobs/s)
- ``latency``      enqueue -> API call arrival at 20 jobs/s, p50/p99
- ``lookup``       get_job / list_jobs(room_id) with 100,000 records; bytes per job (< 1.5 KB)
- ``limiter``      max-in-any-1s and mean over the limit at 5, 50, 500/s (via limiter.py)
- ``scale``        50,000 jobs, none lost; one worker process, then two

``--scale 0.1`` shrinks every size for a quick run. Uses Redis dbs 3 (ours) and 4 (plain
Celery, Dramatiq, the limiter benchmark), refuses them if not empty (``--force`` flushes),
flushes them before, between and after runs; every process started is stopped, also on Ctrl-C.
The table goes to stdout, progress to stderr, the figures as JSON to ``--out``.

Run: ``.venv/bin/python tests/benchmarks/run.py [--only drain,scale] [--scale 0.1]``

``make bench`` then runs ``herd.py`` (``make herd``): N jobs due at one instant, on private
Redis servers of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script, sys.path[0] is this folder, not the project
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.benchmarks.context import Context, log  # noqa: E402
from tests.benchmarks.harness import Processes, Sandbox  # noqa: E402
from tests.benchmarks.report import render  # noqa: E402

SECTIONS = ("capacity", "enqueue", "drain", "api_latency", "latency", "lookup", "limiter", "scale")
REDIS = "redis://127.0.0.1:6379"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu": model,
        "platform": platform.platform(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def versions(db: redis.Redis) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("celery", "kombu", "redis", "dramatiq", "requests"):
        try:
            found[dist if dist != "redis" else "redis-py"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "-"
    found["redis-server"] = str(db.info("server").get("redis_version", "?"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--ours-db", type=int, default=3)
    parser.add_argument("--ref-db", type=int, default=4)
    parser.add_argument("--force", action="store_true", help="flush the dbs even if not empty")
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of ours for this run, e.g. RECORDER_TASK_EVENTS=0",
    )
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown or not 0 < args.scale <= 10:
        parser.error(f"unknown sections {unknown}" if unknown else "--scale must be in (0, 10]")

    ours_url, ref_url = f"{REDIS}/{args.ours_db}", f"{REDIS}/{args.ref_db}"
    ours_db, ref_db = redis.Redis.from_url(ours_url), redis.Redis.from_url(ref_url)
    for url, db in ((ours_url, ours_db), (ref_url, ref_db)):
        db.ping()
        if db.dbsize() and not args.force:
            print(f"{url} is not empty: pick other dbs (--ours-db/--ref-db) or --force")
            return 2
    # SIGTERM ends the run as Ctrl-C does: through the finally below, which stops everything
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored

    began, when = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report: dict[str, Any] = {
        "benchmark": "run",
        "when": when,
        "scale": args.scale,
        "machine": machine(),
        "versions": versions(ours_db),
        "sections": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        procs = Processes(Path(tmp))
        try:
            ours_db.flushdb()
            ref_db.flushdb()
            sandbox = Sandbox(procs)
            extra = dict(item.split("=", 1) for item in args.ours_env)
            ctx = Context(procs, sandbox, args.scale, ours_url, ref_url, ours_db, ref_db, extra)
            # this process is a producer of both: settings are read from the environment once
            os.environ.update({**ctx.ours_env, **ctx.ref_env})
            ctx.use_ours(ctx.ours_env)
            runners = _runners()
            for name in SECTIONS:
                if name not in wanted:
                    continue
                started = time.monotonic()
                log(f"== {name}")
                try:
                    report["sections"][name] = runners[name](ctx)
                except (RuntimeError, AssertionError, redis.RedisError, OSError) as exc:
                    # one section failing must not cost the others' figures
                    log(f"{name} FAILED: {exc}")
                    report["errors"][name] = f"{type(exc).__name__}: {exc}"
                    procs.stop_all_but(sandbox.started)
                    ctx.flush()
                report["sections"].setdefault(name, {})["elapsed_s"] = round(
                    time.monotonic() - started, 1
                )
        except KeyboardInterrupt:
            log("interrupted: stopping every process started")
            report["errors"]["interrupted"] = "KeyboardInterrupt"
        finally:
            # a second Ctrl-C must not cut the clean-up short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            procs.stop_all()
            ours_db.flushdb()
            ref_db.flushdb()
    report["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["total_s"] = round(time.monotonic() - began, 1)
    print(render(report))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {args.out}")
    return 1 if report["errors"] else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _runners() -> dict[str, Callable[[Context], dict[str, Any]]]:
    from tests.benchmarks import drain, sections

    return {
        "capacity": sections.section_capacity,
        "enqueue": sections.section_enqueue,
        "drain": drain.section_drain,
        "api_latency": drain.section_api_latency,
        "latency": sections.section_latency,
        "lookup": sections.section_lookup,
        "limiter": sections.section_limiter,
        "scale": drain.section_scale,
    }


if __name__ == "__main__":
    sys.exit(main())
