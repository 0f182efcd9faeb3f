"""Retention: voiceprints nobody enrolled into or verified against for ``VOXGATE_RETENTION_DAYS`` go away.

Every enrollment and every successful verification moves a speaker's ``expires_at``. Reads treat an
expired speaker as gone at once; this sweeper deletes them for good (hash, lists, index rows on every
replica through the change stream), every ``interval_s``, for every tenant and model. Sweeps by several
replicas are harmless: each deletion checks, atomically, that the speaker is still expired, so each
expiry is reported once (``on_expired``: the audit trail), by the replica that deleted it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.core.periodic import Periodic
from app.store.connection import redis_errors
from app.store.keys import KeySchema
from app.store.redis_store import RedisVoiceprintStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0


# Told of each sweep's deletions: tenant, model key, speaker ids.
OnExpired = Callable[[str, str, list[str]], Awaitable[None]]


class RetentionSweeper:
    def __init__(
        self,
        store: RedisVoiceprintStore,
        interval_s: float = SWEEP_INTERVAL_S,
        on_expired: OnExpired | None = None,
    ) -> None:
        self.store = store
        self.on_expired = on_expired
        self._periodic = Periodic("retention sweep", interval_s, self.sweep)

    async def sweep(self) -> int:
        """One pass over every tenant and model; the number of voiceprints deleted."""
        root = self.store
        async with redis_errors():
            tenants: Any = await root.client.smembers(root.keys.tenants)
        deleted = 0
        for raw_tenant in sorted(tenants):
            tenant = raw_tenant.decode() if isinstance(raw_tenant, bytes) else str(raw_tenant)
            view = root.for_tenant(tenant)
            for model_key in await view.model_keys():
                gone = await root.for_keys(KeySchema(root.keys.namespace, tenant, model_key)).sweep_expired()
                if gone and self.on_expired is not None:
                    await self.on_expired(tenant, model_key, gone)
                if gone:
                    log.info(
                        "expired voiceprints deleted",
                        extra={"tenant": tenant, "model": model_key, "speakers": len(gone)},
                    )
                deleted += len(gone)
        return deleted

    def start(self) -> None:
        if self.store.retention_s is not None:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
