"""videosdk-recorder: start VideoSDK cloud recordings reliably.

The public Python API (see README and CONTRACT): enqueue, look up, cancel and replay jobs, and
manage recurring schedules.
"""

from __future__ import annotations

from tasks.api import (
    cancel_job,
    enqueue_recording,
    get_job,
    list_jobs,
    retry_job,
)
from tasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    JobNotFound,
    RecorderError,
    ValidationError,
)
from tasks.job import Job, Status
from tasks.schedules.api import add_schedule, get_schedule, list_schedules, remove_schedule
from tasks.schedules.store import Schedule

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "Job",
    "JobNotFound",
    "RecorderError",
    "Schedule",
    "Status",
    "ValidationError",
    "add_schedule",
    "cancel_job",
    "enqueue_recording",
    "get_job",
    "get_schedule",
    "list_jobs",
    "list_schedules",
    "remove_schedule",
    "retry_job",
]
