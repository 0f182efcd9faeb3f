"""``voxgate audit --tenant NAME``: a tenant's audit trail, oldest first (``app.access.audit``)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, run_on_redis, since, when

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings

MAX_AUDIT_READ = 1_000_000  # events one `voxgate audit` reads (a stream holds VOXGATE_AUDIT_MAX_EVENTS)


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="a tenant's audit trail (enrollments, deletions, refusals)")
    audit.set_defaults(run=run)
    audit.add_argument(
        "--tenant", required=True, help="tenant, or _unauthenticated for requests without a valid key"
    )
    audit.add_argument("--since", help="ISO date/time or a duration (90m, 12h, 7d)")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.audit import AuditLog

        if not 1 <= args.limit <= MAX_AUDIT_READ:
            raise CommandError(f"--limit must be 1-{MAX_AUDIT_READ} events, not {args.limit}")
        events = await AuditLog(client, settings.redis_namespace, 1).read(
            args.tenant, since(args.since), args.limit
        )
        for event in events:
            if args.json:
                print(json.dumps(event.fields() | {"time": event.time}))
            else:
                print(
                    f"{when(event.time)}  {event.action:<13}{event.outcome:<22}"
                    f"speaker={event.speaker_id or '-'} key={event.key_id or '-'} "
                    f"request={event.request_id or '-'}"
                )
        return 0

    return run_on_redis("audit", work)
