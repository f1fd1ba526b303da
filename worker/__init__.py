"""videosdk-recorder's Celery app: ``celery -A worker worker|beat|flower``."""

from __future__ import annotations

from worker.app import app

__all__ = ["app"]
