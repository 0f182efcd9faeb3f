"""Per-key rate limits shared by every replica: a token bucket in Redis, refilled and taken atomically.

Each API key has a bucket of ``burst`` tokens refilled at ``rate`` tokens per second; a request takes
one. The bucket lives in Redis (one Lua script, using Redis's own clock, so replicas with skewed clocks
agree) and expires when idle. Beyond the limit a request gets 429 ``rate_limited`` (distinct from the
server's ``overloaded``) with a ``Retry-After`` of when the next token arrives. When Redis is
unreachable the limiter cannot decide: 503 ``store_unavailable``, as every other Redis-backed answer.
"""

from __future__ import annotations

import math
from typing import Any

import redis.asyncio as aioredis

from app.core.errors import RateLimited
from app.store.connection import redis_errors
from app.store.keys import rate_bucket_key

# KEYS: bucket. ARGV: rate (tokens/s), burst, expiry (ms). Returns {allowed, seconds until a token}.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {allowed, tostring(wait)}
"""


class RateLimiter:
    def __init__(
        self, client: aioredis.Redis, namespace: str, default_rate: float, default_burst: int
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.default_rate = default_rate
        self.default_burst = default_burst
        self._take = client.register_script(_TAKE_LUA)

    async def take(self, key_id: str, rate: float | None = None, burst: int | None = None) -> None:
        """Take one token from the key's bucket, or raise ``RateLimited`` (429 with Retry-After)."""
        rate = self.default_rate if rate is None else rate
        burst = self.default_burst if burst is None else burst
        if rate <= 0:
            return  # no limit for this key
        # Idle for as long as a full refill takes, the bucket is full again: it can go.
        expiry_ms = math.ceil(burst / rate * 1000) + 1000
        async with redis_errors():
            reply: Any = await self._take(
                keys=[rate_bucket_key(self.namespace, key_id)], args=[rate, burst, expiry_ms]
            )
        allowed, wait = int(reply[0]), float(reply[1])
        if not allowed:
            raise RateLimited(
                f"API key {key_id} is limited to {rate:g} requests/s (burst {burst}); "
                f"the next request is allowed in {wait:.2f} s",
                retry_after_s=wait,
            )
