"""What a data-subject request about one speaker gets: everything held about it except the voiceprint
itself - its records under every model of the tenant (metadata, counts, times), its lockout state and
every audit event naming it. One function, for the API (``GET /speakers/{id}/export``) and the
command line (``voxgate speakers export``)."""

from __future__ import annotations

import time

from app.access.audit import AuditLog
from app.access.lockout import Lockout
from app.speakers.results import SpeakerExport
from app.store.redis_store import RedisVoiceprintStore

# A speaker's events are found by scanning the tenant's streams; none is left out.
ALL_EVENTS = 10**9


async def disclose(
    store: RedisVoiceprintStore, audit: AuditLog, lockout: Lockout, tenant: str, speaker_id: str
) -> SpeakerExport | None:
    """What ``store`` (the tenant's view), its audit trail and the lockout hold about ``speaker_id``;
    None when they hold nothing at all."""
    records = await store.held_records(speaker_id)
    events = await audit.read(tenant, limit=ALL_EVENTS, speaker_id=speaker_id)
    lock = await lockout.state(tenant, speaker_id)
    if not (records or events or lock.locked_until is not None or lock.failures):
        return None
    return SpeakerExport(
        speaker_id=speaker_id,
        tenant=tenant,
        exported_at=time.time(),
        voiceprints=records,
        locked_until=lock.locked_until,
        recent_failed_verifications=lock.failures,
        audit_events=events,
    )
