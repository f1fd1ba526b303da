"""The ``recorder sandbox`` command: serve a ``SandboxServer`` until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal

from tasks.errors import ConfigurationError
from tasks.sandbox.faults import PUBLIC_KEY_FORMATS, Faults
from tasks.sandbox.server import SandboxServer
from tasks.settings import parse_rate

DEMO_API_KEY = "sandbox-key"
DEMO_SECRET = "sandbox-secret-not-for-production-use"
DESCRIPTION = "A local VideoSDK-compatible recordings API for demos, tests and benchmarks."


def _rate(text: str) -> float:
    """``--rate-limit``: N/s, N/m or N/h (a bare N is per second) as calls per second."""
    count, _, unit = text.strip().lower().partition("/")
    try:
        return parse_rate(f"{count}/{unit.strip() or 's'}")
    except ConfigurationError:
        raise argparse.ArgumentTypeError(f"expected N/s, N/m or N/h, got {text!r}") from None


def _seconds(text: str) -> float:
    """``--live-after``, ``--webhook-delay``, ``--webhook-retry-backoff``: seconds, not negative."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return value


def _fraction(text: str) -> float:
    """``--webhook-drop-rate`` and ``--webhook-duplicate-rate``: from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def _attempts(text: str) -> int:
    """``--webhook-max-attempts``: 1 or more."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number (1 or more), got {text!r}")
    return int(text)


def _count(text: str) -> int:
    """``--max-recordings``: a whole number, not negative."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """The ``recorder sandbox`` command: serve until SIGINT or SIGTERM, then return 0."""
    secret, secret_file = os.environ.get("VIDEOSDK_SECRET"), os.environ.get("VIDEOSDK_SECRET_FILE")
    if not secret and secret_file:
        with open(secret_file, encoding="utf-8") as fh:
            secret = fh.read().strip()
    parser = argparse.ArgumentParser(prog="recorder sandbox", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", default=os.environ.get("VIDEOSDK_API_KEY") or DEMO_API_KEY)
    parser.add_argument("--secret", default=secret or DEMO_SECRET, help="HS256 signing secret")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 5xx")
    parser.add_argument("--rate-limit", type=_rate, default=None, help="e.g. 20/s; excess: 429")
    parser.add_argument("--too-many-rate", type=float, default=0.0, help="fraction answered 429")
    parser.add_argument("--retry-after", type=float, default=1.0, help="s; negative: no header")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="fraction answered late")
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--require-live",
        action="store_true",
        help="refuse a start (400) while its room has no live session",
    )
    parser.add_argument(
        "--live-after",
        type=_seconds,
        default=None,
        metavar="S",
        help="a room goes live S s after its first start call (else: when told)",
    )
    parser.add_argument(
        "--max-recordings",
        type=_count,
        default=None,
        metavar="N",
        help="refuse a start (400) while N recordings run",
    )
    _webhook_arguments(parser)
    args = parser.parse_args(argv)
    private_key_pem = None
    if args.rsa_private_key_file is not None:
        try:
            with open(args.rsa_private_key_file, "rb") as key_file:
                private_key_pem = key_file.read()
        except OSError as exc:
            parser.error(f"--rsa-private-key-file: {exc.strerror}: {args.rsa_private_key_file}")
    faults = Faults(
        latency_s=args.latency_ms / 1000,
        latency_jitter_s=args.jitter_ms / 1000,
        error_rate=args.error_rate,
        rate_limit_per_s=args.rate_limit,
        too_many_rate=args.too_many_rate,
        retry_after_s=None if args.retry_after < 0 else args.retry_after,
        timeout_rate=args.timeout_rate,
        hang_s=args.hang_s,
        require_live=args.require_live,
        live_after_s=args.live_after,
        max_recordings=args.max_recordings,
        webhook_url=args.webhook_url,
        webhook_delay_s=args.webhook_delay,
        webhook_drop_rate=args.webhook_drop_rate,
        webhook_duplicate_rate=args.webhook_duplicate_rate,
        webhook_reorder=args.webhook_reorder,
        webhook_max_attempts=args.webhook_max_attempts,
        webhook_retry_backoff_s=args.webhook_retry_backoff,
        public_key_format=args.public_key_format,
    )
    try:
        server = SandboxServer(
            args.host,
            args.port,
            api_key=args.api_key,
            secret=args.secret,
            faults=faults,
            seed=args.seed,
            private_key_pem=private_key_pem,
        )
    except ValueError as exc:  # the key file holds no usable RSA private key
        parser.error(f"--rsa-private-key-file: {exc}")
    server.public_key_pem  # noqa: B018  made now, not when the first webhook waits for it

    def on_signal(signum: int, frame: object) -> None:
        server.interrupt()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"sandbox listening on {server.url}", flush=True)
    server.serve_forever()
    server.stop()
    return 0


def _webhook_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the webhooks the sandbox sends, and of the key that signs them."""
    group = parser.add_argument_group("webhooks (signed with the sandbox's RSA key)")
    group.add_argument(
        "--webhook-url", default=None, help="for starts without webhookUrl, and session events"
    )
    group.add_argument("--webhook-delay", type=_seconds, default=0.0, metavar="S")
    group.add_argument("--webhook-drop-rate", type=_fraction, default=0.0, metavar="F")
    group.add_argument("--webhook-duplicate-rate", type=_fraction, default=0.0, metavar="F")
    group.add_argument(
        "--webhook-reorder",
        action="store_true",
        help="hold a recording's webhooks until it ends, then send them shuffled",
    )
    group.add_argument("--webhook-max-attempts", type=_attempts, default=4, metavar="N")
    group.add_argument(
        "--webhook-retry-backoff",
        type=_seconds,
        default=0.5,
        metavar="S",
        help="wait before the 2nd try, doubled for each further one",
    )
    group.add_argument(
        "--public-key-format",
        choices=PUBLIC_KEY_FORMATS,
        default="json",
        help="GET /v2/public/rsa-public-key: {publicKey}, {data: {publicKey}} or the PEM text",
    )
    group.add_argument(
        "--rsa-private-key-file",
        default=None,
        metavar="PATH",
        help="sign with this PEM RSA private key (default: a new 2048-bit key for this run)",
    )
