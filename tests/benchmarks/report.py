"""The printed table of ``run.py``: one block per section, ratios and targets at the end of each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ENQUEUE_MIN = 0.5
#: CPU per job in the drains (workers + Redis), ours over plain Celery: at most this
CPU_MAX = 1.5
API_LATENCY_MIN_PER_S = 95.0
BYTES_PER_JOB_MAX = 1536


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        columns = zip(values, widths, numeric, strict=True)
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in columns]
        return indent + "  ".join(out).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    out = [
        f"videosdk-recorder benchmarks - {report['when']} - scale {report['scale']:g}",
        f"machine: nproc {m['nproc']} ({m['cpu']}), load avg {m['loadavg_before'][0]:.2f} before, "
        f"{m.get('loadavg_after', [float('nan')])[0]:.2f} after, total {report.get('total_s')} s",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    blocks = {
        "capacity": _capacity,
        "enqueue": _enqueue,
        "drain": _drain,
        "api_latency": _api_latency,
        "latency": _latency,
        "lookup": _lookup,
        "limiter": _limiter,
        "scale": _scale,
    }
    for name, block in blocks.items():
        section = report["sections"].get(name)
        if section is None:
            continue
        out.append("")
        if name in report["errors"]:
            out.append(f"{name}: FAILED - {report['errors'][name]}")
            continue
        out.append(block(section) + _headroom(name, report) + f"\n  ({section['elapsed_s']} s)")
    if "interrupted" in report["errors"]:
        out.append("\nINTERRUPTED: figures above are partial")
    return "\n".join(out)


def _headroom(name: str, report: dict[str, Any]) -> str:
    """After the drains: the fastest one as a share of the sandbox's measured capacity."""
    capacity = report["sections"].get("capacity", {}).get("requests_per_s")
    drain = report["sections"].get("drain", {})
    if name != "drain" or not capacity or "pools" not in drain:
        return ""
    fastest = max(r["jobs_per_s"] for p in drain["pools"].values() for r in p["rows"])
    return (
        f"\n  sandbox headroom: the fastest drain ({fastest:,.0f}/s) is "
        f"{fastest / capacity:.0%} of the sandbox's measured capacity ({capacity:,.0f}/s)"
    )


def _capacity(s: dict[str, Any]) -> str:
    return (
        f"1. Sandbox capacity (its own process, no latency; {s['client_processes']} client "
        f"processes x {s['client_threads']} keep-alive threads)\n"
        f"  {s['requests']:,} start calls in {s['seconds']} s = {s['requests_per_s']:,.0f}/s "
        f"(statuses {s['statuses']}); sandbox CPU {s['sandbox_cpu_us_per_request']:.0f} us per "
        f"call, so at most ~{s['sandbox_one_core_bound_per_s']:,.0f}/s on one core; "
        f"{s['sandbox_cores_used']} cores used"
    )


def _enqueue(s: dict[str, Any]) -> str:
    names = {
        "ours": "ours: tasks.enqueue_recording",
        "plain": "plain Celery: task.delay(body)",
        "dramatiq": "Dramatiq: actor.send(body)",
    }
    rows = [[names[k], s["per_s"][k], s["us_per_job"][k]] for k in names]
    ratio = s["ours_over_plain"]
    return (
        f"2. Enqueue rate ({s['jobs']:,} jobs each, interleaved rounds, one producer thread)\n"
        + table(["producer", "jobs/s", "us/job"], rows)
        + f"\n  ours / plain Celery = {ratio:.2f}  (target >= {ENQUEUE_MIN})  "
        + verdict(ratio >= ENQUEUE_MIN)
        + f";  ours / Dramatiq = {s['ours_over_dramatiq']:.2f}"
    )


def _drain_rows(rows: Sequence[dict[str, Any]], pool: str = "") -> list[list[Any]]:
    return [
        [
            f"{pool} #{r['round']}" if "round" in r else pool,
            r["system"],
            r["setup"],
            r["jobs"],
            r["jobs_per_s"],
            r["drain_s"],
            r["lag_ms"],
            r["worker_cpu_ms_per_job"],
            r.get("redis_cpu_ms_per_job"),
            r.get("cpu_ms_per_job"),
            r["sandbox_cpu_ms_per_job"],
            "ok" if not r["problems"] else "; ".join(r["problems"]),
        ]
        for r in rows
    ]


DRAIN_HEAD = [
    "pool",
    "system",
    "workers",
    "jobs",
    "jobs/s",
    "drain_s",
    "lag_ms",
    "worker_ms/job",
    "redis_ms/job",
    "cpu_ms/job",
    "sandbox_ms/job",
    "check",
]


def _drain(s: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    ratios = []
    for pool, block in s["pools"].items():
        rows += _drain_rows(block["rows"], pool)
        ratios.append(_drain_ratios(pool, block))
    return (
        f"3. Drain ({s['jobs']:,} jobs queued first, then the workers released, "
        f"{s.get('rounds', 1)} rounds taking turns; no API latency; our rate limit 100000/s)\n"
        "  jobs/s = jobs / (first API call -> last answer); lag = release -> first call\n"
        "  CPU per job, user+sys from just before the release to the last job done: worker = "
        "each worker process and its descendants (/proc), redis = redis-server (INFO cpu, the "
        "whole server), cpu = worker + redis (the figure compared); the sandbox's apart, not "
        "counted; the producer not counted (jobs queued before)\n"
        "  a ratio: the median of the rounds' ratios (each round's drains ran next to each "
        "other), then the figure over all rounds together\n"
        + table(DRAIN_HEAD, rows)
        + "\n"
        + "\n".join(ratios)
    )


def _drain_ratios(pool: str, block: dict[str, Any]) -> str:
    def rounds(key: str) -> str:
        return ", ".join(f"{x:.2f}" for x in block.get(key, []))

    cpu = block["cpu_ours_over_plain"]
    rate = block["ours_over_plain"]
    per_job = block["cpu_ms_per_job"]
    return (
        f"  {pool}: CPU per job ours / plain Celery = {cpu:.2f} "
        f"({per_job['ours']:.3f} / {per_job['plain']:.3f} ms over all rounds; median of rounds "
        f"{rounds('rounds_cpu_ours_over_plain')}; all jobs "
        f"{block['all_jobs_cpu_ours_over_plain']:.2f}; target <= {CPU_MAX}) "
        f"{verdict(cpu <= CPU_MAX)};  ours / Dramatiq = {block['cpu_ours_over_dramatiq']:.2f}\n"
        f"  {' ' * len(pool)}  throughput ours / plain Celery = {rate:.2f} (median of rounds "
        f"{rounds('rounds_ours_over_plain')}; all jobs "
        f"{block['all_jobs_ours_over_plain']:.2f}; for information, no longer a target)"
        f";  ours / Dramatiq = {block['ours_over_dramatiq']:.2f}"
    )


def _api_latency(s: dict[str, Any]) -> str:
    rows = _drain_rows(s["rows"])
    for row, r in zip(rows, s["rows"], strict=True):
        row[0] = r["sustained_per_s"]
    head = ["sustained/s", *DRAIN_HEAD[1:]]
    ours = next(r for r in s["rows"] if r["system"] == "ours")
    ok = (ours["sustained_per_s"] or 0) >= API_LATENCY_MIN_PER_S
    plain = next(r for r in s["rows"] if r["system"] == "plain")
    dramatiq = next(r for r in s["rows"] if r["system"] == "dramatiq")
    return (
        f"4. Realistic API latency ({s['latency_ms']:g} ms per call; our rate limit "
        f"{s['rate_limit']}; one worker process, each system's documented defaults)\n"
        + table(head, rows)
        + f"\n  ours sustained {ours['sustained_per_s']}/s (target >= {API_LATENCY_MIN_PER_S:g}) "
        f"{verdict(ok)};  ours / plain prefork = {ours['jobs_per_s'] / plain['jobs_per_s']:.1f}x"
        f";  ours / Dramatiq = {ours['jobs_per_s'] / dramatiq['jobs_per_s']:.2f}"
    )


def _latency(s: dict[str, Any]) -> str:
    rows = [
        [
            r["system"],
            r["setup"],
            r["arrived"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["max_ms"],
            r["enqueue_call_p50_ms"],
        ]
        for r in s["rows"]
    ]
    return (
        f"5. Latency enqueue -> API call arrival ({s['jobs']} jobs at {s['rate_per_s']:g}/s, "
        "no API latency)\n"
        + table(
            [
                "system",
                "workers",
                "arrived",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "max_ms",
                "enqueue_p50_ms",
            ],
            rows,
        )
    )


def _lookup(s: dict[str, Any]) -> str:
    b = s["bytes_per_job"]
    ok = b["total_memory_usage"] < BYTES_PER_JOB_MAX and b["used_memory_delta"] < BYTES_PER_JOB_MAX
    rows = [
        ["get_job(id)", s["get_job_us"]["p50"], s["get_job_us"]["p99"], 1],
        [
            "list_jobs(room_id=...)",
            s["list_jobs_room_us"]["p50"],
            s["list_jobs_room_us"]["p99"],
            s["list_jobs_room_us"]["jobs_per_call"],
        ],
    ]
    return (
        f"6. Lookup with {s['records']:,} job records stored ({s['rooms']:,} rooms; "
        f"{s['lookups']:,} random lookups each; records stored at {s['create_per_s']:,.0f}/s)\n"
        + table(["call", "p50_us", "p99_us", "jobs/call"], rows)
        + f"\n  bytes per job: record {b['record']:.0f} (JSON {b['record_json_chars']} chars) + "
        f"jobs index {b['jobs_index_entry']:.0f} + status index {b['status_index_entry']:.0f} + "
        f"room index {b['room_index_share']:.0f} = {b['total_memory_usage']:.0f} (MEMORY USAGE); "
        f"INFO used_memory delta / N = {b['used_memory_delta']:.0f}  "
        f"(target < {BYTES_PER_JOB_MAX}) {verdict(ok)}"
    )


def _limiter(s: dict[str, Any]) -> str:
    runs = s["report"].get("runs", [])
    rows = [
        [
            "none" if r.get("limit_per_s") is None else f"{r['limit_per_s']:g}",
            r.get("jobs"),
            r.get("calls"),
            r.get("max_1s_over_limit"),
            r.get("mean_over_limit"),
            r.get("mean_per_s"),
            r.get("deliveries_per_job"),
            r.get("verdict", "-"),
        ]
        for r in runs
    ]
    cost = s["report"].get("acquire_cost") or {}
    extra = (
        f"\n  limiter acquire {cost['acquire_us']} us per call (Redis PING {cost['ping_us']} us)"
        if cost
        else ""
    )
    return (
        f"7. Limiter accuracy (from {s['source']}; 2 workers x threads, no API latency)\n"
        + table(
            ["limit/s", "jobs", "calls", "max1s/lim", "mean/lim", "mean/s", "deliv/job", "verdict"],
            rows,
        )
        + extra
    )


def _scale(s: dict[str, Any]) -> str:
    lost, b = bool(s["problems"]), s["succeeded_record_bytes"]
    return (
        f"8. Scale: {s['jobs']:,} jobs (enqueued in 2 processes at {s['enqueue_per_s']:,.0f}/s), "
        "drained by 1 worker process (threads 32) for the first half, 2 for the rest\n"
        + table(
            [
                "1 process jobs/s",
                "2 processes jobs/s",
                "2 / 1",
                "total jobs/s",
                "drain_s",
                "cpu_ms/job",
            ],
            [
                [
                    s["one_process_per_s"],
                    s["two_processes_per_s"],
                    s["two_over_one"],
                    s["jobs_per_s_total"],
                    s["drain_s"],
                    s["worker_cpu_ms_per_job"],
                ]
            ],
        )
        + f"\n  statuses {s['statuses']}; sandbox: {s['calls']:,} start calls, {s['ok_calls']:,} "
        f"ok, {s['distinct_rooms_started']:,} rooms started; queue left {s['queue_left']}, unacked "
        f"{s['unacked_left']}  ->  no job lost: {verdict(not lost)}"
        + ("" if not lost else "  (" + "; ".join(s["problems"]) + ")")
        + f"\n  memory per succeeded job: record {b.get('record')} bytes, "
        f"{b.get('total_with_indexes')} with its index entries and its own room key "
        f"(MEMORY USAGE); INFO used_memory delta after the drain / N = "
        f"{s['used_memory_per_finished_job_bytes']}"
    )
