"""``recorder serve``: the HTTP API (``tasks.http.app``) on uvicorn, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse

import uvicorn

from tasks.errors import ConfigurationError
from tasks.runtime import config

DEFAULT_PORT = 8000


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; exit 2 (one line) when no bearer token is configured."""
    if not config().api_tokens:
        raise ConfigurationError(
            "RECORDER_API_TOKENS is not set: the HTTP API refuses every request without a token"
        )
    print(f"recorder API listening on http://{args.host}:{args.port} (docs: /docs)", flush=True)
    uvicorn.run(
        "tasks.http.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
    )
    return 0
