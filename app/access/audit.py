"""The audit trail: who enrolled or deleted which speaker, every refused authentication and every
rate-limited request.

Each event (time, tenant, key id, speaker id, action, outcome, request id; never audio or embeddings)
is appended to a capped Redis stream and written as one structured log line (logger ``voxgate.audit``).
Enrollments and deletions go to the tenant's trail; its keys' rate-limit refusals to a stream of their
own, so that a flood of refused requests cannot push the trail's oldest entries out of the cap. A
refused authentication has proved no tenant (whatever key id it names): its events go to the stream of
the reserved tenant ``_unauthenticated``, with the key id when it names a stored key.
``voxgate audit --tenant NAME`` reads a tenant's streams, merged in time order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from app.core.errors import StoreUnavailable, VoxGateError
from app.store.connection import redis_errors, reply_text
from app.store.keys import KeySchema

log = logging.getLogger("voxgate.audit")

_FIELDS = ("time", "tenant", "key_id", "speaker_id", "action", "outcome", "request_id")


@dataclass(frozen=True)
class AuditEvent:
    time: float
    tenant: str
    key_id: str | None
    speaker_id: str | None
    action: str  # enroll, delete, authenticate, rate_limit
    outcome: str  # ok, or the error code the request was answered with
    request_id: str | None

    def fields(self) -> dict[str, str]:
        return {name: "" if value is None else str(value) for name, value in asdict(self).items()}


# Events any client can cause at the rate it sends (not actions on the tenant's data).
REFUSAL_ACTIONS = frozenset({"rate_limit"})


def _stream_id(entry_id: Any) -> tuple[int, int]:
    milliseconds, _, sequence = reply_text(entry_id).partition("-")
    return int(milliseconds), int(sequence or 0)


class AuditLog:
    def __init__(self, client: aioredis.Redis, namespace: str, maxlen: int) -> None:
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen

    def _streams(self, tenant: str) -> tuple[str, str]:
        schema = KeySchema(self.namespace, tenant, "-")
        return schema.audit, schema.audit_refusals

    def _stream(self, event: AuditEvent) -> str:
        trail, refusals = self._streams(event.tenant)
        return refusals if event.action in REFUSAL_ACTIONS else trail

    async def record(self, event: AuditEvent) -> None:
        """Append the event and log it. A Redis failure here is logged, not raised: the request's own
        answer must not change because its audit entry could not be stored (the log line still is)."""
        log.info("audit %s %s", event.action, event.outcome, extra={"audit": event.fields()})
        try:
            async with redis_errors():
                await self.client.xadd(
                    self._stream(event),
                    dict(event.fields()),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
        except StoreUnavailable as exc:
            log.error("audit event not stored in Redis: %s", exc, extra={"audit": event.fields()})

    async def read(self, tenant: str, since: float | None = None, limit: int = 1000) -> list[AuditEvent]:
        """The tenant's events (trail and refusals) from ``since`` (Unix seconds) on, oldest first."""
        lo = "-" if since is None else f"{int(since * 1000)}-0"
        entries: list[tuple[tuple[int, int], Any]] = []
        async with redis_errors():
            for stream in self._streams(tenant):
                found: Any = await self.client.xrange(stream, lo, "+", count=limit)
                entries += [(_stream_id(entry_id), raw) for entry_id, raw in found]
        entries.sort(key=lambda entry: entry[0])
        events = []
        for _, raw in entries[:limit]:
            values = {reply_text(k): reply_text(v) for k, v in raw.items()}
            events.append(
                AuditEvent(
                    time=float(values.get("time", "0")),
                    tenant=values.get("tenant", tenant),
                    key_id=values.get("key_id") or None,
                    speaker_id=values.get("speaker_id") or None,
                    action=values.get("action", ""),
                    outcome=values.get("outcome", ""),
                    request_id=values.get("request_id") or None,
                )
            )
        return events

    @asynccontextmanager
    async def audited(
        self, tenant: str, key_id: str | None, action: str, speaker_id: str | None, request_id: str | None
    ) -> AsyncIterator[None]:
        """Record ``action`` with the outcome of the block it wraps (its error code, or ``ok``)."""
        outcome = "ok"
        try:
            yield
        except VoxGateError as exc:
            outcome = exc.code
            raise
        except BaseException:
            outcome = "internal_error"
            raise
        finally:
            await self.record(
                AuditEvent(time.time(), tenant, key_id, speaker_id, action, outcome, request_id)
            )
