"""``WebhookSender``: the background thread that POSTs the sandbox's signed webhooks.

``send()`` only queues, so no API answer ever waits for a webhook. One daemon thread (started
when first needed) delivers queued webhooks in order, one at a time, each ``webhook_delay_s``
after its event: a slow receiver delays the ones behind it, as a queue does. Body: compact JSON,
UTF-8 (room ids are not escaped to ASCII), ``Content-Type: application/json``, header
``videosdk-signature`` = ``Signer.sign(body)``, computed once when the webhook is first sent
(with the key current then); a duplicate or retry sends the same bytes and signature.

Faults, read when an event is queued: ``webhook_drop_rate`` (never sent, logged as dropped),
``webhook_duplicate_rate`` (sent twice, back to back), ``webhook_delay_s``. ``send(...,
shuffle=True)`` delivers a batch in an order other than the one given (a pair: reversed).
Retries, as VideoSDK documents none: a webhook answered 429 or 5xx, or not at all (connection
error, or no answer within 2 s to connect / 5 s to answer), is tried again after
``webhook_retry_backoff_s``, doubled for each further try, ``webhook_max_attempts`` tries in
all; any other answer (2xx, other 4xx) ends it. Later webhooks do not wait for a retry.

``log()``: one entry per try and per dropped webhook, oldest first (the last ``max_log`` kept):
``seq`` (the event's number, shared by its duplicate and retries), ``t`` (epoch s), ``url``,
``webhookType``, ``meetingId``, ``sessionId``, ``body`` (the text sent: its UTF-8 bytes are
what was signed), ``signature`` (null when dropped), ``attempt`` (0 when dropped),
``duplicate``, ``dropped``, ``status`` (the receiver's HTTP status, or null) and ``error``
(why no status: the exception's type and message, else null). ``call_later()`` runs a function
on the same thread (the server's timers for rooms that go live later). Thread-safe.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from tasks.sandbox.faults import Faults
from tasks.sandbox.signing import Signer

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
SIGNATURE_HEADER = "videosdk-signature"


@dataclass
class Payload:
    """One event's body and signature, signed once by the sending thread."""

    event: dict[str, Any]
    body: bytes
    signature: str | None = None


@dataclass
class Delivery:
    """One try of sending ``payload`` to ``url``."""

    seq: int
    url: str
    payload: Payload
    generation: int
    attempt: int = 1
    duplicate: bool = False


@dataclass(order=True)
class _Due:
    at_s: float  # time.monotonic()
    order: int
    item: Delivery | Callable[[], None] = field(compare=False)


def encode(event: dict[str, Any]) -> bytes:
    """An event's body as sent: compact JSON in UTF-8."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WebhookSender:
    """Queues, signs and delivers webhooks; see the module docstring."""

    def __init__(
        self, *, signer: Signer, faults: Faults, seed: int | None = None, max_log: int = 10_000
    ) -> None:
        self._signer, self._faults = signer, faults
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # guards everything below
        self._wake = threading.Condition(self._lock)
        self._due: list[_Due] = []
        self._order = itertools.count()
        self._seq = itertools.count(1)
        self._log: deque[dict[str, Any]] = deque(maxlen=max_log)
        self._generation = 0  # clear() moves on: what an older one queued is not logged
        self._thread: threading.Thread | None = None
        self._closed = False

    def send(self, url: str, events: Sequence[dict[str, Any]], *, shuffle: bool = False) -> None:
        """Queue ``events`` for ``url``, in order (``shuffle``: in another order)."""
        faults, order = self._faults, list(events)
        with self._lock:
            if self._closed:
                return
            if shuffle and len(order) > 1:
                given = list(order)
                while order == given:
                    self._rng.shuffle(order)
            at_s = time.monotonic() + faults.webhook_delay_s
            for event in order:
                payload = Payload(event, encode(event))
                delivery = Delivery(next(self._seq), url, payload, self._generation)
                if self._rng.random() < faults.webhook_drop_rate:
                    self._log.append(_entry(delivery, status=None, error=None, dropped=True))
                    continue
                self._push(at_s, delivery)
                if self._rng.random() < faults.webhook_duplicate_rate:
                    self._push(at_s, replace(delivery, duplicate=True))

    def call_later(self, delay_s: float, function: Callable[[], None]) -> None:
        """Run ``function`` on the sending thread ``delay_s`` from now (never after stop())."""
        with self._lock:
            if not self._closed:
                self._push(time.monotonic() + max(0.0, delay_s), function)

    def log(self) -> list[dict[str, Any]]:
        """Every try and dropped webhook, oldest first; see the module docstring."""
        with self._lock:
            return [dict(entry) for entry in self._log]

    def clear(self) -> None:
        """Forget the log and every queued webhook and timer."""
        with self._lock:
            self._due.clear()
            self._log.clear()
            self._generation += 1

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (a try under way may finish); nothing queued is sent."""
        with self._lock:
            self._closed = True
            self._due.clear()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _push(self, at_s: float, item: Delivery | Callable[[], None]) -> None:
        """Queue ``item``; locked."""
        heapq.heappush(self._due, _Due(at_s, next(self._order), item))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)
            self._thread.start()
        self._wake.notify()

    def _next(self) -> Delivery | Callable[[], None] | None:
        """The next item once due, or None when stopped."""
        with self._lock:
            while not self._closed:
                now_s = time.monotonic()
                if self._due and self._due[0].at_s <= now_s:
                    return heapq.heappop(self._due).item
                self._wake.wait(self._due[0].at_s - now_s if self._due else None)
            return None

    def _run(self) -> None:
        with requests.Session() as session:
            session.trust_env = False  # a receiver on 127.0.0.1 is not reached through a proxy
            while (item := self._next()) is not None:
                try:
                    if isinstance(item, Delivery):
                        self._deliver(session, item)
                    else:
                        item()
                except Exception:  # the thread outlives any one webhook or timer
                    logger.exception("sandbox webhook thread: an item failed")

    def _deliver(self, session: requests.Session, delivery: Delivery) -> None:
        payload = delivery.payload
        if payload.signature is None:
            payload.signature = self._signer.sign(payload.body)
        status: int | None = None
        error: str | None = None
        try:
            response = session.post(
                delivery.url,
                data=payload.body,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: payload.signature},
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                allow_redirects=False,
            )
            status = response.status_code
            response.close()
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        faults = self._faults
        with self._lock:
            if delivery.generation != self._generation:
                return  # cleared while it was under way
            self._log.append(_entry(delivery, status=status, error=error, dropped=False))
            retry = status is None or status == 429 or status >= 500
            if retry and delivery.attempt < faults.webhook_max_attempts and not self._closed:
                wait_s = faults.webhook_retry_backoff_s * 2 ** (delivery.attempt - 1)
                nxt = replace(delivery, attempt=delivery.attempt + 1)
                self._push(time.monotonic() + wait_s, nxt)


def _entry(
    delivery: Delivery, *, status: int | None, error: str | None, dropped: bool
) -> dict[str, Any]:
    payload = delivery.payload
    data = payload.event.get("data") or {}
    return {
        "seq": delivery.seq,
        "t": time.time(),
        "url": delivery.url,
        "webhookType": payload.event.get("webhookType"),
        "meetingId": data.get("meetingId"),
        "sessionId": data.get("sessionId"),
        "body": payload.body.decode("utf-8"),
        "signature": payload.signature,
        "attempt": 0 if dropped else delivery.attempt,
        "duplicate": delivery.duplicate,
        "dropped": dropped,
        "status": status,
        "error": error,
    }
