"""A recording's life with real processes: worker, `recorder webhooks`, the sandbox's webhooks.

Each test runs a real ``celery -A worker worker``, a real ``recorder webhooks`` process (uvicorn)
and the in-process sandbox, which plays VideoSDK: it answers the start and the stop, and POSTs
RSA-signed webhooks to the ``webhookUrl`` of the start (``RECORDER_WEBHOOK_URL``, set on the
worker and on this process, the producer). The sandbox is instrumented only to see what it was
sent (start bodies) and how often its public key was fetched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import requests

import tasks
from tasks import runtime
from tasks.job import RECORDING_RANK, Job, Kind, Status
from tasks.sandbox.server import SandboxServer
from tasks.sandbox.signing import Signer
from tasks.sandbox.webhooks import encode
from tests.conftest import ROOT, WorkerProcess, free_port, reset_process, stop_process, wait_for
from tests.integration.notify_app import RECEIVED_KEY
from tests.integration.notify_app import TASK_NAME as NOTIFY_TASK

pytestmark = pytest.mark.integration

SpawnWorker = Callable[..., WorkerProcess]
T = TypeVar("T")
RECORDER = Path(sys.executable).with_name("recorder")
LISTENING = re.compile(r"webhooks listening on (http://\S+)")
MIB = 1024 * 1024


def until(predicate: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """``wait_for`` of a predicate that answers None until it answers its value."""
    found = wait_for(predicate, timeout_s=timeout_s, what=what)
    assert found is not None
    return found


class WebhooksProcess:
    """A real ``recorder webhooks --host 127.0.0.1 --port P`` process, output to files."""

    def __init__(self, env: dict[str, str], tmp_path: Path, port: int) -> None:
        self.out_path, self.err_path = tmp_path / "webhooks.out", tmp_path / "webhooks.err"
        self._out, self._err = open(self.out_path, "ab"), open(self.err_path, "ab")  # noqa: SIM115
        cmd = [str(RECORDER), "webhooks", "--host", "127.0.0.1", "--port", str(port)]
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._out, stderr=self._err, process_group=0
        )
        self.port = port

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_listening(self, timeout_s: float = 20.0) -> str:
        def listening() -> str | None:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"recorder webhooks exited {code}:\n{self.log()}")
            found = LISTENING.search(self.out_path.read_text(errors="replace"))
            return found.group(1) if found else None

        return until(listening, timeout_s=timeout_s, what="recorder webhooks listening")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        code = stop_process(self.proc, sig, timeout_s)
        self._out.close()
        self._err.close()
        return code


@pytest.fixture
def start_webhooks(
    recorder_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WebhooksProcess]]:
    """``start_webhooks(**env)``: a ``recorder webhooks`` process on a free port (not waited
    for: call ``wait_listening()``), stopped at teardown."""
    started: list[WebhooksProcess] = []

    def start(**env: str) -> WebhooksProcess:
        process = WebhooksProcess({**recorder_env, **env}, tmp_path, free_port())
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def spawn_worker(
    recorder_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """``spawn_worker(*args, app=..., **env)``: a real worker, not waited for (so several start
    together: call ``wait_ready()``); all are sent SIGTERM together at teardown."""
    started: list[WorkerProcess] = []

    def spawn(*args: str, app: str = "worker", **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess({**recorder_env, **env}, log, *args, app=app)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in started:
        worker.stop()


def receiver_url(process: WebhooksProcess) -> str:
    """The URL the receiver will listen on, from its command line, before it prints it."""
    return f"http://127.0.0.1:{process.port}/webhooks/videosdk"


def producer_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_process()


def start_bodies(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The JSON bodies of the start and end calls the sandbox is sent from now on, in order."""
    bodies: list[dict[str, Any]] = []
    answer = sandbox.answer

    def keep(path: str, headers: Any, raw: bytes) -> Any:
        bodies.append({"path": path, **json.loads(raw or b"{}")})
        return answer(path, headers, raw)

    monkeypatch.setattr(sandbox, "answer", keep)
    return bodies


def key_fetches(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The times ``GET /v2/public/rsa-public-key`` is answered from now on."""
    fetched: list[float] = []
    public_key = sandbox.public_key

    def count() -> Any:
        fetched.append(time.time())
        return public_key()

    monkeypatch.setattr(sandbox, "public_key", count)
    return fetched


def job_of(job_id: str) -> Job:
    job = tasks.get_job(job_id)
    assert job is not None
    return job


def recording_status(job_id: str) -> str | None:
    return (job_of(job_id).recording or {}).get("status")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def calls(sandbox: SandboxServer, room: str, suffix: str, status: int = 200) -> list[float]:
    """Times of the calls to paths ending ``suffix`` for ``room`` answered ``status``."""
    return [
        float(c["t"])
        for c in sandbox.calls()
        if c["room_id"] == room and c["path"].endswith(suffix) and c["status"] == status
    ]


def test_a_recording_starts_then_stops_with_its_file_told_by_signed_webhooks(
    spawn_worker: SpawnWorker,
    start_webhooks: Callable[..., WebhooksProcess],
    sandbox: SandboxServer,
    rdb: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a receiver that fetches VideoSDK's key, a worker, and the application's own worker
    # for notifications, all with RECORDER_WEBHOOK_URL pointing at the receiver
    fetches, bodies = key_fetches(sandbox, monkeypatch), start_bodies(sandbox, monkeypatch)
    receiver = start_webhooks()
    url = receiver_url(receiver)
    worker = spawn_worker(RECORDER_WEBHOOK_URL=url)
    notified = spawn_worker("-P", "solo", app="tests.integration.notify_app")
    assert receiver.wait_listening() == url
    worker.wait_ready()
    notified.wait_ready()
    producer_env(monkeypatch, RECORDER_WEBHOOK_URL=url)
    # When a recording is enqueued
    job_id = tasks.enqueue_recording("life-1", notify_task=NOTIFY_TASK).id
    # Then the start carries webhookUrl, and the webhooks make the recording started
    wait_for(lambda: recording_status(job_id) == "started", timeout_s=15, what="started")
    assert [b for b in bodies if b["path"].endswith("/start")] == [
        {"path": "/v2/recordings/start", "roomId": "life-1", "webhookUrl": url}
    ]
    assert job_of(job_id).status is Status.SUCCEEDED and len(fetches) == 1
    # When VideoSDK rotates its key, then the recording is stopped
    sandbox.rotate_key()
    stop_id = tasks.stop_recording("life-1", notify_task=NOTIFY_TASK).id
    # Then the recording is stopped with the file the API lists, the new key fetched once
    wait_for(lambda: recording_status(job_id) == "stopped", timeout_s=15, what="stopped")
    recording = job_of(job_id).recording
    assert recording is not None
    listed = sandbox.recordings("life-1")[0]
    assert recording["file_url"] == listed["file"]["fileUrl"]
    assert recording["session_id"] == listed["sessionId"]
    assert len(fetches) == 2
    stop = job_of(stop_id)
    assert stop.kind is Kind.STOP and stop.status is Status.SUCCEEDED
    assert [b["path"] for b in bodies] == ["/v2/recordings/start", "/v2/recordings/end"]

    # (the sandbox logs a webhook once it has read the answer: after the receiver applied it)
    def stopped_sent() -> list[dict[str, Any]] | None:
        log = sandbox.webhooks()
        return log if log and log[-1]["webhookType"] == "recording-stopped" else None

    sent = wait_for(
        stopped_sent,
        timeout_s=5,
        what="the sandbox's log of recording-stopped",
    )
    assert {w["url"] for w in sent} == {url} and {w["status"] for w in sent} == {200}
    assert [w["webhookType"] for w in sent][-2:] == ["recording-stopping", "recording-stopped"]
    # And `recorder status` shows the recording's status and its file
    shown = subprocess.run(
        [str(RECORDER), "status", job_id],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("recording:"))
    assert "stopped" in line and str(recording["file_url"]) in line

    # And the notify task received every change, the recording's in order, ending with the file
    def told() -> list[dict[str, Any]]:
        return [json.loads(m) for m in rdb.lrange(RECEIVED_KEY, 0, -1)]

    wait_for(
        lambda: (
            any((j["recording"] or {}).get("status") == "stopped" for j in told())
            and any(j["id"] == stop_id and j["status"] == "succeeded" for j in told())
        ),
        timeout_s=10,
        what="notifications",
    )
    of_start = [j for j in told() if j["id"] == job_id]
    statuses = [(j["recording"] or {}).get("status") for j in of_start]
    seen = [s for s in statuses if s is not None]
    assert seen == ["starting", "started", "stopping", "stopped"]
    assert "succeeded" in [j["status"] for j in of_start]
    assert of_start[-1]["recording"]["file_url"] == listed["file"]["fileUrl"]
    # And the receiver stops gracefully on SIGTERM
    assert receiver.stop() == 0
    assert "Finished server process" in receiver.log()


def test_forged_unsigned_oversized_and_malformed_requests_are_refused_with_nothing_stored(
    start_webhooks: Callable[..., WebhooksProcess],
    sandbox: SandboxServer,
    rdb: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a receiver with VideoSDK's key pinned, and a room with a started start job
    vsdk, forger = Signer(), Signer()
    sandbox.rotate_key(vsdk.private_key_pem)
    fetches = key_fetches(sandbox, monkeypatch)
    receiver = start_webhooks(VIDEOSDK_WEBHOOK_PUBLIC_KEY=vsdk.public_key_pem)
    url = receiver.wait_listening()
    job_id = tasks.enqueue_recording("guarded").id
    runtime.store().update(job_id, {"status": "succeeded"}, count_attempt=True)
    before = {k: rdb.dump(k) for k in sorted(rdb.keys())}
    started = encode({"webhookType": "recording-started", "data": {"meetingId": "guarded"}})

    def post(body: Any, signature: str | None, **headers: str) -> requests.Response:
        if signature is not None:
            headers["videosdk-signature"] = signature
        return requests.post(url, data=body, headers=headers, timeout=10)

    # When forged, unsigned, oversized and malformed requests arrive
    oversized = started + b" " * (MIB + 1 - len(started))
    streamed = (b"x" * 65536 for _ in range(32))  # 2 MiB, chunked: no Content-Length
    answers = {
        "forged": post(started, forger.sign(started)),
        "unsigned": post(started, None),
        "not base64": post(started, "%%%"),
        "oversized": post(oversized, vsdk.sign(oversized)),
        "oversized, chunked": post(streamed, "AAAA"),
        "array": post(b"[]", vsdk.sign(b"[]")),
        "not JSON": post(b"{oops", vsdk.sign(b"{oops")),
    }
    # Then each is refused with its status, and nothing at all was stored
    assert {name: r.status_code for name, r in answers.items()} == {
        "forged": 401,
        "unsigned": 401,
        "not base64": 401,
        "oversized": 413,
        "oversized, chunked": 413,
        "array": 400,
        "not JSON": 400,
    }
    assert {k: rdb.dump(k) for k in sorted(rdb.keys())} == before
    # And a genuine event is applied, with the pinned key, which was never fetched
    ok = post(started, vsdk.sign(started))
    assert (ok.status_code, ok.json()) == (200, {"outcome": "applied"})
    assert recording_status(job_id) == "started" and fetches == []
    assert requests.get(url, timeout=5).status_code == 405
    assert receiver.stop() == 0


def test_duplicated_and_reordered_webhooks_never_move_back_and_max_duration_stops_on_time(
    spawn_worker: SpawnWorker,
    start_webhooks: Callable[..., WebhooksProcess],
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given every webhook sent twice and each recording's held until it ends, then shuffled
    sandbox.faults.webhook_duplicate_rate = 1.0
    sandbox.faults.webhook_reorder = True
    receiver = start_webhooks()
    url = receiver_url(receiver)
    worker = spawn_worker(RECORDER_WEBHOOK_URL=url)
    receiver.wait_listening()
    worker.wait_ready()
    producer_env(monkeypatch, RECORDER_WEBHOOK_URL=url)
    # When three recordings are enqueued with max_duration_s=3
    rooms = [f"dur-{i}" for i in range(3)]
    ids = [tasks.enqueue_recording(room, max_duration_s=3).id for room in rooms]
    # Then each is stopped about 3 s after its start, and ends stopped with its file
    wait_for(
        lambda: all(recording_status(i) == "stopped" for i in ids), timeout_s=20, what="stopped"
    )
    for room, job_id in zip(rooms, ids, strict=True):
        (started_t,), (ended_t,) = calls(sandbox, room, "/start"), calls(sandbox, room, "/end")
        print(f"max_duration_s=3: {room} stopped {ended_t - started_t:.3f} s after its start")
        assert 3.0 <= ended_t - started_t <= 4.5, (room, ended_t - started_t)
        job = job_of(job_id)
        assert job.stop_job_id is not None and job_of(job.stop_job_id).kind is Kind.STOP
        assert (job.recording or {})["file_url"] == sandbox.recordings(room)[0]["file"]["fileUrl"]

    # And every webhook came twice and some came after their recording's stop, yet the receiver
    # applied each room's statuses only forward, each at most once
    def all_sent() -> list[dict[str, Any]] | None:
        sent = [w for w in sandbox.webhooks() if w["webhookType"].startswith("recording-")]
        return sent if len(sent) == 3 * 4 * 2 else None

    sent = until(all_sent, timeout_s=5, what="every webhook sent")
    assert {w["status"] for w in sent} == {200} and sum(w["duplicate"] for w in sent) == 12
    late = 0
    for room in rooms:
        kinds = [w["webhookType"] for w in sent if w["meetingId"] == room and not w["duplicate"]]
        late += len(kinds) - 1 - kinds.index("recording-stopped")
        applied = re.findall(rf"room {room} recording (\w+) \(job", receiver.log())
        ranks = [RECORDING_RANK[s] for s in applied]
        assert ranks == sorted(set(ranks)) and applied[-1] == "stopped", (room, applied)
    assert late > 0, "no webhook arrived after its recording-stopped: reorder did not bite"


def test_a_job_waiting_for_the_room_starts_within_two_seconds_of_session_started(
    spawn_worker: SpawnWorker,
    start_webhooks: Callable[..., WebhooksProcess],
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a room nobody has joined, and a job refused until its next poll is far away
    sandbox.faults.require_live = True
    receiver = start_webhooks()
    url = receiver_url(receiver)
    worker = spawn_worker(RECORDER_WEBHOOK_URL=url)
    receiver.wait_listening()
    worker.wait_ready()
    producer_env(monkeypatch, RECORDER_WEBHOOK_URL=url)
    job_id = tasks.enqueue_recording("class-1", start_window_s=120).id

    def refused_four_times() -> Job | None:
        job = job_of(job_id)
        return job if job.extra.get("_refusals", 0) >= 4 else None

    waiting = until(refused_four_times, timeout_s=40, what="four not_live refusals")
    assert waiting.status is Status.RETRYING and (waiting.error or {})["type"] == "not_live"
    assert waiting.next_attempt_at is not None
    next_poll_in_s = epoch(waiting.next_attempt_at) - time.time()
    assert next_poll_in_s >= 6.0, next_poll_in_s  # 8-16 s after the fourth refusal
    # When the host joins (VideoSDK sends session-started)
    live_at = time.time()
    sandbox.go_live("class-1")

    # Then the start is made within 2 s, long before the poll would have come
    def finished() -> Job | None:
        job = job_of(job_id)
        return job if job.finished else None

    done = until(finished, timeout_s=10, what="the start")
    assert done.status is Status.SUCCEEDED
    (started_t,) = calls(sandbox, "class-1", "/start")
    print(f"started {started_t - live_at:.3f} s after going live, poll {next_poll_in_s:.1f} s away")
    assert started_t - live_at <= 2.0, started_t - live_at
    session = wait_for(
        lambda: [w for w in sandbox.webhooks() if w["webhookType"] == "session-started"],
        timeout_s=5,
        what="the sandbox's log of session-started",
    )
    assert session[0]["url"] == url and session[0]["status"] == 200


def test_with_every_webhook_lost_reconciliation_fills_the_recording(
    spawn_worker: SpawnWorker, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given webhooks that are all lost, and reconciliation 2 s after a start or stop succeeds
    sandbox.faults.webhook_drop_rate = 1.0
    url = f"http://127.0.0.1:{free_port()}/webhooks/videosdk"
    spawn_worker(RECORDER_WEBHOOK_URL=url, RECORDER_RECONCILE_AFTER="2").wait_ready()
    producer_env(monkeypatch, RECORDER_WEBHOOK_URL=url)
    # When one recording starts, and another starts and is stopped a second later
    running = tasks.enqueue_recording("lost-1").id
    stopped = tasks.enqueue_recording("lost-2", max_duration_s=1).id
    # Then reconciliation fills both from GET /v2/recordings, though no webhook was sent
    wait_for(
        lambda: recording_status(running) == "started" and recording_status(stopped) == "stopped",
        timeout_s=15,
        what="reconciled",
    )
    for job_id, room in ((running, "lost-1"), (stopped, "lost-2")):
        job = job_of(job_id)
        assert job.recording is not None and job.finished_at is not None
        filled_after_s = epoch(job.recording["updated_at"]) - epoch(job.finished_at)
        print(f"{room}: recording filled {filled_after_s:.3f} s after the job succeeded")
        assert 2.0 <= filled_after_s <= 5.0, (room, filled_after_s)
        listed = sandbox.recordings(room)[0]
        assert job.recording["session_id"] == listed["sessionId"]
        assert job.recording["file_url"] == (listed["file"] or {}).get("fileUrl")
    assert job_of(stopped).recording["file_url"]  # type: ignore[index]
    sent = sandbox.webhooks()
    assert sent and all(w["dropped"] for w in sent)
    assert len([c for c in sandbox.calls() if c["path"] == "/v2/recordings"]) == 2
