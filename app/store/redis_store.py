"""Redis voiceprint store: the system of record for enrolled speakers.

A voiceprint is kept as the *sum* of the L2-normalised utterance embeddings plus their count, so an
enrollment adds atomically (one Lua script) and the mean is ``sum / count``; its direction — all
cosine scoring needs — is the direction of the sum. Key layout: ``app.store.keys`` and
docs/redis-schema.md.

With a key-encryption key configured (``app.store.vault``), the sum and the metadata are sealed
(``app.core.crypto``) under the tenant's data key and bound to their Redis key: Lua cannot add sealed sums,
so an enrollment then reads, adds and writes back under a revision check (optimistic concurrency,
retried). Retention: every enrollment and every successful verification moves a speaker's expiry
(``expires_at``; the ``expiry`` sorted set lets ``sweep_expired`` find the ones whose time has come).

Duplicate recordings: each enrollment stores a 128-bit digest of every recording's decoded audio in the
voiceprint (``clips``), and the enrollment script compares the new ones with them atomically, so the same
recording is not counted twice, whichever replica it is sent to (refused, or added with a warning).

All calls go through ``redis.asyncio`` (never blocking the event loop). Connection problems are
raised as ``StoreUnavailable`` (503); the client reconnects by itself on the next call, so the
service recovers without a restart once Redis is back.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis

from app.core.crypto import CryptoError, DataKeys, KeyEncryptionKey, sealed_version, value_aad
from app.core.errors import StoreUnavailable
from app.core.vectors import l2_normalize
from app.store.connection import Batch, redis_client, redis_errors, reply, reply_text
from app.store.keys import KeySchema
from app.store.vault import Vault

# Changes kept in the stream for replicas to replay; a replica further behind reloads everything.
DEFAULT_CHANGES_MAXLEN = 100_000
_SCAN_BATCH = 2000

# What every enrollment writes besides the voiceprint itself, in the same atomic step: bookkeeping,
# the speaker set, the version and the change stream, the model and tenant registries, the expiry.
# KEYS: speaker hash, speakers, version, changes, models, expiry, tenants, epoch.
# ARGV (from 3 on, shared): count, speech, metadata, now, speaker id, changes maxlen, model key,
# expires_at ('' = never), tenant, a new epoch id (kept only if the history has none), afresh ('1': the
# stored voiceprint does not open, so it is replaced, not added to), the recordings' digests (16 bytes
# each), refuse duplicates ('1'); ARGV[1], ARGV[2] belong to the variant. `clips` and `duplicates` are set
# by _DUPLICATES.
_ENROLL_BOOKKEEPING = """
local count = redis.call('HINCRBY', KEYS[1], 'count', tonumber(ARGV[3]))
local speech = redis.call('HINCRBYFLOAT', KEYS[1], 'speech_seconds', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[5]) end
redis.call('HSET', KEYS[1], 'clips', clips .. ARGV[14])
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[10])
  redis.call('ZADD', KEYS[6], tonumber(ARGV[10]), ARGV[7])
else
  redis.call('HDEL', KEYS[1], 'expires_at')
  redis.call('ZREM', KEYS[6], ARGV[7])
end
redis.call('ZADD', KEYS[2], 0, ARGV[7])
local v = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'v', v, 'op', 'upsert', 'id', ARGV[7])
redis.call('SADD', KEYS[5], ARGV[9])
redis.call('SADD', KEYS[7], ARGV[11])
redis.call('SET', KEYS[8], ARGV[12], 'NX')
return {v, count, speech, created, duplicates}
"""

# Which of the new recordings (digests in ARGV[14]) the voiceprint already holds, or another new one
# before it: `duplicates` is one '0'/'1' per recording. Refused ({-2, duplicates}) when ARGV[15] is '1'.
_DUPLICATES = """
local clips = redis.call('HGET', KEYS[1], 'clips') or ''
local seen = {}
for j = 0, #clips / 16 - 1 do seen[string.sub(clips, 16 * j + 1, 16 * j + 16)] = true end
local flags = {}
local any = false
for i = 0, #ARGV[14] / 16 - 1 do
  local digest = string.sub(ARGV[14], 16 * i + 1, 16 * i + 16)
  if seen[digest] then
    flags[i + 1] = '1'
    any = true
  else
    flags[i + 1] = '0'
  end
  seen[digest] = true
end
local duplicates = table.concat(flags)
if any and ARGV[15] == '1' then return {-2, duplicates} end
"""

# A voiceprint that expired (not yet swept) or does not open is gone for reads: an enrollment starts it
# afresh (count, speech seconds and sum), never adds to what is left of it. The revision goes on
# counting, so that a concurrent sealed enrollment that read the old one retries. Sets `expired`.
_ENROLL_AFRESH = """
local at = redis.call('HGET', KEYS[1], 'expires_at')
local expired = at and tonumber(at) <= tonumber(ARGV[6])
if expired or ARGV[13] == '1' then
  local kept_rev = redis.call('HGET', KEYS[1], 'rev')
  redis.call('DEL', KEYS[1])
  if kept_rev then redis.call('HSET', KEYS[1], 'rev', kept_rev) end
end
"""

# Plain voiceprints: adds the batch's float32 sum element-wise (Lua doubles, stored back as float32),
# so concurrent enrollments into one speaker never lose an update. ARGV[1] = sum, ARGV[2] = dim.
_ENROLL_ADD_LUA = (
    _ENROLL_AFRESH
    + _DUPLICATES
    + """
local dim = tonumber(ARGV[2])
local add = ARGV[1]
if #add ~= 4 * dim then return redis.error_reply('ERR embedding size mismatch') end
local old = redis.call('HGET', KEYS[1], 'sum')
local new = add
local created = 1
if old then
  created = 0
  if #old ~= 4 * dim then return redis.error_reply('ERR stored voiceprint size mismatch') end
  local parts = {}
  for i = 0, dim - 1 do
    local a = struct.unpack('<f', old, 4 * i + 1)
    local b = struct.unpack('<f', add, 4 * i + 1)
    parts[i + 1] = struct.pack('<f', a + b)
  end
  new = table.concat(parts)
else
  redis.call('HSET', KEYS[1], 'created_at', ARGV[6])
end
redis.call('HSET', KEYS[1], 'sum', new)
"""
    + _ENROLL_BOOKKEEPING.replace(
        "return {v, count, speech, created, duplicates}",
        "return {v, count, speech, created, duplicates, new}",
    )
)

# Sealed voiceprints: stores the new sealed sum computed by the caller, only if nobody enrolled into the
# speaker since the caller read it (revision check; the caller retries). ARGV[1] = sealed sum,
# ARGV[2] = the revision the caller read ('0' when the speaker did not exist).
_ENROLL_SET_LUA = (
    """
local rev = redis.call('HGET', KEYS[1], 'rev') or '0'
if rev ~= ARGV[2] then return {-1} end
"""
    + _ENROLL_AFRESH
    + """
-- the caller added to a sum it read before it expired: read again
if expired and ARGV[13] ~= '1' then return {-1} end
"""
    + _DUPLICATES
    + """local created = 0
if redis.call('HEXISTS', KEYS[1], 'sum') == 0 then
  created = 1
  redis.call('HSET', KEYS[1], 'created_at', ARGV[6])
end
redis.call('HSET', KEYS[1], 'sum', ARGV[1])
"""
    + _ENROLL_BOOKKEEPING
)

# KEYS: speaker hash, speakers, version, changes, expiry. ARGV: speaker id, maxlen,
# only_expired_before ('' = unconditional).
_DELETE_LUA = """
if ARGV[3] ~= '' then
  local at = redis.call('HGET', KEYS[1], 'expires_at')
  if (not at) or tonumber(at) > tonumber(ARGV[3]) then
    redis.call('ZREM', KEYS[5], ARGV[1])
    if not at then return 0 end
    redis.call('ZADD', KEYS[5], tonumber(at), ARGV[1])
    return 0
  end
end
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if n == 0 then return 0 end
local v = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'v', v, 'op', 'delete', 'id', ARGV[1])
return v
"""

# A successful verification keeps a voiceprint alive: moves its expiry (no change event: the
# embedding did not change). KEYS: speaker hash, expiry. ARGV: expires_at, speaker id.
_TOUCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[1])
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]), ARGV[2])
return 1
"""

# Sealed enrollments retried this often when other enrollments into the same speaker keep winning.
MAX_ENROLL_ATTEMPTS = 64


@dataclass(frozen=True)
class Voiceprint:
    speaker_id: str
    sum: npt.NDArray[np.float32]
    count: int
    speech_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None  # retention: when it expires unless enrolled into or verified

    def direction(self) -> npt.NDArray[np.float32]:
        """The unit vector of the mean embedding (what cosine scoring compares)."""
        return l2_normalize(self.sum)


@dataclass(frozen=True)
class EnrollResult:
    version: int
    count: int
    speech_seconds: float
    sum: npt.NDArray[np.float32]
    created: bool
    duplicates: tuple[int, ...] = ()  # indexes of the recordings already held (or twice in the request)


class DuplicateRecordings(Exception):
    """Refused: these recordings (indexes) are in the voiceprint already, or twice in the request."""

    def __init__(self, indexes: tuple[int, ...]) -> None:
        super().__init__(f"duplicate recordings {indexes}")
        self.indexes = indexes


def _duplicates(flags: object) -> tuple[int, ...]:
    return tuple(i for i, flag in enumerate(reply_text(flags)) if flag == "1")


# Bytes of a recording's digest kept in the voiceprint (the first 128 bits of SHA-256).
CLIP_DIGEST_BYTES = 16


@dataclass(frozen=True)
class HeldRecord:
    """What is held about a speaker under one model, without the voiceprint itself (an export)."""

    model: str
    utterances: int
    speech_seconds: float
    recordings_fingerprinted: int  # recordings whose digest is kept (duplicate detection)
    metadata: dict[str, Any] | None  # None: sealed under data keys that are gone (crypto-erased)
    created_at: float
    updated_at: float
    expires_at: float | None


@dataclass(frozen=True)
class Change:
    version: int
    op: Literal["upsert", "delete"]
    speaker_id: str
    stream_id: str


@dataclass(frozen=True)
class SyncPoint:
    """Where a full snapshot starts: changes after ``stream_id`` (version ``version``) are newer, within
    the history ``epoch`` (None before the first write)."""

    version: int
    stream_id: str | None
    epoch: str | None = None


class RedisVoiceprintStore:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        dim: int,
        *,
        owns_client: bool,
        changes_maxlen: int = DEFAULT_CHANGES_MAXLEN,
        vault: Vault | None = None,
        retention_s: float | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.dim = dim
        self.owns_client = owns_client
        self.changes_maxlen = changes_maxlen
        self.vault = vault if vault is not None else Vault(client, keys.namespace, None)
        self.retention_s = retention_s
        self._enroll_add = client.register_script(_ENROLL_ADD_LUA)
        self._enroll_set = client.register_script(_ENROLL_SET_LUA)
        self._delete = client.register_script(_DELETE_LUA)
        self._touch = client.register_script(_TOUCH_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        keys: KeySchema,
        dim: int,
        *,
        timeout_s: float = 2.0,
        kek: KeyEncryptionKey | None = None,
        retention_s: float | None = None,
    ) -> RedisVoiceprintStore:
        client = redis_client(url, timeout_s=timeout_s)
        vault = Vault(client, keys.namespace, kek)
        return cls(client, keys, dim, owns_client=True, vault=vault, retention_s=retention_s)

    def for_tenant(self, tenant: str) -> RedisVoiceprintStore:
        """The same client, vault and model, ``tenant``'s keys (the view does not own the client)."""
        return self.for_keys(KeySchema(self.keys.namespace, tenant, self.keys.model_key))

    def for_keys(self, keys: KeySchema) -> RedisVoiceprintStore:
        return RedisVoiceprintStore(
            self.client,
            keys,
            self.dim,
            owns_client=False,
            changes_maxlen=self.changes_maxlen,
            vault=self.vault,
            retention_s=self.retention_s,
        )

    async def close(self) -> None:
        if self.owns_client:
            await self.client.aclose()

    async def ping(self) -> bool:
        try:
            async with redis_errors():
                return bool(await self.client.ping())
        except StoreUnavailable:
            return False

    # --- sealing ---
    async def _data_keys(self, *, create: bool = False) -> DataKeys | None:
        if not self.vault.enabled:
            return None
        async with redis_errors():
            return await self.vault.data_keys(self.keys, create=create)

    def _aad(self, speaker_id: str, field_name: str) -> bytes:
        k = self.keys
        return value_aad(k.namespace, k.tenant, k.model_key, speaker_id, field_name)

    def _open(self, data_keys: DataKeys | None, speaker_id: str, field_name: str, raw: bytes) -> bytes | None:
        """A stored value as plain bytes; None when it is sealed and cannot be opened any more (its
        tenant's data keys are gone: crypto-erased)."""
        if sealed_version(raw) is None:
            return raw
        if data_keys is None:
            return None
        try:
            return data_keys.open(raw, self._aad(speaker_id, field_name))
        except CryptoError:
            return None

    def _expires_at(self, now: float) -> str:
        return "" if self.retention_s is None else repr(now + self.retention_s)

    # --- speakers ---
    async def get(self, speaker_id: str) -> Voiceprint | None:
        batch = Batch(self.client)
        self.queue_get(batch, speaker_id)
        (answer,) = await batch.run()
        return await self.voiceprint(speaker_id, answer)

    async def add_utterances(
        self,
        speaker_id: str,
        embedding_sum: npt.NDArray[np.float32],
        count: int,
        speech_seconds: float,
        metadata: dict[str, Any] | None,
        digests: list[bytes] | None = None,
        *,
        refuse_duplicates: bool = False,
    ) -> EnrollResult:
        """Atomically add ``count`` normalised embeddings (given as their sum) to the voiceprint.
        ``digests``: one per recording (``CLIP_DIGEST_BYTES``); those the voiceprint already holds are in
        the result's ``duplicates``, or refuse the whole enrollment (``DuplicateRecordings``)."""
        digests = digests or []
        vec = np.asarray(embedding_sum, dtype="<f4")
        if vec.shape != (self.dim,):
            raise ValueError(f"embedding sum has shape {vec.shape}, want ({self.dim},)")
        data_keys = await self._data_keys(create=True)
        if any(len(d) != CLIP_DIGEST_BYTES for d in digests):
            raise ValueError(f"a recording's digest is {CLIP_DIGEST_BYTES} bytes")
        meta = json.dumps(metadata, separators=(",", ":")).encode() if metadata is not None else b""
        if data_keys is not None and meta:
            meta = data_keys.seal(meta, self._aad(speaker_id, "metadata"))
        k = self.keys
        keys = [
            k.speaker(speaker_id),
            k.speakers,
            k.version,
            k.changes,
            k.models,
            k.expiry,
            k.tenants,
            k.epoch,
        ]
        now = time.time()
        shared: list[Any] = [
            count,
            repr(float(speech_seconds)),
            meta,
            repr(now),
            speaker_id,
            self.changes_maxlen,
            k.model_key,
            self._expires_at(now),
            k.tenant,
            uuid.uuid4().hex,
        ]
        checks = [b"".join(digests), "1" if refuse_duplicates else ""]
        if data_keys is None:
            async with redis_errors():
                answer = await self._enroll_add(
                    keys=keys, args=[vec.tobytes(), self.dim, *shared, "", *checks]
                )
            if int(answer[0]) == -2:
                raise DuplicateRecordings(_duplicates(answer[1]))
            version, total, speech, created, flags, new_sum = answer
            return EnrollResult(
                int(version),
                int(total),
                float(speech),
                self._parse_sum(new_sum),
                bool(int(created)),
                _duplicates(flags),
            )
        for _ in range(MAX_ENROLL_ATTEMPTS):
            async with redis_errors():
                current: Any = await self.client.hmget(k.speaker(speaker_id), ["sum", "rev", "expires_at"])
                stored, rev, expires = current
            live = stored is not None and (expires is None or float(expires) > time.time())
            old = self._open(data_keys, speaker_id, "sum", stored) if live else None
            total_sum = vec if old is None else (self._parse_sum(old) + vec).astype("<f4")
            sealed = data_keys.seal(total_sum.tobytes(), self._aad(speaker_id, "sum"))
            afresh = "1" if stored is not None and old is None else ""
            async with redis_errors():
                answer = await self._enroll_set(
                    keys=keys, args=[sealed, reply_text(rev) if rev else "0", *shared, afresh, *checks]
                )
            if int(answer[0]) == -2:
                raise DuplicateRecordings(_duplicates(answer[1]))
            if int(answer[0]) >= 0:
                version, total, speech, created, flags = answer
                return EnrollResult(
                    int(version), int(total), float(speech), total_sum, bool(int(created)), _duplicates(flags)
                )
            await asyncio.sleep(random.uniform(0.0, 0.005))  # another enrollment won: read again
        raise StoreUnavailable(f"speaker {speaker_id!r} is being enrolled into too often at once; retry")

    async def touch(self, speaker_id: str) -> None:
        """A successful verification: the voiceprint's retention starts again."""
        batch = Batch(self.client)
        self.queue_touch(batch, speaker_id)
        for answer in await batch.run():
            reply(answer)

    def queue_touch(self, batch: Batch, speaker_id: str) -> None:
        """``touch`` within ``batch`` (nothing without retention)."""
        if self.retention_s is None:
            return
        k = self.keys
        batch.script(
            self._touch, [k.speaker(speaker_id), k.expiry], [self._expires_at(time.time()), speaker_id]
        )

    def queue_get(self, batch: Batch, speaker_id: str) -> int:
        """``get`` within ``batch``: pass its reply to ``voiceprint``."""
        key = self.keys.speaker(speaker_id)
        return batch.queue(lambda pipe: pipe.hgetall(key))

    async def voiceprint(self, speaker_id: str, answer: Any) -> Voiceprint | None:
        raw = reply(answer)
        if not raw:
            return None
        return self._parse(speaker_id, raw, await self._data_keys(), time.time())

    async def held_records(self, speaker_id: str) -> list[HeldRecord]:
        """Everything stored about the speaker under every model of the tenant except the voiceprint
        itself (its sum and the recordings' digests): for a data-subject request. Expired voiceprints not
        swept yet are held, so they are listed (with their past ``expires_at``)."""
        async with redis_errors():
            model_keys = sorted({reply_text(m) for m in await self.client.smembers(self.keys.models)})
            pipe = self.client.pipeline(transaction=False)
            for model_key in model_keys:
                pipe.hgetall(self.keys.speaker_of_model(model_key, speaker_id))
            raws: list[Any] = await pipe.execute()
        data_keys = await self._data_keys()
        records = []
        for model_key, raw in zip(model_keys, raws, strict=True):
            if not raw or b"sum" not in raw:
                continue
            view = self.for_keys(KeySchema(self.keys.namespace, self.keys.tenant, model_key))
            meta_raw = raw.get(b"metadata")
            opened = view._open(data_keys, speaker_id, "metadata", meta_raw) if meta_raw else b"{}"
            expires = raw.get(b"expires_at")
            records.append(
                HeldRecord(
                    model=model_key,
                    utterances=int(raw.get(b"count", b"0")),
                    speech_seconds=round(float(raw.get(b"speech_seconds", b"0")), 3),
                    recordings_fingerprinted=len(raw.get(b"clips", b"")) // CLIP_DIGEST_BYTES,
                    metadata=json.loads(opened) if opened is not None else None,
                    created_at=float(raw.get(b"created_at", b"0")),
                    updated_at=float(raw.get(b"updated_at", b"0")),
                    expires_at=float(expires) if expires else None,
                )
            )
        return records

    async def delete_everywhere(self, speaker_id: str) -> list[str]:
        """Delete the speaker under every model of the tenant; returns the model keys it was under."""
        async with redis_errors():
            model_keys = {reply_text(m) for m in await self.client.smembers(self.keys.models)}
            model_keys.add(self.keys.model_key)
            deleted: list[str] = []
            for model_key in sorted(model_keys):
                mk = KeySchema(self.keys.namespace, self.keys.tenant, model_key)
                if await self._delete_one(mk, speaker_id, expired_before=None):
                    deleted.append(model_key)
        return deleted

    async def _delete_one(self, mk: KeySchema, speaker_id: str, expired_before: float | None) -> bool:
        version = await self._delete(
            keys=[mk.speaker(speaker_id), mk.speakers, mk.version, mk.changes, mk.expiry],
            args=[speaker_id, self.changes_maxlen, "" if expired_before is None else repr(expired_before)],
        )
        return int(version) > 0

    async def sweep_expired(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Delete the speakers (of this tenant and model) whose retention ran out; returns their ids."""
        now = time.time() if now is None else now
        async with redis_errors():
            due = [
                reply_text(r)
                for r in await self.client.zrangebyscore(self.keys.expiry, "-inf", now, start=0, num=limit)
            ]
            return [sid for sid in due if await self._delete_one(self.keys, sid, expired_before=now)]

    async def other_models_with(self, speaker_id: str) -> list[str]:
        """Model keys (other than ours) under which this speaker id is enrolled."""
        async with redis_errors():
            model_keys = sorted(reply_text(m) for m in await self.client.smembers(self.keys.models))
            found = []
            for model_key in model_keys:
                if model_key == self.keys.model_key:
                    continue
                if await self.client.exists(self.keys.speaker_of_model(model_key, speaker_id)):
                    found.append(model_key)
        return found

    async def model_keys(self) -> list[str]:
        """Every model key with stored speakers in this tenant."""
        async with redis_errors():
            return sorted(reply_text(m) for m in await self.client.smembers(self.keys.models))

    async def count(self) -> int:
        """Speakers under this model, without those that expired and are not swept yet."""
        async with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.zcard(self.keys.speakers)
            pipe.zcount(self.keys.expiry, "-inf", time.time())
            total, expired = await pipe.execute()
        return max(0, int(total) - int(expired))

    async def expired(self, speaker_ids: list[str]) -> set[str]:
        """Those of ``speaker_ids`` whose voiceprint expired (retention) and is not swept yet: reads
        treat them as gone at once, the sweeper deletes them (and their index rows) a little later."""
        if self.retention_s is None or not speaker_ids:
            return set()
        async with redis_errors():
            scores: Any = await self.client.zmscore(self.keys.expiry, speaker_ids)
        now = time.time()
        return {sid for sid, at in zip(speaker_ids, scores, strict=True) if at is not None and at <= now}

    async def list_ids(self, after: str | None, limit: int) -> list[str]:
        """Speaker ids in id order, strictly after ``after`` (a lexicographic cursor, stable under writes)."""
        lo = f"({after}" if after else "-"
        async with redis_errors():
            raw: Any = await self.client.zrange(self.keys.speakers, lo, "+", bylex=True, offset=0, num=limit)
        return [reply_text(r) for r in raw]

    async def get_many(self, speaker_ids: list[str]) -> list[Voiceprint]:
        if not speaker_ids:
            return []
        async with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in speaker_ids:
                pipe.hgetall(self.keys.speaker(sid))
            raws = await pipe.execute()
        data_keys, now = await self._data_keys(), time.time()
        parsed = [
            self._parse(sid, raw, data_keys, now) for sid, raw in zip(speaker_ids, raws, strict=True) if raw
        ]
        return [vp for vp in parsed if vp is not None]

    async def get_sums(self, speaker_ids: list[str]) -> list[npt.NDArray[np.float32] | None]:
        """Only the voiceprint sums (what the index needs), None for speakers that are gone."""
        if not speaker_ids:
            return []
        async with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in speaker_ids:
                pipe.hmget(self.keys.speaker(sid), ["sum", "expires_at"])
            raws = await pipe.execute()
        data_keys, now = await self._data_keys(), time.time()
        sums: list[npt.NDArray[np.float32] | None] = []
        for sid, (raw_sum, expires) in zip(speaker_ids, raws, strict=True):
            opened = self._open(data_keys, sid, "sum", raw_sum) if raw_sum else None
            alive = expires is None or float(expires) > now
            sums.append(self._parse_sum(opened) if opened is not None and alive else None)
        return sums

    # --- change feed for replica-local indexes ---
    async def version(self) -> int:
        async with redis_errors():
            raw = await self.client.get(self.keys.version)
        return int(raw) if raw else 0

    async def sync_point(self) -> SyncPoint:
        """The current version and last stream id, read atomically."""
        async with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.keys.version)
            pipe.xrevrange(self.keys.changes, "+", "-", count=1)
            pipe.get(self.keys.epoch)
            raw_version, last, epoch = await pipe.execute()
        stream_id = last[0][0].decode() if last else None
        return SyncPoint(
            int(raw_version) if raw_version else 0, stream_id, reply_text(epoch) if epoch else None
        )

    async def changes_after(self, stream_id: str | None, limit: int = 10_000) -> list[Change]:
        lo = f"({stream_id}" if stream_id else "-"
        async with redis_errors():
            entries: Any = await self.client.xrange(self.keys.changes, lo, "+", count=limit)
        changes = []
        for entry_id, fields in entries:
            op = reply_text(fields[b"op"])
            changes.append(
                Change(
                    version=int(fields[b"v"]),
                    op="delete" if op == "delete" else "upsert",
                    speaker_id=reply_text(fields[b"id"]),
                    stream_id=reply_text(entry_id),
                )
            )
        return changes

    async def iter_all_sums(self) -> AsyncIterator[tuple[list[str], list[npt.NDArray[np.float32]]]]:
        """Every speaker's sum, in id-ordered batches (for a full index load)."""
        after: str | None = None
        while True:
            ids = await self.list_ids(after, _SCAN_BATCH)
            if not ids:
                return
            sums = await self.get_sums(ids)
            present = [(sid, s) for sid, s in zip(ids, sums, strict=True) if s is not None]
            yield [sid for sid, _ in present], [s for _, s in present]
            after = ids[-1]

    # --- parsing ---
    def _parse_sum(self, raw: bytes) -> npt.NDArray[np.float32]:
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if vec.shape != (self.dim,):
            raise ValueError(f"stored voiceprint has {vec.size} values, model dim is {self.dim}")
        return vec

    def _parse(
        self, speaker_id: str, raw: dict[bytes, bytes], data_keys: DataKeys | None, now: float
    ) -> Voiceprint | None:
        """A stored hash as a Voiceprint; None when it expired (not yet swept) or cannot be opened."""
        expires = raw.get(b"expires_at")
        expires_at = float(expires) if expires else None
        if expires_at is not None and expires_at <= now:
            return None
        opened = self._open(data_keys, speaker_id, "sum", raw[b"sum"]) if b"sum" in raw else None
        if opened is None:
            return None
        meta_raw = raw.get(b"metadata")
        meta = self._open(data_keys, speaker_id, "metadata", meta_raw) if meta_raw else None
        return Voiceprint(
            speaker_id=speaker_id,
            sum=self._parse_sum(opened),
            count=int(raw.get(b"count", b"0")),
            speech_seconds=float(raw.get(b"speech_seconds", b"0")),
            metadata=json.loads(meta) if meta else {},
            created_at=float(raw.get(b"created_at", b"0")),
            updated_at=float(raw.get(b"updated_at", b"0")),
            expires_at=expires_at,
        )
