"""Bearer tokens of the HTTP API: ``RECORDER_API_TOKENS``, several at once for rotation.

Every route but the webhook needs ``Authorization: Bearer <token>`` with one of the configured
tokens; each comparison is constant-time (:func:`hmac.compare_digest`), and every token is
compared, so the time taken says nothing about which one nearly matched. No token configured
means every request is refused: the API is never open by accident.
"""

from __future__ import annotations

import hmac

#: the shortest token accepted in ``RECORDER_API_TOKENS`` (characters)
TOKEN_MIN_CHARS = 16


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_ok(given: str | None, tokens: tuple[str, ...]) -> bool:
    """Whether ``given`` is one of ``tokens``, in time independent of which and how close."""
    if given is None or not tokens:
        return False
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found
