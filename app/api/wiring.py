"""Everything a running app holds besides the engine, built and torn down in one place: the Redis store
and vault, the tenants' indexes and their sync, retention, decoding, admission, and the request gate
(keys, rate limits, audit). ``app.api.factory``'s lifespan enters ``open_state`` and yields what it gives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from prometheus_client import CollectorRegistry, Counter

from app.access.audit import AuditLog
from app.access.auth import ApiKeys, Gate
from app.access.lockout import Lockout
from app.access.ratelimit import RateLimiter
from app.api.forms import Forms
from app.api.state import AppState
from app.core.crypto import KeyEncryptionKey
from app.core.errors import StoreUnavailable
from app.core.settings import Settings, is_loopback
from app.engine.admission import (
    Admission,
    HeapTrimmer,
    MemoryBudget,
    OnTheirWay,
    SharedMemoryBudget,
    SharedOnTheirWay,
)
from app.engine.board import WorkerSlot
from app.engine.engine import Engine
from app.engine.intake import AudioIntake
from app.speakers.operations import SpeakerOperations
from app.speakers.policy import Policy
from app.store.connection import redis_errors
from app.store.keys import KeySchema
from app.store.redis_store import RedisVoiceprintStore
from app.store.retention import RetentionSweeper
from app.store.tenants import REDIS_STARTUP_TIMEOUT_S, TenantIndexes
from app.store.thresholds import TenantPolicies

log = logging.getLogger(__name__)


def voiceprint_kek(settings: Settings) -> KeyEncryptionKey | None:
    """The key-encryption key of the settings (``CryptoError`` when it is malformed), or None."""
    if settings.voiceprint_key is None:
        return None
    return KeyEncryptionKey.from_text(settings.voiceprint_key.get_secret_value())


async def _verify_vault(store: RedisVoiceprintStore) -> None:
    """The store's encryption and this replica's key agree, or start-up fails (waits for Redis)."""
    deadline = time.monotonic() + REDIS_STARTUP_TIMEOUT_S
    while True:
        try:
            async with redis_errors():
                await store.vault.verify()
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


@asynccontextmanager
async def open_state(
    settings: Settings,
    engine: Engine,
    forms: Forms,
    registry: CollectorRegistry,
    *,
    slot: WorkerSlot | None = None,
    exposition: CollectorRegistry | None = None,
) -> AsyncIterator[AppState]:
    if settings.redis_url is None:
        raise ValueError(
            "settings.redis_url is unset: `voxgate serve` starts an embedded Redis, tests pass one"
        )
    if not settings.auth_required and not is_loopback(settings.host):
        log.warning(
            "VOXGATE_AUTH=off on %s: every voiceprint can be read, changed and deleted by anyone who reaches "
            "the port",
            settings.host,
        )
    manifest = engine.manifest
    async with AsyncExitStack() as stack:
        intake = AudioIntake(workers=settings.decode_workers, max_seconds=settings.max_audio_seconds)
        stack.callback(intake.close)
        store = RedisVoiceprintStore.from_url(
            settings.redis_url,
            KeySchema(settings.redis_namespace, settings.tenant, manifest.model_key()),
            manifest.embedding_dim,
            kek=voiceprint_kek(settings),
            retention_s=settings.retention_s,
        )
        stack.push_async_callback(store.close)
        await _verify_vault(store)
        tenants = TenantIndexes(store, settings.index_sync_interval_s)
        stack.push_async_callback(tenants.stop)
        await tenants.start(settings.tenant)
        client, ns = store.client, settings.redis_namespace
        audit = AuditLog(client, ns, settings.audit_max_events)

        sweeper = RetentionSweeper(store, on_expired=audit.expired)
        sweeper.start()
        stack.push_async_callback(sweeper.stop)
        if slot is None:
            budget = MemoryBudget(settings.request_memory_bytes)
            on_their_way = OnTheirWay()
        else:  # a front-end worker: one budget, one view of the audio on its way, for the whole service
            budget = SharedMemoryBudget(settings.request_memory_bytes, slot.board, slot.worker)
            on_their_way = SharedOnTheirWay(slot.board, slot.worker)
        trimmer = HeapTrimmer(budget)
        trimmer.start()
        stack.push_async_callback(trimmer.stop)
        gate = Gate(
            ApiKeys(client, ns),
            RateLimiter(client, ns, settings.rate_limit_rps, settings.rate_limit_burst),
            audit,
            required=settings.auth_required,
            open_tenant=settings.tenant,
        )
        # The metrics of this concern live with it; the HTTP metrics count the 423 answers by their code.
        lockouts = Counter(
            "voxgate_speaker_lockouts",
            "Speakers locked after repeated failed verifications (by this replica's decisions)",
            registry=registry,
        )
        stack.callback(registry.unregister, lockouts)  # an app started again registers it again
        lockout = Lockout(
            client,
            ns,
            failures=settings.lockout_failures,
            window_s=settings.lockout_window_s,
            lock_s=settings.lockout_s,
            # A verification under way longer than any request may take died with its replica.
            max_pending_s=settings.request_timeout_s + 30.0,
            on_locked=lambda tenant: lockouts.inc(),
        )
        speakers = SpeakerOperations(
            engine,
            tenants,
            Policy.from_settings(settings, manifest),
            audit=audit,
            lockout=lockout,
            policies=TenantPolicies(client, ns),
        )
        state = AppState(
            settings=settings,
            engine=engine,
            tenants=tenants,
            speakers=speakers,
            forms=forms,
            admission=Admission(
                engine, budget, settings.max_queue_wait_s, on_their_way, settings.request_timeout_s
            ),
            intake=intake,
            gate=gate,
            registry=registry,
            exposition=exposition if exposition is not None else registry,
        )
        log.info(
            "voxgate ready",
            extra={
                "model": manifest.model_key(),
                "provider": engine.provider,
                "speakers": tenants.indexed_speakers(),
                "auth": "required" if settings.auth_required else "off",
                "encrypted": store.vault.enabled,
            },
        )
        yield state
