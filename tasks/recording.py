"""The Celery task ``tasks.start_recording``: thin, it unpacks the message and runs a delivery."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tasks import runtime

TASK_NAME = "tasks.start_recording"


@shared_task(
    bind=True,
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # skips kombu's own ack when the runner's last write made it (worker.transport)
    Request="worker.transport:StoreAckedRequest",
)
def start_recording(self: Any, job_id: str, room_id: str | None = None) -> str:
    """Run one delivery of job ``job_id``; ``room_id`` rides along only so Flower shows it.

    The message's delivery tag goes to the runner, whose last write acknowledges the message in
    the same round trip as the outcome.
    """
    properties = getattr(self.request, "properties", None) or {}
    return runtime.runner().run(job_id, ack_tag=str(properties.get("delivery_tag") or ""))
