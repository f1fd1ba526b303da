"""The ready webhook receiver app: ``POST /webhooks/videosdk`` configured from the environment.

``recorder webhooks`` serves :data:`app` with uvicorn; an application can mount it in its own
ASGI app (FastAPI ``app.mount("/", receiver_app)``, Starlette ``Mount``), or call
``tasks.handle_webhook(raw_body, signature)`` from a route of its own (Flask, Django). The route
and its answers are :mod:`tasks.webhooks.app`'s; the receiver is built on the first request.
"""

from __future__ import annotations

from tasks.api import handle_webhook
from tasks.webhooks.app import create_app

#: the ready ASGI app (``tasks.http.receiver:app``)
app = create_app(lambda: handle_webhook)
