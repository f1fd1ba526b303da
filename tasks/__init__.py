"""videosdk-recorder: start VideoSDK cloud recordings reliably.

The public Python API (see README and CONTRACT): enqueue, look up, cancel and replay jobs.
"""

from __future__ import annotations

from tasks.errors import (
    BrokerUnavailable,
    ConfigurationError,
    JobNotFound,
    RecorderError,
    ValidationError,
)
from tasks.job import Job, Status
from tasks.producer import cancel_job, enqueue_recording, get_job, list_jobs, retry_job

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "Job",
    "JobNotFound",
    "RecorderError",
    "Status",
    "ValidationError",
    "cancel_job",
    "enqueue_recording",
    "get_job",
    "list_jobs",
    "retry_job",
]
