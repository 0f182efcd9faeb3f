"""``voxgate speakers export``: everything held about one speaker except the voiceprint itself, as JSON,
for a data-subject request (``app.speakers.disclosure``; the API's ``GET /speakers/{id}/export`` gives the
same). The export is written to the tenant's audit trail."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, known_tenant, record_act, run_on_redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings


def add_parser(sub: Any) -> None:
    speakers = sub.add_parser(
        "speakers", help="export everything held about a speaker (data-subject requests)"
    )
    speakers.set_defaults(run=run)
    commands = speakers.add_subparsers(dest="speakers_command", required=True)
    export = commands.add_parser(
        "export", help="a speaker's records, lockout state and audit events as JSON (not the voiceprint)"
    )
    export.add_argument("--tenant", required=True)
    export.add_argument("speaker_id")


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.audit import AuditLog
        from app.access.lockout import Lockout
        from app.api.schemas import SpeakerExport
        from app.api.wiring import voiceprint_kek
        from app.core.errors import InvalidSpeakerId
        from app.core.ids import validate_speaker_id
        from app.speakers.disclosure import disclose
        from app.store.keys import KeySchema
        from app.store.redis_store import RedisVoiceprintStore
        from app.store.vault import Vault

        ns = settings.redis_namespace
        tenant = await known_tenant(client, ns, args.tenant)
        try:
            speaker_id = validate_speaker_id(args.speaker_id)
        except InvalidSpeakerId as exc:
            raise CommandError(exc.detail) from exc
        # Every model of the tenant is read (the store's model key only names a view): dim is unused.
        store = RedisVoiceprintStore(
            client,
            KeySchema(ns, tenant, "-"),
            0,
            owns_client=False,
            vault=Vault(client, ns, voiceprint_kek(settings)),
        )
        lockout = Lockout(
            client, ns, failures=settings.lockout_failures, window_s=settings.lockout_window_s,
            lock_s=settings.lockout_s, max_pending_s=settings.request_timeout_s + 30.0,
        )  # fmt: skip
        found = await disclose(
            store, AuditLog(client, ns, settings.audit_max_events), lockout, tenant, speaker_id
        )
        if found is None:
            raise CommandError(f"nothing is held about speaker {speaker_id!r} in tenant {tenant!r}")
        await record_act(
            client, settings, tenant, "export", speaker_id=speaker_id,
            detail=f"{len(found.voiceprints)} voiceprint records, {len(found.audit_events)} audit events",
        )  # fmt: skip
        print(SpeakerExport.model_validate(asdict(found)).model_dump_json(indent=2))
        return 0

    return run_on_redis("speakers", work)
