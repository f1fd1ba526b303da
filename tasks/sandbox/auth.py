"""The sandbox's auth: a raw HS256 JWT in ``Authorization``, checked as the real API does.

The token must be well signed with the secret, issued (``iat``) and valid (``nbf``) by now and
unexpired on the sandbox's clock (``Faults.clock_offset_s`` skews it), for the API key, version
2, with the crawler role and the allow_join permission; otherwise the call is refused with 401 or
403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import Any

from tasks.sandbox.faults import Refused


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def verify_hs256(token: str, secret: bytes, now: float) -> dict[str, Any] | None:
    """Claims of a well-signed, unexpired HS256 token, else None.

    Checked with hmac rather than PyJWT: this is the hot path, and PyJWT warns on every decode
    with a secret under 32 bytes (the demo one), which pytest turns into errors.
    """
    try:
        head, body, sig = token.split(".")
        expected = hmac.new(secret, f"{head}.{body}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64(sig)):
            return None
        header, claims = json.loads(_b64(head)), json.loads(_b64(body))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        return None
    exp, nbf = claims.get("exp", math.inf), claims.get("nbf", 0)
    iat = claims.get("iat", 0)
    if not all(isinstance(v, int | float) for v in (exp, nbf, iat)):
        return None
    # a token issued after "now" on this clock is refused, as strict servers do
    return claims if max(nbf, iat) <= now < exp else None


def authorize(token: str, *, api_key: str, secret: bytes, now: float) -> None:
    """Return if ``token`` may start and stop recordings, else raise ``Refused`` (401 or 403)."""
    claims = verify_hs256(token, secret, now)
    if claims is None or claims.get("apikey") != api_key:
        raise Refused(401, "Token is invalid or expired")
    if claims.get("version") != 2:
        raise Refused(403, "Token version must be 2 for v2 APIs")
    if "crawler" not in (claims.get("roles") or ()):
        raise Refused(403, "Your role must be a CRAWLER")
    if "allow_join" not in (claims.get("permissions") or ()):
        raise Refused(403, "Token lacks the allow_join permission")
