"""A worker app whose API client kills its own process for rooms named ``poison-*``.

Started as ``celery -A tests.integration.poison_app worker``: it is the real app, with one
fault injected, to prove that a job which kills its worker every time is bounded.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from tasks.job import Kind
from tasks.videosdk.client import ApiClient
from worker import app

_real_call = ApiClient.call


def _call_or_die(self: ApiClient, kind: Kind, body: dict[str, Any]) -> Any:
    if str(body.get("roomId", "")).startswith("poison-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_call(self, kind, body)


ApiClient.call = _call_or_die  # type: ignore[method-assign]

__all__ = ["app"]
