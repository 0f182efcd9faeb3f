"""Retention: voiceprints nobody enrolled into or verified against for ``VOXGATE_RETENTION_DAYS`` go away.

Every enrollment and every successful verification records a speaker's last use; a voiceprint expires
at its last use plus the retention in force *now*, so lowering (or raising) the setting applies to the
voiceprints already stored at once. Reads treat an expired speaker as gone at once; this sweeper deletes
them for good (hash, lists, index rows on every replica through the change stream), every
``interval_s``, for every tenant and model. Sweeps by several replicas are harmless: each deletion
checks, atomically, that the speaker is still expired, so each expiry is reported once (``on_expired``:
the audit trail), by the replica that deleted it.

Voiceprints written by older versions kept a fixed expiry instead; ``convert_legacy_expiry`` gives them
a last use (start-up walks everything once per namespace; each sweep converts what replicas of an older
version wrote meanwhile, during a rolling upgrade).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from app.core.periodic import Periodic
from app.store.connection import redis_errors, reply_text
from app.store.keys import KeySchema, last_use_converted_key
from app.store.redis_store import RedisVoiceprintStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0


async def every_model_store(root: RedisVoiceprintStore) -> AsyncIterator[RedisVoiceprintStore]:
    """A view of ``root`` for every tenant and every model with stored voiceprints."""
    async with redis_errors():
        tenants: Any = await root.client.smembers(root.keys.tenants)
    for tenant in sorted(reply_text(t) for t in tenants):
        for model_key in await root.for_tenant(tenant).model_keys():
            yield root.for_keys(KeySchema(root.keys.namespace, tenant, model_key))


async def convert_legacy_expiry(root: RedisVoiceprintStore, *, everything: bool | None = None) -> int:
    """Give every voiceprint of an older version a last use (see the module's docstring); returns how
    many were converted. ``everything``: walk every speaker, not only the legacy expiry sets; by
    default once per namespace (a marker in Redis says it was done)."""
    marker = last_use_converted_key(root.keys.namespace)
    if everything is None:
        async with redis_errors():
            everything = not await root.client.exists(marker)
    converted = 0
    async for store in every_model_store(root):
        converted += await store.convert_legacy_expiry(everything=everything)
    if everything:
        async with redis_errors():
            await root.client.set(marker, "1")
    if converted:
        log.info("voiceprints of an older version now record their last use", extra={"speakers": converted})
    return converted


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
        await convert_legacy_expiry(self.store, everything=False)
        deleted = 0
        async for view in every_model_store(self.store):
            gone = await view.sweep_expired()
            if gone and self.on_expired is not None:
                await self.on_expired(view.keys.tenant, view.keys.model_key, gone)
            if gone:
                log.info(
                    "expired voiceprints deleted",
                    extra={"tenant": view.keys.tenant, "model": view.keys.model_key, "speakers": len(gone)},
                )
            deleted += len(gone)
        return deleted

    def start(self) -> None:
        if self.store.retention_s is not None:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
