"""Tokens: VideoSDK JWTs minted with PyJWT and cached per process until shortly before expiry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import jwt

#: lifetime of a minted token; VideoSDK's own examples mint 10-minute tokens.
TOKEN_TTL_S = 600
#: a cached token is replaced this long before it expires, so no call carries a dying token.
REMINT_MARGIN_S = 60
#: ``iat`` is backdated by this much, so an API whose clock runs behind ours (by up to this)
#: does not refuse a fresh token as "not yet valid"; ``exp`` still counts from now.
CLOCK_SKEW_S = 30


class TokenMinter:
    """Mints HS256 tokens with the claims the v2 server APIs require, and caches one.

    Thread-safe: worker threads share one minter. ``invalidate`` drops the cached token (after a
    401), so the next ``token()`` mints afresh. The secret is held only here and never logged.
    """

    def __init__(
        self,
        *,
        api_key: str,
        secret: str,
        ttl_s: int = TOKEN_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= REMINT_MARGIN_S:
            raise ValueError(f"ttl_s must exceed the re-mint margin of {REMINT_MARGIN_S}s")
        self._api_key = api_key
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.minted = 0

    def __repr__(self) -> str:
        return f"TokenMinter(api_key={self._api_key!r}, ttl_s={self._ttl_s})"

    def token(self) -> str:
        """A valid token, minted only when none is cached or the cached one nears expiry."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - REMINT_MARGIN_S:
                self._token, self._expires_at = self._mint(now), now + self._ttl_s
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token; the next ``token()`` mints a new one."""
        with self._lock:
            self._token = None

    def _mint(self, now: float) -> str:
        claims = {
            "apikey": self._api_key,
            "permissions": ["allow_join"],
            "version": 2,
            "roles": ["crawler"],
            "iat": int(now) - CLOCK_SKEW_S,
            "exp": int(now) + self._ttl_s,
        }
        self.minted += 1
        return jwt.encode(claims, self._secret, algorithm="HS256")
