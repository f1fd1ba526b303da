"""The webhook receiver as an ASGI app: ``POST /webhooks/videosdk``.

:func:`create_app` builds it around any ``handle`` (the ready app, configured from the
environment, is ``tasks.http.receiver:app``, which ``recorder webhooks`` serves; the HTTP API
mounts :func:`webhook_endpoint` on its own app).

Answers: 2xx ``{"outcome": ...}`` for every verified event (an unknown room or type too), 401 for
a missing or bad signature, 400 for a verified body that is not a JSON object, 413 for a body
over 1 MiB (refused from its ``Content-Length``, or as soon as more has arrived, never read
whole), 503 when the public key cannot be fetched or Redis does not take the event (VideoSDK
then retries). Nothing is stored
before the signature verifies. The Redis write runs in a worker thread, off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tasks.errors import (
    InvalidWebhookBody,
    InvalidWebhookSignature,
    WebhookKeyUnavailable,
    WebhookTooLarge,
)
from tasks.store.recordings import EventApplied
from tasks.webhooks.receiver import MAX_BODY_BYTES, SIGNATURE_HEADER

PATH = "/webhooks/videosdk"
Handle = Callable[[bytes, "str | None"], EventApplied]


async def read_limited(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The body, or None as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def webhook_endpoint(handle: Callable[[], Handle]) -> Callable[[Request], object]:
    """The route's endpoint; ``handle()`` gives the receiver's handle (built on first use)."""

    async def receive(request: Request) -> JSONResponse:
        body = await read_limited(request)
        if body is None:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            applied = await run_in_threadpool(handle(), body, request.headers.get(SIGNATURE_HEADER))
        except InvalidWebhookSignature as exc:
            return JSONResponse({"error": exc.reason}, status_code=401)
        except WebhookTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except InvalidWebhookBody as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except WebhookKeyUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        except (redis.RedisError, OSError):  # stored nothing: VideoSDK's retry will
            return JSONResponse({"error": "Redis did not take the event"}, status_code=503)
        return JSONResponse({"outcome": applied.outcome})

    return receive


def create_app(handle: Callable[[], Handle]) -> Starlette:
    """An ASGI app serving ``POST /webhooks/videosdk`` with ``handle()``."""
    return Starlette(routes=[Route(PATH, webhook_endpoint(handle), methods=["POST"])])
