"""Per-tenant voiceprints on one replica: a view of the Redis store and a replica-local index each.

Tenants never share a key or an index: every tenant's voiceprints live under its own key prefix
(``app.store.keys``) and are searched in its own ``VoiceprintIndex``, kept in step with Redis by its
own ``IndexSyncer``. A tenant's index is loaded the first time this replica needs it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import numpy.typing as npt

from app.core.errors import StoreUnavailable
from app.store.index import VoiceprintIndex
from app.store.redis_store import RedisVoiceprintStore
from app.store.sync import IndexSyncer

# How long start-up waits for Redis before giving up (an embedded redis-server is already up by then).
REDIS_STARTUP_TIMEOUT_S = 15.0


class TenantIndexes:
    def __init__(self, store: RedisVoiceprintStore, sync_interval_s: float) -> None:
        self._root = store
        self._sync_interval_s = sync_interval_s
        self._stores: dict[str, RedisVoiceprintStore] = {}
        self._syncers: dict[str, IndexSyncer] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    @property
    def root(self) -> RedisVoiceprintStore:
        return self._root

    def store(self, tenant: str) -> RedisVoiceprintStore:
        """The tenant's voiceprints in Redis (same client, the tenant's key prefix)."""
        view = self._stores.get(tenant)
        if view is None:
            view = self._stores[tenant] = self._root.for_tenant(tenant)
        return view

    async def start(self, tenant: str) -> None:
        """Load ``tenant``'s index at start-up, waiting for Redis up to ``REDIS_STARTUP_TIMEOUT_S``."""
        deadline = time.monotonic() + REDIS_STARTUP_TIMEOUT_S
        while True:
            try:
                await self.index(tenant)
                return
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)

    async def index(self, tenant: str) -> VoiceprintIndex:
        """The tenant's index, loaded (and its syncer started) on first use."""
        syncer = self._syncers.get(tenant)
        if syncer is not None:
            return syncer.index
        lock = self._loading.setdefault(tenant, asyncio.Lock())
        async with lock:
            syncer = self._syncers.get(tenant)
            if syncer is None:
                store = self.store(tenant)
                syncer = IndexSyncer(store, VoiceprintIndex(store.dim), self._sync_interval_s)
                await syncer.start()  # raises StoreUnavailable when Redis is unreachable
                self._syncers[tenant] = syncer
        return syncer.index

    def in_sync(self, tenant: str) -> bool:
        syncer = self._syncers.get(tenant)
        return syncer is not None and syncer.healthy

    @property
    def healthy(self) -> bool:
        """Every loaded tenant index reached Redis on its last poll and its syncer runs."""
        return all(s.healthy and s.running for s in self._syncers.values())

    @property
    def last_error(self) -> str | None:
        return next((s.last_error for s in self._syncers.values() if s.last_error), None)

    def indexed_speakers(self) -> int:
        return sum(len(s.index) for s in self._syncers.values())

    async def upsert(self, tenant: str, speaker_id: str, voiceprint_sum: npt.NDArray[np.float32]) -> None:
        """Read-your-writes on this replica; other replicas catch up through the change stream."""
        await self.index(tenant)
        await self._syncers[tenant].write_through(speaker_id, voiceprint_sum)

    async def remove(self, tenant: str, speaker_id: str) -> None:
        syncer = self._syncers.get(tenant)
        if syncer is not None:
            await syncer.write_through(speaker_id, None)

    async def stop(self) -> None:
        for syncer in self._syncers.values():
            await syncer.stop()
        self._syncers.clear()
