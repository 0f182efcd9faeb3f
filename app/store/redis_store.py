"""Redis voiceprint store: the system of record for enrolled speakers.

A voiceprint is kept as the *sum* of the L2-normalised utterance embeddings plus their count, so an
enrollment adds atomically (one Lua script) and the mean is ``sum / count``; its direction — all
cosine scoring needs — is the direction of the sum. Key layout: ``app.store.keys`` and
docs/redis-schema.md.

All calls go through ``redis.asyncio`` (never blocking the event loop). Connection problems are
raised as ``StoreUnavailable`` (503); the client reconnects by itself on the next call, so the
service recovers without a restart once Redis is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
import redis.exceptions as redis_exc

from app.errors import StoreUnavailable
from app.store.keys import KeySchema
from app.vectors import l2_normalize

# Changes kept in the stream for replicas to replay; a replica further behind reloads everything.
DEFAULT_CHANGES_MAXLEN = 100_000
_SCAN_BATCH = 2000

# Adds a batch of utterance embeddings to a voiceprint: float32 sums element-wise (Lua doubles,
# stored back as float32), counters, bookkeeping, the speaker set, the version and the change stream
# — all in one atomic step, so concurrent enrollments into one speaker never lose an update.
_ENROLL_LUA = """
local dim = tonumber(ARGV[7])
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
  redis.call('HSET', KEYS[1], 'created_at', ARGV[5])
end
redis.call('HSET', KEYS[1], 'sum', new, 'updated_at', ARGV[5])
local count = redis.call('HINCRBY', KEYS[1], 'count', tonumber(ARGV[2]))
local speech = redis.call('HINCRBYFLOAT', KEYS[1], 'speech_seconds', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[4]) end
redis.call('ZADD', KEYS[2], 0, ARGV[6])
local v = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'v', v, 'op', 'upsert', 'id', ARGV[6])
redis.call('SADD', KEYS[5], ARGV[9])
return {v, count, speech, new, created}
"""

_DELETE_LUA = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n == 0 then return 0 end
local v = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'v', v, 'op', 'delete', 'id', ARGV[1])
return v
"""


@dataclass(frozen=True)
class Voiceprint:
    speaker_id: str
    sum: npt.NDArray[np.float32]
    count: int
    speech_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0

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


@dataclass(frozen=True)
class Change:
    version: int
    op: Literal["upsert", "delete"]
    speaker_id: str
    stream_id: str


@dataclass(frozen=True)
class SyncPoint:
    """Where a full snapshot starts: changes after ``stream_id`` (version ``version``) are newer."""

    version: int
    stream_id: str | None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"unexpected Redis reply {type(value).__name__}")


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Map driver connection failures to ``StoreUnavailable`` (the one place that does it)."""
    try:
        yield
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.BusyLoadingError, OSError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc


class RedisVoiceprintStore:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        dim: int,
        *,
        owns_client: bool,
        changes_maxlen: int = DEFAULT_CHANGES_MAXLEN,
    ) -> None:
        self.client = client
        self.keys = keys
        self.dim = dim
        self.owns_client = owns_client
        self.changes_maxlen = changes_maxlen
        self._enroll = client.register_script(_ENROLL_LUA)
        self._delete = client.register_script(_DELETE_LUA)

    @classmethod
    def from_url(cls, url: str, keys: KeySchema, dim: int, *, timeout_s: float = 2.0) -> RedisVoiceprintStore:
        # Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=10,
            decode_responses=False,
        )
        return cls(client, keys, dim, owns_client=True)

    def for_tenant(self, tenant: str) -> RedisVoiceprintStore:
        """The same client and model, ``tenant``'s keys (the view does not own the client)."""
        keys = KeySchema(self.keys.namespace, tenant, self.keys.model_key)
        return RedisVoiceprintStore(
            self.client, keys, self.dim, owns_client=False, changes_maxlen=self.changes_maxlen
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

    # --- speakers ---
    async def get(self, speaker_id: str) -> Voiceprint | None:
        async with redis_errors():
            raw: Any = await self.client.hgetall(self.keys.speaker(speaker_id))
        return self._parse(speaker_id, raw) if raw else None

    async def add_utterances(
        self,
        speaker_id: str,
        embedding_sum: npt.NDArray[np.float32],
        count: int,
        speech_seconds: float,
        metadata: dict[str, Any] | None,
    ) -> EnrollResult:
        """Atomically add ``count`` normalised embeddings (given as their sum) to the voiceprint."""
        vec = np.asarray(embedding_sum, dtype="<f4")
        if vec.shape != (self.dim,):
            raise ValueError(f"embedding sum has shape {vec.shape}, want ({self.dim},)")
        k = self.keys
        args: list[Any] = [
            vec.tobytes(),
            count,
            repr(float(speech_seconds)),
            json.dumps(metadata, separators=(",", ":")) if metadata is not None else "",
            repr(time.time()),
            speaker_id,
            self.dim,
            self.changes_maxlen,
            k.model_key,
        ]
        async with redis_errors():
            version, total, speech, new_sum, created = await self._enroll(
                keys=[k.speaker(speaker_id), k.speakers, k.version, k.changes, k.models], args=args
            )
        return EnrollResult(
            version=int(version),
            count=int(total),
            speech_seconds=float(speech),
            sum=self._parse_sum(new_sum),
            created=bool(int(created)),
        )

    async def delete_everywhere(self, speaker_id: str) -> list[str]:
        """Delete the speaker under every model of the tenant; returns the model keys it was under."""
        async with redis_errors():
            model_keys = {_text(m) for m in await self.client.smembers(self.keys.models)}
            model_keys.add(self.keys.model_key)
            deleted: list[str] = []
            for model_key in sorted(model_keys):
                mk = KeySchema(self.keys.namespace, self.keys.tenant, model_key)
                version = await self._delete(
                    keys=[mk.speaker(speaker_id), mk.speakers, mk.version, mk.changes],
                    args=[speaker_id, self.changes_maxlen],
                )
                if int(version) > 0:
                    deleted.append(model_key)
        return deleted

    async def other_models_with(self, speaker_id: str) -> list[str]:
        """Model keys (other than ours) under which this speaker id is enrolled."""
        async with redis_errors():
            model_keys = sorted(_text(m) for m in await self.client.smembers(self.keys.models))
            found = []
            for model_key in model_keys:
                if model_key == self.keys.model_key:
                    continue
                if await self.client.exists(self.keys.speaker_of_model(model_key, speaker_id)):
                    found.append(model_key)
        return found

    async def count(self) -> int:
        async with redis_errors():
            return int(await self.client.zcard(self.keys.speakers))

    async def list_ids(self, after: str | None, limit: int) -> list[str]:
        """Speaker ids in id order, strictly after ``after`` (a lexicographic cursor, stable under writes)."""
        lo = f"({after}" if after else "-"
        async with redis_errors():
            raw: Any = await self.client.zrange(self.keys.speakers, lo, "+", bylex=True, offset=0, num=limit)
        return [_text(r) for r in raw]

    async def get_many(self, speaker_ids: list[str]) -> list[Voiceprint]:
        if not speaker_ids:
            return []
        async with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in speaker_ids:
                pipe.hgetall(self.keys.speaker(sid))
            raws = await pipe.execute()
        return [self._parse(sid, raw) for sid, raw in zip(speaker_ids, raws, strict=True) if raw]

    async def get_sums(self, speaker_ids: list[str]) -> list[npt.NDArray[np.float32] | None]:
        """Only the voiceprint sums (what the index needs), None for speakers that are gone."""
        if not speaker_ids:
            return []
        async with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in speaker_ids:
                pipe.hget(self.keys.speaker(sid), "sum")
            raws = await pipe.execute()
        return [self._parse_sum(raw) if raw else None for raw in raws]

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
            raw_version, last = await pipe.execute()
        stream_id = last[0][0].decode() if last else None
        return SyncPoint(int(raw_version) if raw_version else 0, stream_id)

    async def changes_after(self, stream_id: str | None, limit: int = 10_000) -> list[Change]:
        lo = f"({stream_id}" if stream_id else "-"
        async with redis_errors():
            entries: Any = await self.client.xrange(self.keys.changes, lo, "+", count=limit)
        changes = []
        for entry_id, fields in entries:
            op = _text(fields[b"op"])
            changes.append(
                Change(
                    version=int(fields[b"v"]),
                    op="delete" if op == "delete" else "upsert",
                    speaker_id=_text(fields[b"id"]),
                    stream_id=_text(entry_id),
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

    def _parse(self, speaker_id: str, raw: dict[bytes, bytes]) -> Voiceprint:
        meta_raw = raw.get(b"metadata")
        return Voiceprint(
            speaker_id=speaker_id,
            sum=self._parse_sum(raw[b"sum"]),
            count=int(raw.get(b"count", b"0")),
            speech_seconds=float(raw.get(b"speech_seconds", b"0")),
            metadata=json.loads(meta_raw) if meta_raw else {},
            created_at=float(raw.get(b"created_at", b"0")),
            updated_at=float(raw.get(b"updated_at", b"0")),
        )
