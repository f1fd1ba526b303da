"""``recorder webhooks [--host H] [--port P]``: serve the webhook receiver with uvicorn.

Serves ``tasks.http.receiver:app`` (``POST /webhooks/videosdk``) with uvicorn on uvloop and
httptools, one process. Before it listens, the settings are read (a bad one: exit 2, one line)
and the receiver is built, its public key fetched when it is not pinned (a fetch that fails is
logged and tried again at the first webhook, so the API being down does not keep the receiver
from starting). The socket is bound before ``webhooks listening on http://H:P/webhooks/videosdk``
is printed, so a caller that sees the line can send at once.

Logging: uvicorn's lines and the receiver's go through the project's formatter
(``RECORDER_LOG_FORMAT`` text or json, credentials redacted) on stderr; uvicorn's access log
(one line per request) only with ``--access-log``. SIGTERM and SIGINT stop it gracefully: no
new connection is accepted, requests in flight finish (for at most
:data:`GRACEFUL_SHUTDOWN_S`), then it exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

import uvicorn

from tasks import logs, runtime
from tasks.cli.format import BadUsage
from tasks.errors import WebhookKeyUnavailable
from tasks.webhooks.app import PATH
from worker.publish import send_notification

logger = logging.getLogger(__name__)

APP = "tasks.http.receiver:app"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8091
#: longest wait for requests in flight after SIGTERM, seconds
GRACEFUL_SHUTDOWN_S = 10.0
BACKLOG = 2048


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    p.add_argument(
        "--access-log", action="store_true", help="log one line per request (uvicorn's access log)"
    )
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    serve(args.host, args.port, access_log=args.access_log)
    return 0


def setup_logging() -> None:
    """Root logging on stderr with the project's formatter (uvicorn's loggers propagate to it)."""
    s = runtime.config()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logs.install(root, json_lines=s.log_format == "json", secrets=[s.secret])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; BadUsage (exit 2) when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise BadUsage(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BadUsage(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def prepare() -> None:
    """Build the receiver now (settings checked) and fetch its key unless pinned."""
    receiver = runtime.webhook_receiver(send_notification)
    if receiver.keys.pinned:
        logger.info("webhooks: verifying with the pinned public key")
        return
    try:
        receiver.keys.current()
    except WebhookKeyUnavailable as exc:
        logger.warning("webhooks: %s; tried again at the first webhook", exc)
    else:
        logger.info("webhooks: verifying with the public key fetched from the API")


def serve(host: str, port: int, *, access_log: bool = False) -> None:
    """Serve the receiver on ``host:port`` until SIGTERM or SIGINT (see the module docstring)."""
    setup_logging()
    prepare()
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        APP,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=access_log,
        server_header=False,
        backlog=BACKLOG,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
    )
    server = uvicorn.Server(config)

    def stop(signum: int, frame: object) -> None:
        # also what uvicorn's own handler calls again after its graceful shutdown: a no-op then
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    shown = f"[{host}]" if ":" in host else host
    print(f"webhooks listening on http://{shown}:{bound_port}{PATH}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    logger.info("webhooks: stopped")
