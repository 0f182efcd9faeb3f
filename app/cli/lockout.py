"""``voxgate lockout list | clear``: speakers locked after repeated failed verifications
(``app.access.lockout``), and lifting a lock (written to the tenant's audit trail)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, known_tenant, record_act, run_on_redis, when

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings


def add_parser(sub: Any) -> None:
    lockout = sub.add_parser("lockout", help="speakers locked after failed verifications; lift a lock")
    lockout.set_defaults(run=run)
    commands = lockout.add_subparsers(dest="lockout_command", required=True)
    listing = commands.add_parser("list", help="a tenant's locked speakers and when their lock ends")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--json", action="store_true")
    clear = commands.add_parser("clear", help="lift a speaker's lock and forget its failed verifications")
    clear.add_argument("--tenant", required=True)
    clear.add_argument("speaker_id")


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.lockout import Lockout
        from app.core.ids import validate_speaker_id

        tenant = await known_tenant(client, settings.redis_namespace, args.tenant)
        lockout = Lockout(
            client,
            settings.redis_namespace,
            failures=settings.lockout_failures,
            window_s=settings.lockout_window_s,
            lock_s=settings.lockout_s,
            max_pending_s=settings.request_timeout_s + 30.0,
        )
        if args.lockout_command == "list":
            locked = await lockout.locked(tenant)
            if args.json:
                print(
                    json.dumps([{"speaker_id": s.speaker_id, "locked_until": s.locked_until} for s in locked])
                )
            for state in [] if args.json else locked:
                print(f"{state.speaker_id}  locked until {when(state.locked_until)}")
            return 0
        try:
            speaker_id = validate_speaker_id(args.speaker_id)
        except Exception as exc:  # InvalidSpeakerId: one line
            raise CommandError(str(exc)) from exc
        was_locked = await lockout.clear(tenant, speaker_id)
        await record_act(
            client, settings, tenant, "lockout_clear", speaker_id=speaker_id,
            detail="lock lifted" if was_locked else "was not locked; failed verifications forgotten",
        )  # fmt: skip
        print(
            f"speaker {speaker_id!r} of tenant {tenant!r}: "
            + ("lock lifted" if was_locked else "was not locked (its failed verifications are forgotten)")
        )
        return 0

    return run_on_redis("lockout", work)
