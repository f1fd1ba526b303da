"""videosdk-recorder: start VideoSDK cloud recordings reliably.

The public Python API (see README and CONTRACT): enqueue starts and stops, look up, cancel and
replay jobs, apply VideoSDK's webhooks, and manage recurring schedules.
"""

from __future__ import annotations

from tasks.api import (
    cancel_job,
    enqueue_recording,
    get_job,
    get_recording,
    handle_webhook,
    list_jobs,
    retry_job,
    stop_recording,
)
from tasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    IdempotencyConflict,
    InvalidWebhookSignature,
    JobNotFound,
    RecorderError,
    ValidationError,
)
from tasks.job import Job, Kind, Status
from tasks.schedules.api import add_schedule, get_schedule, list_schedules, remove_schedule
from tasks.schedules.store import Schedule

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "IdempotencyConflict",
    "InvalidWebhookSignature",
    "Job",
    "JobNotFound",
    "Kind",
    "RecorderError",
    "Schedule",
    "Status",
    "ValidationError",
    "add_schedule",
    "cancel_job",
    "enqueue_recording",
    "get_job",
    "get_recording",
    "get_schedule",
    "handle_webhook",
    "list_jobs",
    "list_schedules",
    "remove_schedule",
    "retry_job",
    "stop_recording",
]
