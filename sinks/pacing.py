"""Message pacing for rate-limited sinks: a token bucket per peer, per process or shared by every worker via Redis.

A sink asks `acquire` before each request. The bucket hands out one token per `interval` seconds, `burst` at most in
a row (GCRA: one "theoretical arrival time" per bucket). `LocalBucket` paces one process; `RedisBucket` keeps the
same state in Redis, taken and updated by one Lua script (Redis' own clock, so workers on any host agree), so any
number of worker processes together stay under the peer's limit. A peer's Retry-After is pushed into the bucket
(`pause`): one process's 429 holds back all of them.

`acquire` sleeps for its turn only while the send's deadline allows; past it, it raises SinkUnavailable with the
wait as `retry_after`, so a job never sleeps through its timeout and RQ reschedules the rest.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

from redis import Redis, RedisError

from sinks.errors import SinkUnavailable

# KEYS[1] the bucket; ARGV: interval (s per token), tolerance ((burst - 1) * interval), pause (s; 0 = take a token).
# Returns "0" when a token was taken (or the pause stored), else the seconds until one is due.
_BUCKET_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if pause > 0 then
  if now + pause + tolerance > tat then tat = now + pause + tolerance end
elseif tat - now > tolerance then
  return string.format('%.6f', tat - tolerance - now)
else
  tat = tat + interval
end
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return '0'
"""


def bucket_key(kind: str, peer: str) -> str:
    """`keytrail:pace:<kind>:<sha256 of the peer>`: the peer (a webhook URL holding a token) never appears in Redis."""
    return f"keytrail:pace:{kind}:{hashlib.sha256(peer.encode()).hexdigest()[:32]}"


class Bucket(Protocol):
    def take(self) -> float:
        """Take a token: 0.0 when one was taken, else the seconds until the next is due (nothing taken)."""
        ...

    def pause(self, seconds: float) -> None:
        """No token before `seconds` from now (the peer said Retry-After)."""
        ...


class LocalBucket:
    """The bucket for one process (no Redis, or sharing turned off)."""

    def __init__(self, interval: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.tolerance = (burst - 1) * interval
        self._clock = clock
        self._tat: float | None = None

    def take(self) -> float:
        now = self._clock()
        tat = max(self._tat if self._tat is not None else now, now)
        if tat - now > self.tolerance:
            return tat - self.tolerance - now
        self._tat = tat + self.interval
        return 0.0

    def pause(self, seconds: float) -> None:
        now = self._clock()
        self._tat = max(self._tat if self._tat is not None else now, now + seconds + self.tolerance)


class RedisBucket:
    """The bucket shared by every process on this Redis: state under `key`, changed only by one script (EVALSHA)."""

    def __init__(self, redis: Redis, key: str, interval: float, burst: int = 1) -> None:
        self.key = key
        self.interval = interval
        self.tolerance = (burst - 1) * interval
        self._script = redis.register_script(_BUCKET_SCRIPT)

    def _run(self, pause: float) -> float:
        try:
            answer = self._script(keys=[self.key], args=[repr(self.interval), repr(self.tolerance), repr(pause)])
        except RedisError as exc:
            raise SinkUnavailable(f"pacing state unavailable (Redis {type(exc).__name__})") from None
        return float(answer)

    def take(self) -> float:
        return self._run(0.0)

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self._run(seconds)


def acquire(
    bucket: Bucket,
    *,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    label: str = "peer",
) -> None:
    """Wait for a token until `deadline` (on `clock`); a token due later raises SinkUnavailable(retry_after=wait)."""
    while True:
        wait = bucket.take()
        if wait <= 0:
            return
        if clock() + wait > deadline:
            raise SinkUnavailable(f"{label} rate limit: next message due in {wait:.1f} s", retry_after=wait)
        sleep(wait)
