"""Rate limiter: one limit shared by every worker process that uses the same Redis.

Algorithm: GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp). It was
chosen over a counting token bucket because its whole state is a single number, the "theoretical
arrival time" (TAT), so one atomic Lua script both decides and *reserves* a future slot: a caller
that is told "wait 180 ms" owns that slot and calls exactly then, instead of polling. Time comes
from Redis ``TIME``, so workers with skewed clocks still agree.

Back-pressure from the API, on top of the configured rate:
- a 429 with ``Retry-After`` sets a shared cool-down: every worker waits until it has passed;
- a 429 without one halves the effective rate (multiplicative decrease), which then recovers
  by ``RECOVERY_PER_S`` of the configured rate each second (additive increase): AIMD.

Keys (all with a TTL, so a quiet system holds none):
- ``{prefix}:rl:tat``      the GCRA theoretical arrival time, microseconds since the epoch
- ``{prefix}:rl:cooldown`` until when (microseconds) nobody may call, after a Retry-After
- ``{prefix}:rl:aimd``     hash ``factor`` (0..1] and ``ts`` (microseconds) of the last decrease
If the keys vanish (flush, restart without persistence) the limiter starts afresh: at most one
burst passes at once, then the rate holds again. It never floods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from tasks.store.connections import own_client

#: the limiter spaces calls for this fraction of the configured rate: calls leave their slots with
#: a few ms of jitter (threads, the network), which could otherwise put a second over the limit
#: at the API; with 1.5% (200/s: 197 spaced calls) the busiest whole second of the herd
#: benchmark held 197-201 calls, once 202 (a margin, not a bound: README, "The herd").
RATE_MARGIN = 0.985
#: the longest shared cool-down a Retry-After may set (the parser caps it there already)
COOLDOWN_MAX_S = 3600.0
#: a 429 whose Retry-After is shorter than this also lowers the rate: it still says "too many"
HALVE_BELOW_S = 1.0
#: a 429 without Retry-After multiplies the effective rate by this...
DECREASE_FACTOR = 0.5
#: ...never below this fraction of the configured rate...
MIN_FACTOR = 0.05
#: ...and the fraction recovers by this much per second.
RECOVERY_PER_S = 0.05

# One GCRA step as a Lua function, shared by ACQUIRE_LUA and the job store's claim script
# (which takes a slot in the same round trip as the claim, see tasks.store.scripts.CLAIM_LUA).
# keys[1] tat, keys[2] cooldown, keys[3] aimd
# args[1] emission interval at the full rate (us), args[2] burst, args[3] most wait to reserve
# (us), args[4] recovery per second, args[5] "1" to reserve, "0" to only look
# Returns {wait_us, reserved 0/1, cooldown 0/1, factor in thousandths, backlog_us}
GCRA_LUA = """
local function gcra(keys, args)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local factor = 1
  local aimd = redis.call('HMGET', keys[3], 'factor', 'ts')
  if aimd[1] then
    factor = math.min(1, tonumber(aimd[1]) + tonumber(args[4]) * (now - tonumber(aimd[2])) / 1e6)
  end
  local tat = tonumber(redis.call('GET', keys[1]) or '0')
  if tat < now then tat = now end
  local backlog = tat - now
  local cooldown = tonumber(redis.call('GET', keys[2]) or '0')
  if cooldown > now then
    return {cooldown - now, 0, 1, math.floor(factor * 1000), backlog}
  end
  local interval = tonumber(args[1]) / factor
  local wait = tat - interval * (tonumber(args[2]) - 1) - now
  if wait < 0 then wait = 0 end
  if wait > tonumber(args[3]) or args[5] ~= '1' then
    return {wait, 0, 0, math.floor(factor * 1000), backlog}
  end
  local new_tat = tat + interval
  redis.call('SET', keys[1], string.format('%.0f', new_tat),
             'PX', math.ceil((new_tat - now) / 1000) + 1000)
  return {wait, 1, 0, math.floor(factor * 1000), backlog}
end
"""

# KEYS and ARGV as the function's keys and args above
ACQUIRE_LUA = GCRA_LUA + "return gcra(KEYS, ARGV)\n"

# KEYS[1] cooldown, KEYS[2] aimd
# ARGV[1] Retry-After (us) or "-1" for none, ARGV[2] decrease factor, ARGV[3] floor,
# ARGV[4] recovery per second, ARGV[5] "1" to halve the rate as well
# A Retry-After extends the shared cool-down (never shortens it); a 429 with none, or with one
# too short to slow anyone down, halves the rate.
BACKOFF_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local retry_after = tonumber(ARGV[1])
if retry_after > 0 then
  local until_ = now + retry_after
  local current = tonumber(redis.call('GET', KEYS[1]) or '0')
  if until_ > current then
    redis.call('SET', KEYS[1], string.format('%.0f', until_),
               'PX', math.ceil(retry_after / 1000) + 1)
  end
end
if ARGV[5] ~= '1' then return 1 end
local factor = 1
local aimd = redis.call('HMGET', KEYS[2], 'factor', 'ts')
if aimd[1] then
  factor = math.min(1, tonumber(aimd[1]) + tonumber(ARGV[4]) * (now - tonumber(aimd[2])) / 1e6)
end
factor = math.max(tonumber(ARGV[3]), factor * tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], 'factor', tostring(factor), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[2], math.ceil((1 - factor) / tonumber(ARGV[4]) * 1000) + 1000)
return 0
"""


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer: wait ``wait_s``; ``reserved`` means the slot at that time is yours."""

    wait_s: float
    reserved: bool
    cooldown: bool
    factor: float
    backlog_s: float


class RedisRateLimiter:
    """A global rate limit of ``rate_per_s`` calls per second with ``burst`` calls at once.

    Calls are spaced for ``rate_per_s`` x :data:`RATE_MARGIN`, so that a second at the API sees
    no more than ``rate_per_s`` (+ ``burst`` - 1) of them though they leave their slots a few
    ms late.
    """

    def __init__(
        self, *, client: redis.Redis, rate_per_s: float, burst: int = 1, prefix: str = "recorder"
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._keys = [f"{prefix}:rl:tat", f"{prefix}:rl:cooldown", f"{prefix}:rl:aimd"]
        self._interval_us = 1_000_000 / (rate_per_s * RATE_MARGIN)
        self._client = client
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._backoff = client.register_script(BACKOFF_LUA)

    @property
    def cooldown_key(self) -> str:
        """The key of the shared cool-down (``{prefix}:rl:cooldown``), for scripts that must not
        act during one (the runner's write-ahead)."""
        return self._keys[1]

    def acquire(self, *, max_wait_s: float) -> Admission:
        """Reserve the next slot if it comes within ``max_wait_s``; else only say when it would."""
        return self._call(max_wait_s, reserve=True)

    def peek(self) -> Admission:
        """The current state, reserving nothing (for ``recorder limits``)."""
        return self._call(0.0, reserve=False)

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """Tell every worker about a 429: a shared cool-down of ``retry_after_s`` (capped at an
        hour), and a lower rate when there is none or it is under :data:`HALVE_BELOW_S`."""
        wait_s = None if retry_after_s is None else min(retry_after_s, COOLDOWN_MAX_S)
        halve = wait_s is None or wait_s < HALVE_BELOW_S
        self._backoff(
            keys=self._keys[1:],
            args=[
                -1 if wait_s is None else int(wait_s * 1_000_000),
                DECREASE_FACTOR,
                MIN_FACTOR,
                RECOVERY_PER_S,
                "1" if halve else "0",
            ],
            client=own_client(self._client),
        )

    def step(self, *, max_wait_s: float, reserve: bool = True) -> tuple[list[str], list[Any]]:
        """The keys and args of one GCRA step (:data:`GCRA_LUA`), for any script that runs it."""
        args: list[Any] = [
            self._interval_us,
            self.burst,
            int(max_wait_s * 1_000_000),
            RECOVERY_PER_S,
            "1" if reserve else "0",
        ]
        return self._keys, args

    def _call(self, max_wait_s: float, *, reserve: bool) -> Admission:
        keys, args = self.step(max_wait_s=max_wait_s, reserve=reserve)
        wait_us, reserved, cooldown, factor_milli, backlog_us = self._acquire(
            keys=keys, args=args, client=own_client(self._client)
        )
        return Admission(
            wait_s=wait_us / 1_000_000,
            reserved=bool(reserved),
            cooldown=bool(cooldown),
            factor=factor_milli / 1000,
            backlog_s=backlog_us / 1_000_000,
        )
