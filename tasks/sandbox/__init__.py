"""A local VideoSDK-compatible recordings API for demos, tests and benchmarks.

``SandboxServer`` answers ``POST /v2/recordings/start`` and ``/v2/recordings/end`` as the real
API does (raw-JWT auth, crawler role, roomId checks, "already started" refusals, ``missing-*``
rooms are 404) and can misbehave on purpose: latency, 5xx, its own 429 limit with
``Retry-After``, answers delayed past the client's timeout after the recording started.
``script()`` queues exact answers for the next start calls, used in order before any random
fault. Every start/end call is logged on arrival (the last ``max_calls`` are kept).

It models live sessions and the account's limits: with ``Faults.require_live`` a start of a
room with no live session is refused "No active session found for this room"; a room goes live
when told (``go_live``, ``POST /_sandbox/rooms/{roomId}/live``) or ``Faults.live_after_s`` after
its first start; ``refuse_as_processing`` and ``Faults.max_recordings`` refuse starts account-
wide. Control endpoints (``tasks.sandbox.control``, without auth) drive it from other processes.
A stopped server cannot be started again.

It also plays VideoSDK's side of a recording's life: signed webhooks (``recording-starting``
... ``recording-stopped``, ``recording-failed``, ``session-started``/``-ended``) POSTed from a
background thread with faults of their own (delay, drops, duplicates, reordering, retries), the
RSA key that signs them (``GET /v2/public/rsa-public-key``, ``rotate_key``) and the recordings'
history (``GET /v2/recordings?roomId=``).

Modules: ``faults`` (Faults, answer bodies, the PROCESSING refusal), ``auth`` (HS256 token
check), ``limiter`` (the 429 token bucket), ``sessions`` (rooms' live sessions and recordings),
``history`` (the recordings listed), ``signing`` (the RSA key pair), ``webhooks`` (the sending
thread), ``lifecycle`` (which webhooks a change sends, and where), ``state`` (SandboxState: all
state, one lock), ``recordings`` (RecordingsApi: the answers), ``control`` (control endpoints),
``handler`` (HTTP handler and threading server), ``server`` (SandboxServer) and ``command``
(``recorder sandbox``, as ``main``).
"""

from __future__ import annotations

from tasks.sandbox.command import DEMO_API_KEY, DEMO_SECRET, main
from tasks.sandbox.faults import STARTED, STOPPED, Faults
from tasks.sandbox.server import SandboxServer

__all__ = ["DEMO_API_KEY", "DEMO_SECRET", "STARTED", "STOPPED", "Faults", "SandboxServer", "main"]
