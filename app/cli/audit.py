"""``voxgate audit --tenant NAME``: a tenant's audit trail, oldest first (``app.access.audit``). A tenant
the store does not know (no API keys, nothing stored) is refused: a typo must not read as an empty
trail."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, known_tenant, run_on_redis, since, when

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.access.audit import AuditEvent
    from app.core.settings import Settings

MAX_AUDIT_READ = 1_000_000  # events one `voxgate audit` reads (a stream holds VOXGATE_AUDIT_MAX_EVENTS)


def add_parser(sub: Any) -> None:
    audit = sub.add_parser(
        "audit", help="a tenant's audit trail (decisions, changes, operators' acts, refusals)"
    )
    audit.set_defaults(run=run)
    audit.add_argument(
        "--tenant", required=True, help="tenant, or _unauthenticated for requests without a valid key"
    )
    audit.add_argument("--since", help="ISO date/time or a duration (90m, 12h, 7d)")
    audit.add_argument("--speaker", help="only the events naming this speaker id")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true")


def describe(event: AuditEvent) -> str:
    """One line of ``voxgate audit``."""
    parts = [
        f"{when(event.time)}  {event.action:<14}{event.outcome:<22}speaker={event.speaker_id or '-'} "
        f"key={event.key_id or '-'} request={event.request_id or '-'}"
    ]
    if event.score is not None:
        parts.append(f"score={event.score:.4f}")
    if event.threshold is not None:
        parts.append(f"threshold={event.threshold:g} ({event.threshold_source or '?'})")
    if event.match is not None:
        parts.append("match" if event.match else "no match")
    if event.actor:
        parts.append(f"by {event.actor}")
    if event.detail:
        parts.append(f"- {event.detail}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.audit import AuditLog

        if not 1 <= args.limit <= MAX_AUDIT_READ:
            raise CommandError(f"--limit must be 1-{MAX_AUDIT_READ} events, not {args.limit}")
        tenant = await known_tenant(client, settings.redis_namespace, args.tenant)
        events = await AuditLog(client, settings.redis_namespace, 1).read(
            tenant, since(args.since), args.limit, speaker_id=args.speaker
        )
        for event in events:
            print(json.dumps(event.as_dict()) if args.json else describe(event))
        return 0

    return run_on_redis("audit", work)
