"""The RSA public key VideoSDK signs its webhooks with: pinned, or fetched and cached.

VideoSDK signs each webhook's raw body with RSA-SHA256 (PKCS#1 v1.5) and sends the base64
signature in the ``videosdk-signature`` header; the public key is served at
``{api}/v2/public/rsa-public-key`` (FIELD-NOTES; its official server SDKs verify the raw body
and cache the key). A pinned key (``VIDEOSDK_WEBHOOK_PUBLIC_KEY`` or ``..._FILE``) is never
fetched. A fetched one is cached; when a signature fails, the key is fetched again (a rotation),
at most once every :data:`REFETCH_MIN_S`, so forged requests cannot make us hammer the API. Only
these refetches count for that limit, not the first fetch: a rotation soon after the receiver
started (and fetched the key) is picked up by the next webhook.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tasks.errors import ConfigurationError, WebhookKeyUnavailable

KEY_PATH = "/v2/public/rsa-public-key"
REFETCH_MIN_S = 60.0
FETCH_TIMEOUT_S = 5.0


def load_pem(pem: str | bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM text; raises ValueError when it is not one."""
    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_public_key(data.strip() + b"\n")
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def pem_of_answer(text: str) -> str:
    """The PEM in the key endpoint's answer: the text itself, or JSON with ``publicKey`` at
    the top level or under ``data``."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped
    parsed: Any = json.loads(stripped)
    for holder in (parsed, parsed.get("data") if isinstance(parsed, dict) else None):
        if isinstance(holder, dict) and isinstance(holder.get("publicKey"), str):
            return str(holder["publicKey"])
    raise ValueError("no publicKey in the answer")


def signature_ok(key: rsa.RSAPublicKey, raw_body: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is ``key``'s RSA-SHA256 PKCS#1 v1.5 signature of the body."""
    try:
        sig = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(sig, raw_body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


class PublicKeys:
    """The key webhooks are verified with (see the module docstring); thread-safe."""

    def __init__(
        self,
        *,
        pinned_pem: str | None = None,
        api_base: str | None = None,
        fetch: Callable[..., requests.Response] = requests.get,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if pinned_pem is None and api_base is None:
            raise ConfigurationError("a webhook public key needs a pinned PEM or the API base")
        self._pinned = load_pem(pinned_pem) if pinned_pem is not None else None
        self._url = None if api_base is None else api_base.rstrip("/") + KEY_PATH
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: rsa.RSAPublicKey | None = None
        self._refetched_at = -REFETCH_MIN_S

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    def current(self) -> rsa.RSAPublicKey:
        """The key to verify with; raises WebhookKeyUnavailable when it cannot be fetched."""
        if self._pinned is not None:
            return self._pinned
        with self._lock:
            if self._cached is None:
                self._cached = self._fetch_key()
            return self._cached

    def refreshed(self) -> rsa.RSAPublicKey | None:
        """After a failed signature: the key fetched again, or None (pinned, or the fetch
        failed). Fetched again less than :data:`REFETCH_MIN_S` ago: the key cached then, so a
        webhook that failed with the old key while another request refetched it verifies."""
        if self._pinned is not None:
            return None
        with self._lock:
            if self._clock() - self._refetched_at < REFETCH_MIN_S:
                return self._cached
            self._refetched_at = self._clock()
            try:
                self._cached = self._fetch_key()
            except WebhookKeyUnavailable:
                return None
            return self._cached

    def _fetch_key(self) -> rsa.RSAPublicKey:
        assert self._url is not None
        try:
            resp = self._fetch(self._url, timeout=FETCH_TIMEOUT_S)
            resp.raise_for_status()
            return load_pem(pem_of_answer(resp.text))
        except (requests.RequestException, ValueError) as exc:
            raise WebhookKeyUnavailable(
                f"the webhook public key could not be fetched from {self._url}: "
                f"{type(exc).__name__}"
            ) from None
