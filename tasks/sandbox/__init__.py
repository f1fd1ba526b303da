"""A local VideoSDK-compatible recordings API for demos, tests and benchmarks.

``SandboxServer`` answers ``POST /v2/recordings/start`` and ``/v2/recordings/end`` as the real
API does (raw-JWT auth, crawler role, roomId checks, "already started" refusals, ``missing-*``
rooms are 404) and can misbehave on purpose: latency, 5xx, its own 429 limit with
``Retry-After``, answers delayed past the client's timeout after the recording started.
``script()`` queues exact answers for the next start calls, used in order before any random
fault. Every start/end call is logged on arrival (the last ``max_calls`` are kept).

Control endpoints, without auth, for tests in other processes and the demo: ``GET
/_sandbox/health``, ``GET /_sandbox/calls``, ``GET /_sandbox/rooms``, ``POST /_sandbox/script``
(a list of scripted answers, appended), ``POST /_sandbox/faults`` (Faults fields to update),
``POST /_sandbox/reset``. A fractional ``retry_after_s`` is sent as a decimal, which the RFC
does not allow but which keeps tests fast. A stopped server cannot be started again.

Modules: ``faults`` (Faults, answer bodies), ``auth`` (HS256 token check), ``limiter`` (the 429
token bucket), ``handler`` (HTTP handler and threading server), ``server`` (SandboxServer) and
``command`` (``recorder sandbox``, as ``main``).
"""

from __future__ import annotations

from tasks.sandbox.command import DEMO_API_KEY, DEMO_SECRET, main
from tasks.sandbox.faults import STARTED, STOPPED, Faults
from tasks.sandbox.server import SandboxServer

__all__ = ["DEMO_API_KEY", "DEMO_SECRET", "STARTED", "STOPPED", "Faults", "SandboxServer", "main"]
