"""API keys, tenant policies and audit events made and read the way the service does, for tests that
talk to an app or a ``voxgate serve`` process."""

from __future__ import annotations

import asyncio
from typing import Any

from app.access.audit import AuditEvent, AuditLog
from app.access.auth import ApiKeys
from app.core.settings import Settings
from app.store.connection import redis_client


def new_key(settings: Settings, tenant: str, **options: Any) -> tuple[str, str]:
    """(key id, key text) for ``tenant``, created in the settings' Redis namespace (``options``: those of
    ``ApiKeys.create``: rate, burst, scopes, expires_at, thresholds)."""

    async def create() -> tuple[str, str]:
        client = redis_client(settings.redis_url or "")
        try:
            record, secret = await ApiKeys(client, settings.redis_namespace).create(
                tenant, "tests", **options
            )
            return record.key_id, secret
        finally:
            await client.aclose()

    return asyncio.run(create())


def audit_events(settings: Settings, tenant: str, **options: Any) -> list[AuditEvent]:
    """The tenant's audit events, oldest first (``options``: those of ``AuditLog.read``)."""

    async def read() -> list[AuditEvent]:
        client = redis_client(settings.redis_url or "")
        try:
            return await AuditLog(client, settings.redis_namespace, 1000).read(tenant, **options)
        finally:
            await client.aclose()

    return asyncio.run(read())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
