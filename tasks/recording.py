"""The Celery task ``tasks.start_recording``: thin, it unpacks the message and runs a delivery."""

from __future__ import annotations

from celery import shared_task

from tasks import runtime

TASK_NAME = "tasks.start_recording"


@shared_task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def start_recording(job_id: str, room_id: str | None = None) -> str:
    """Run one delivery of job ``job_id``; ``room_id`` rides along only so Flower shows it."""
    return runtime.runner().run(job_id)
