"""A worker app whose API client kills its own process for rooms named ``poison-*``.

Started as ``celery -A tests.integration.poison_app worker``: it is the real app, with one
fault injected, to prove that a job which kills its worker every time is bounded.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from tasks.videosdk.client import ApiClient
from worker import app

_real_start = ApiClient.start_recording


def _start_or_die(self: ApiClient, body: dict[str, Any]) -> Any:
    if str(body.get("roomId", "")).startswith("poison-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_start(self, body)


ApiClient.start_recording = _start_or_die  # type: ignore[method-assign]

__all__ = ["app"]
