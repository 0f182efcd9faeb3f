"""``voxgate keys create | list | revoke``: API keys, on the service's Redis (``app.access.auth``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, run_on_redis, when

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys.set_defaults(run=run)
    commands = keys.add_subparsers(dest="keys_command", required=True)
    create = commands.add_parser("create", help="a new key for a tenant (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", help="a label for people (e.g. which client uses it)")
    create.add_argument(
        "--rate", type=float, help="requests per second (default: VOXGATE_RATE_LIMIT_RPS; 0 = none)"
    )
    create.add_argument("--burst", type=int, help="requests at once (default: VOXGATE_RATE_LIMIT_BURST)")
    create.add_argument("--json", action="store_true")
    listing = commands.add_parser("list", help="key ids, tenants, labels, limits, times (never a secret)")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")
    revoke = commands.add_parser("revoke", help="revoke a key (at once, on every replica)")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.auth import ApiKeys

        keys = ApiKeys(client, settings.redis_namespace)
        if args.keys_command == "create":
            try:
                record, secret = await keys.create(args.tenant, args.name or "", args.rate, args.burst)
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            if args.json:
                print(json.dumps({**record.as_dict(), "key": secret}))
            else:
                print(secret)
                print(
                    f"key {record.key_id} for tenant {record.tenant!r} created; the key above is shown only "
                    "once: store it now (Redis keeps only its hash)",
                    file=sys.stderr,
                )
            return 0
        if args.keys_command == "list":
            listed = await keys.list(args.tenant)
            if args.json:
                print(json.dumps([k.as_dict() for k in listed]))
                return 0
            print(
                f"{'key id':<14}{'tenant':<20}{'name':<20}{'rate/s':>9}{'burst':>9}  {'created':<26}revoked"
            )
            for k in listed:
                rate = "default" if k.rate is None else f"{k.rate:g}"
                burst = "default" if k.burst is None else str(k.burst)
                print(
                    f"{k.key_id:<14}{k.tenant:<20}{k.name[:19]:<20}{rate:>9}{burst:>9}  "
                    f"{when(k.created_at):<26}{when(k.revoked_at)}"
                )
            return 0
        revoked = await keys.revoke(args.key_id)
        if revoked is None:
            raise CommandError(f"no API key {args.key_id!r}")
        print(f"key {revoked.key_id} of tenant {revoked.tenant!r} revoked at {when(revoked.revoked_at)}")
        return 0

    return run_on_redis("keys", work)
