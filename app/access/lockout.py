"""Lockout: after ``VOXGATE_LOCKOUT_FAILURES`` failed verifications of one speaker within
``VOXGATE_LOCKOUT_WINDOW_S``, verifications of that speaker are refused (423 ``speaker_locked``, with
``Retry-After``) for ``VOXGATE_LOCKOUT_S``, or until an operator clears it (``voxgate lockout clear``).

Repeated failures against one speaker are how a voice is attacked (recording after recording until one
passes), so the count is the speaker's, whoever sends the attempts, on every replica together: it lives in
Redis and is changed only by Lua scripts, on Redis's clock.

A verification *reserves* its attempt before inference (``begin``) and settles it with its decision
(``finish``): a match clears the speaker's failures, a failure is counted (and locks the speaker when it is
the last one allowed), an attempt that ended without a decision (bad audio, a deadline) is dropped. While
the failures and the attempts under way already reach the limit, a new attempt is refused as well, so
concurrent attempts on any number of replicas get at most ``failures`` decisions before the lock, never
more. An attempt whose replica died before settling it stops counting after ``max_pending_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis

from app.core.errors import SpeakerBusy, SpeakerLocked
from app.store.connection import Batch, redis_errors, reply, reply_text
from app.store.keys import KeySchema

# KEYS: failures, attempts, locked. ARGV: speaker id, attempt id, failures allowed, window (s),
# max pending (s). Returns {1, '0'} (go), {0, seconds left} (locked), {2, seconds} (enough failures in the
# window), {3, seconds} (attempts under way: the failures and the attempts in flight reach the limit).
_BEGIN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local locked_until = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]))
if locked_until then
  if locked_until > now then return {0, tostring(locked_until - now)} end
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
local failed = redis.call('ZCARD', KEYS[1])
local pending = redis.call('ZCARD', KEYS[2])
if failed + pending >= tonumber(ARGV[3]) then
  if pending > 0 then return {3, '1'} end
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {2, tostring(tonumber(oldest[2]) + window - now)}
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5]) * 1000))
return {1, '0'}
"""

# KEYS: failures, attempts, locked. ARGV: speaker id, attempt id, outcome (match, fail or void),
# failures allowed, window (s), lock (s). Returns {1, locked until, failures} when this failure locked
# the speaker, else {0, '0', failures}.
_FINISH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if ARGV[3] == 'match' then
  redis.call('DEL', KEYS[1])
  return {0, '0', 0}
end
if ARGV[3] ~= 'fail' then return {0, '0', 0} end
local window = tonumber(ARGV[5])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
local failed = redis.call('ZCARD', KEYS[1])
if failed >= tonumber(ARGV[4]) then
  local locked_until = now + tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], locked_until, ARGV[1])
  redis.call('DEL', KEYS[1])
  return {1, tostring(locked_until), failed}
end
return {0, '0', failed}
"""

# KEYS: failures, locked. ARGV: speaker id. Returns 1 when the speaker was locked.
_CLEAR_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local locked_until = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
if locked_until and locked_until > now then return 1 end
return 0
"""

Outcome = Literal["match", "fail", "void"]


@dataclass(frozen=True)
class Settled:
    """What ``finish`` did: the failures counted in the window, and when a lock it set ends."""

    failures: int
    locked_until: float | None = None


@dataclass(frozen=True)
class SpeakerLockState:
    speaker_id: str
    locked_until: float | None  # Unix time (Redis's clock); None = not locked
    failures: int  # failed verifications in the current window


class Lockout:
    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        *,
        failures: int,
        window_s: float,
        lock_s: float,
        max_pending_s: float,
        on_locked: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.failures = failures
        self.window_s = window_s
        self.lock_s = lock_s
        self.max_pending_s = max_pending_s
        self.on_locked = on_locked  # the tenant, for metrics
        self._begin = client.register_script(_BEGIN_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._clear = client.register_script(_CLEAR_LUA)

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    def _keys(self, tenant: str, speaker_id: str) -> list[str]:
        k = KeySchema(self.namespace, tenant, "-")
        return [k.failures(speaker_id), k.attempts(speaker_id), k.locked]

    # --- one verification ---
    def queue_begin(self, batch: Batch, tenant: str, speaker_id: str, attempt_id: str) -> int:
        args = [speaker_id, attempt_id, self.failures, repr(self.window_s), repr(self.max_pending_s)]
        return batch.script(self._begin, self._keys(tenant, speaker_id), args)

    def check_begun(self, speaker_id: str, answer: Any) -> None:
        """The reply of ``queue_begin``: nothing when the attempt may go on, else ``SpeakerLocked`` (423) or
        ``SpeakerBusy`` (429: attempts under way, none of them failed yet)."""
        status, seconds = int(reply(answer)[0]), float(reply_text(reply(answer)[1]))
        if status == 1:
            return
        if status == 0:
            raise SpeakerLocked(
                f"speaker {speaker_id!r} is locked after {self.failures} failed verifications within "
                f"{self.window_s:g} s; retry in {math.ceil(seconds)} s or ask the operator to clear it",
                retry_after_s=seconds,
                speaker_id=speaker_id,
            )
        if status == 3:
            raise SpeakerBusy(
                f"speaker {speaker_id!r}: as many verifications are failed or under way as the lockout "
                f"allows ({self.failures} within {self.window_s:g} s); retry when one is decided",
                retry_after_s=seconds,
                speaker_id=speaker_id,
            )
        raise SpeakerLocked(
            f"speaker {speaker_id!r}: {self.failures} verifications failed within {self.window_s:g} s; "
            f"retry in {math.ceil(seconds)} s",
            retry_after_s=seconds,
            speaker_id=speaker_id,
        )

    def queue_finish(
        self, batch: Batch, tenant: str, speaker_id: str, attempt_id: str, outcome: Outcome
    ) -> int:
        args = [speaker_id, attempt_id, outcome, self.failures, repr(self.window_s), repr(self.lock_s)]
        return batch.script(self._finish, self._keys(tenant, speaker_id), args)

    def settled(self, tenant: str, answer: Any) -> Settled:
        """The reply of ``queue_finish``."""
        locked, until, failures = reply(answer)
        if int(locked):
            if self.on_locked is not None:
                self.on_locked(tenant)
            return Settled(int(failures), float(reply_text(until)))
        return Settled(int(failures))

    # --- operators and reads ---
    async def clear(self, tenant: str, speaker_id: str) -> bool:
        """Lift the speaker's lock and forget its failures; True when it was locked."""
        failures, _, locked = self._keys(tenant, speaker_id)
        async with redis_errors():
            return bool(int(await self._clear(keys=[failures, locked], args=[speaker_id])))

    def queue_locked(self, batch: Batch, tenant: str, speaker_ids: Sequence[str]) -> int:
        key = KeySchema(self.namespace, tenant, "-").locked
        return batch.queue(lambda pipe: pipe.zmscore(key, list(speaker_ids)))

    @staticmethod
    def locked_among(speaker_ids: Sequence[str], answer: Any, now: float | None = None) -> set[str]:
        """The reply of ``queue_locked``: those of ``speaker_ids`` locked now."""
        now = time.time() if now is None else now
        scores = reply(answer) or [None] * len(speaker_ids)
        return {
            sid for sid, until in zip(speaker_ids, scores, strict=True) if until is not None and until > now
        }

    async def locked(self, tenant: str) -> list[SpeakerLockState]:
        """The tenant's speakers locked now, by when their lock ends."""
        key = KeySchema(self.namespace, tenant, "-").locked
        async with redis_errors():
            found: Any = await self.client.zrangebyscore(key, time.time(), "+inf", withscores=True)
        return [SpeakerLockState(reply_text(sid), float(until), 0) for sid, until in found]

    async def state(self, tenant: str, speaker_id: str) -> SpeakerLockState:
        failures, _, locked = self._keys(tenant, speaker_id)
        now = time.time()
        async with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.zscore(locked, speaker_id)
            pipe.zcount(failures, now - self.window_s, "+inf")
            until, counted = await pipe.execute()
        locked_until = float(until) if until is not None and float(until) > now else None
        return SpeakerLockState(speaker_id, locked_until, int(counted))
