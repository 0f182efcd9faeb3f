"""The audit trail: who enrolled or deleted which speaker, and every refused authentication.

Each event (time, tenant, key id, speaker id, action, outcome, request id; never audio or embeddings)
is appended to the tenant's capped Redis stream and written as one structured log line (logger
``voxgate.audit``). Requests that named no valid key have no tenant: their events go to the stream of
the reserved tenant ``_unauthenticated``. ``voxgate audit --tenant NAME`` reads a stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

from app.errors import StoreUnavailable, VoxGateError
from app.store.keys import KeySchema
from app.store.redis_store import redis_errors

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AuditLog:
    def __init__(self, client: aioredis.Redis, namespace: str, maxlen: int) -> None:
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen

    def _stream(self, tenant: str) -> str:
        return KeySchema(self.namespace, tenant, "-").audit

    async def record(self, event: AuditEvent) -> None:
        """Append the event and log it. A Redis failure here is logged, not raised: the request's own
        answer must not change because its audit entry could not be stored (the log line still is)."""
        log.info("audit %s %s", event.action, event.outcome, extra={"audit": event.fields()})
        try:
            async with redis_errors():
                await self.client.xadd(
                    self._stream(event.tenant),
                    dict(event.fields()),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
        except StoreUnavailable as exc:
            log.error("audit event not stored in Redis: %s", exc, extra={"audit": event.fields()})

    async def read(self, tenant: str, since: float | None = None, limit: int = 1000) -> list[AuditEvent]:
        """The tenant's events from ``since`` (Unix seconds) on, oldest first."""
        lo = "-" if since is None else f"{int(since * 1000)}-0"
        async with redis_errors():
            entries: Any = await self.client.xrange(self._stream(tenant), lo, "+", count=limit)
        events = []
        for _, raw in entries:
            values = {_text(k): _text(v) for k, v in raw.items()}
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
