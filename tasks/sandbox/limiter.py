"""The sandbox's own rate limit: a token bucket whose rate may change between calls."""

from __future__ import annotations

import math
import time


class TokenBucket:
    """Holds up to max(1, rate) tokens; not thread-safe, so callers hold their own lock."""

    def __init__(self) -> None:
        self._tokens, self._refill_t = math.inf, time.monotonic()

    def take(self, rate_per_s: float | None) -> bool:
        """Take a token at ``rate_per_s`` (None: no limit); False when the bucket is empty."""
        now = time.monotonic()
        elapsed_s, self._refill_t = now - self._refill_t, now
        if rate_per_s is None:
            self._tokens = math.inf  # a limit set later starts with a full bucket
            return True
        self._tokens = min(max(1.0, rate_per_s), self._tokens + elapsed_s * rate_per_s)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def reset(self) -> None:
        """Fill the bucket, as if no call had been made."""
        self._tokens = math.inf
