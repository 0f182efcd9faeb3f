"""The audit trail: every decision and every change, administrative act and refusal, per tenant.

Each event (time, tenant, key id, speaker id, action, outcome, request id; for a decision its score,
threshold, where the threshold came from and the decision; for an operator's act who ran it and what it
did) is appended to a capped Redis stream and written as one structured log line (logger
``voxgate.audit``). Never audio, embeddings or metadata: what stays after an erasure is biometric-free.

A tenant has three streams, each capped at ``VOXGATE_AUDIT_MAX_EVENTS`` on its own, so that the busy ones
cannot push the rare ones out:

- the trail (``{ns}:{tenant}:audit``): enrollments, deletions, retention expiries, key creation and
  revocation, lockouts and their clearing, policy changes, exports, the tenant's erasure;
- the decisions (``...:audit:decisions``): every verify and identify, thousands a second at most;
- the refusals any caller can cause at the rate it sends (``...:audit:refused``): its keys' rate-limit and
  scope refusals, verifications of a locked speaker.

A refused authentication has proved no tenant (whatever key id it names): its events go to the stream of
the reserved tenant ``_unauthenticated``, with the key id when it names a stored key.
``voxgate audit --tenant NAME`` reads a tenant's streams, merged in time order.

Writing an event never changes a request's answer: an event Redis did not take is logged at ERROR with
all its fields (``audit event not stored``), never dropped silently. Decisions queue their event into the
``Batch`` of the decision's other writes (``queue``): no round trip of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from app.core.errors import StoreUnavailable, VoxGateError
from app.store.connection import Batch, redis_errors, reply_text
from app.store.keys import KeySchema

log = logging.getLogger("voxgate.audit")

# Stream entries read per call when a whole stream is scanned (a speaker's export): the event loop gets
# a turn between chunks.
SCAN_CHUNK = 1000


@dataclass(frozen=True)
class AuditEvent:
    time: float
    tenant: str
    key_id: str | None
    speaker_id: str | None
    # enroll, delete, verify, identify, expire (retention), export, lockout, lockout_clear, key_create,
    # key_revoke, policy, tenant_erase; refusals: authenticate, authorize (scope), rate_limit
    action: str
    outcome: str  # ok, or the error code the request was answered with
    request_id: str | None
    # --- decisions (verify, identify) ---
    score: float | None = None
    threshold: float | None = None
    threshold_source: str | None = None  # model, service, tenant, key or request
    match: bool | None = None
    # --- operators' acts ---
    actor: str | None = None  # who ran the command (cli:user@host)
    detail: str | None = None  # what it did, in words (never biometric data)

    def fields(self) -> dict[str, str]:
        """The stream entry: only the fields that are set (fewer bytes per event)."""
        values: dict[str, str] = {}
        for name, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, bool):
                values[name] = "1" if value else "0"
            elif isinstance(value, float) and name != "time":
                values[name] = f"{value:.6g}"
            else:
                values[name] = str(value)
        return values

    def stream_fields(self) -> dict[str, str]:
        """The stream entry: the tenant is the stream's, the time its entry id's (milliseconds)."""
        return {k: v for k, v in self.fields().items() if k not in ("time", "tenant")}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, entry_id: Any, raw: dict[Any, Any], tenant: str) -> AuditEvent:
        values = {reply_text(k): reply_text(v) for k, v in raw.items()}
        milliseconds, _ = _stream_id(entry_id)

        def number(name: str) -> float | None:
            try:
                return float(values[name]) if values.get(name) else None
            except ValueError:
                return None

        match = values.get("match")
        return cls(
            time=number("time") or milliseconds / 1000,  # events written before: their own time
            tenant=values.get("tenant", tenant),
            key_id=values.get("key_id") or None,
            speaker_id=values.get("speaker_id") or None,
            action=values.get("action", ""),
            outcome=values.get("outcome", ""),
            request_id=values.get("request_id") or None,
            score=number("score"),
            threshold=number("threshold"),
            threshold_source=values.get("threshold_source") or None,
            match=None if not match else match == "1",
            actor=values.get("actor") or None,
            detail=values.get("detail") or None,
        )


@dataclass
class AuditNote:
    """What an audited block adds to its event."""

    detail: str | None = None


DECISION_ACTIONS = frozenset({"verify", "identify"})
# Events any client can cause at the rate it sends (not actions on the tenant's data).
REFUSAL_ACTIONS = frozenset({"rate_limit", "authorize"})
REFUSAL_OUTCOMES = frozenset({"speaker_locked"})


def _stream_id(entry_id: Any) -> tuple[int, int]:
    milliseconds, _, sequence = reply_text(entry_id).partition("-")
    return int(milliseconds), int(sequence or 0)


class AuditLog:
    def __init__(self, client: aioredis.Redis, namespace: str, maxlen: int) -> None:
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen

    def streams(self, tenant: str) -> tuple[str, str, str]:
        """The tenant's trail, decisions and refusals streams."""
        return KeySchema(self.namespace, tenant, "-").audit_streams

    def _stream(self, event: AuditEvent) -> str:
        trail, decisions, refusals = self.streams(event.tenant)
        if event.action in REFUSAL_ACTIONS or event.outcome in REFUSAL_OUTCOMES:
            return refusals
        return decisions if event.action in DECISION_ACTIONS else trail

    def _xadd(self, pipe: Any, event: AuditEvent) -> Any:
        return pipe.xadd(self._stream(event), event.stream_fields(), maxlen=self.maxlen, approximate=True)

    @staticmethod
    def _log(event: AuditEvent) -> None:
        log.info("audit %s %s", event.action, event.outcome, extra={"audit": event.fields()})

    @staticmethod
    def not_stored(event: AuditEvent, why: object) -> None:
        """The one way an event Redis did not take is reported: at ERROR, with every field."""
        log.error("audit event not stored in Redis: %s", why, extra={"audit": event.fields()})

    async def record(self, event: AuditEvent) -> None:
        """Append the event and log it. A Redis failure here is logged, not raised: the request's own
        answer must not change because its audit entry could not be stored (the log line still is)."""
        self._log(event)
        try:
            async with redis_errors():
                await self._xadd(self.client, event)
        except StoreUnavailable as exc:
            self.not_stored(event, exc)

    def queue(self, batch: Batch, event: AuditEvent) -> int:
        """Log the event and queue its append into ``batch``; pass the batch's reply to ``confirm``."""
        self._log(event)
        return batch.queue(lambda pipe: self._xadd(pipe, event))

    def confirm(self, event: AuditEvent, reply: object) -> None:
        """After the batch ran (``reply`` its reply, or the exception that failed the whole batch)."""
        if isinstance(reply, Exception):
            self.not_stored(event, reply)

    async def read(
        self,
        tenant: str,
        since: float | None = None,
        limit: int = 1000,
        *,
        speaker_id: str | None = None,
    ) -> list[AuditEvent]:
        """The tenant's events (every stream) from ``since`` (Unix seconds) on, oldest first; only those
        naming ``speaker_id`` when given (then every stream is scanned, in chunks)."""
        if speaker_id is not None:
            found = [e async for e in self.scan(tenant, since) if e.speaker_id == speaker_id]
            return sorted(found, key=lambda e: e.time)[:limit]
        lo = "-" if since is None else f"{int(since * 1000)}-0"
        entries: list[tuple[tuple[int, int], Any]] = []
        async with redis_errors():
            for stream in self.streams(tenant):
                chunk: Any = await self.client.xrange(stream, lo, "+", count=limit)
                entries += [(_stream_id(entry_id), raw) for entry_id, raw in chunk]
        entries.sort(key=lambda entry: entry[0])
        return [AuditEvent.parse(f"{ms}-{seq}", raw, tenant) for (ms, seq), raw in entries[:limit]]

    async def scan(self, tenant: str, since: float | None = None) -> AsyncIterator[AuditEvent]:
        """Every event of the tenant from ``since`` on, stream after stream (not merged in time order),
        SCAN_CHUNK entries per round trip so that a long trail does not hold the event loop."""
        for stream in self.streams(tenant):
            lo = "-" if since is None else f"{int(since * 1000)}-0"
            while True:
                async with redis_errors():
                    chunk: Any = await self.client.xrange(stream, lo, "+", count=SCAN_CHUNK)
                for entry_id, raw in chunk:
                    yield AuditEvent.parse(entry_id, raw, tenant)
                if len(chunk) < SCAN_CHUNK:
                    break
                lo = "(" + reply_text(chunk[-1][0])
                await asyncio.sleep(0)

    async def expired(self, tenant: str, model_key: str, speaker_ids: list[str]) -> None:
        """The retention sweeper deleted these voiceprints (its ``on_expired``): one event each."""
        for speaker_id in speaker_ids:
            await self.record(
                AuditEvent(
                    time.time(), tenant, None, speaker_id, "expire", "ok", None,
                    detail=f"retention ran out: deleted under model {model_key}",
                )
            )  # fmt: skip

    @asynccontextmanager
    async def audited(
        self, tenant: str, key_id: str | None, action: str, speaker_id: str | None, request_id: str | None
    ) -> AsyncIterator[AuditNote]:
        """Record ``action`` with the outcome of the block it wraps (its error code, or ``ok``) and the
        detail the block noted."""
        outcome = "ok"
        note = AuditNote()
        try:
            yield note
        except VoxGateError as exc:
            outcome = exc.code
            raise
        except BaseException:
            outcome = "internal_error"
            raise
        finally:
            await self.record(
                AuditEvent(
                    time.time(), tenant, key_id, speaker_id, action, outcome, request_id, detail=note.detail
                )
            )
