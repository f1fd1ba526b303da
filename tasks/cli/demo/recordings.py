"""The demo's recordings after their start: a webhook receiver, the stops, the file URLs.

The demo runs the webhook receiver (``tasks.http.receiver:app``) on uvicorn in a thread of its
own process, with the sandbox's public key pinned; every start carries its URL
(``RECORDER_WEBHOOK_URL``) and a ``max_duration_s``, so each started recording is stopped a few
seconds later, and the sandbox's signed webhooks bring each one to ``stopped`` with its file.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn

from tasks.api import get_recording
from tasks.cli import format as fmt
from tasks.cli.demo.stack import DemoFailed, free_port
from tasks.job import Job, Status, recording_ended

#: a started recording is stopped this long after its start (the start's ``max_duration_s``)
RECORDING_S = 3
POLL_S = 0.2


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


def wait_for_recordings(
    starts: Sequence[Job], *, timeout_s: float
) -> list[tuple[str, dict[str, Any] | None]]:
    """Each room a start succeeded for (a room started twice has one recording), with what is
    known of its recording, once every one has ended (or ``timeout_s`` passed)."""
    rooms = list(dict.fromkeys(job.room_id for job in starts if job.status is Status.SUCCEEDED))
    deadline = time.monotonic() + timeout_s
    while True:
        known = [(room, get_recording(room)) for room in rooms]
        if all(recording_ended(r) for _, r in known) or time.monotonic() > deadline:
            return known
        time.sleep(POLL_S)


def recordings_table(recordings: Sequence[tuple[str, dict[str, Any] | None]]) -> str:
    """Each room's recording: its status and file URL."""
    return fmt.table(
        ("room", "recording", "file"),
        ((room, (r or {}).get("status"), (r or {}).get("file_url")) for room, r in recordings),
    )
