"""The demo's recordings after their start: a webhook receiver, the stops, the file URLs.

The demo runs the webhook receiver (``tasks.http.receiver:app``) on uvicorn in a thread of its
own process, with the sandbox's public key pinned; every start carries its URL
(``RECORDER_WEBHOOK_URL``) and a ``max_duration_s``, so each started recording is stopped a few
seconds later, and the sandbox's signed webhooks bring each one to ``stopped`` with its file.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence

import uvicorn

from tasks.api import get_job
from tasks.cli import format as fmt
from tasks.cli.demo.stack import DemoFailed
from tasks.job import Job, Status

#: a started recording is stopped this long after its start (the start's ``max_duration_s``)
RECORDING_S = 3
POLL_S = 0.2
ENDED = frozenset({"stopped", "failed"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_receiver(stack: contextlib.ExitStack) -> str:
    """Serve the webhook receiver on a free port until ``stack`` closes; its webhook URL."""
    port = free_port()
    config = uvicorn.Config(
        "tasks.http.receiver:app", host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="demo-webhooks", daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5)

    stack.callback(stop)
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DemoFailed("the webhook receiver did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/webhooks/videosdk"


def wait_for_recordings(starts: Sequence[Job], *, timeout_s: float) -> list[Job]:
    """The succeeded starts, once each one's recording has ended (or ``timeout_s`` passed)."""
    wanted = [job.id for job in starts if job.status is Status.SUCCEEDED]
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [j for j in (get_job(i) for i in wanted) if j is not None]
        ended = [j for j in jobs if (j.recording or {}).get("status") in ENDED]
        if len(ended) == len(wanted) or time.monotonic() > deadline:
            return jobs
        time.sleep(POLL_S)


def recordings_table(jobs: Sequence[Job]) -> str:
    """Each recording's room, status and file URL."""
    return fmt.table(
        ("room", "recording", "file"),
        (
            (j.room_id, (j.recording or {}).get("status"), (j.recording or {}).get("file_url"))
            for j in jobs
        ),
    )
