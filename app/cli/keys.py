"""``voxgate keys create | list | revoke``: API keys, on the service's Redis (``app.access.auth``).
Creating and revoking a key are written to its tenant's audit trail."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, future, record_act, run_on_redis, when

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
        "--scopes",
        help="what the key may do, comma-separated: enroll, verify, identify, read, delete, export, "
        "threshold-override, or all (default: every endpoint, not threshold-override)",
    )
    create.add_argument("--expires", help="when the key stops working: ISO date/time or a duration (90d)")
    create.add_argument(
        "--rate", type=float, help="requests per second (default: VOXGATE_RATE_LIMIT_RPS; 0 = none)"
    )
    create.add_argument("--burst", type=int, help="requests at once (default: VOXGATE_RATE_LIMIT_BURST)")
    create.add_argument(
        "--threshold", type=float, help="decision threshold of this key's requests (default: the tenant's)"
    )
    create.add_argument(
        "--threshold-floor",
        type=float,
        help="lowest threshold this key's requests may ask for (default: the tenant's floor)",
    )
    create.add_argument("--json", action="store_true")
    listing = commands.add_parser(
        "list", help="key ids, tenants, labels, scopes, limits, times (never a secret)"
    )
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")
    revoke = commands.add_parser("revoke", help="revoke a key (at once, on every replica)")
    revoke.add_argument("key_id")


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.auth import ApiKeys
        from app.access.scopes import DEFAULT_SCOPES, parse_scopes, scopes_text
        from app.store.thresholds import ThresholdOverrides

        keys = ApiKeys(client, settings.redis_namespace)
        if args.keys_command == "create":
            try:
                record, secret = await keys.create(
                    args.tenant,
                    args.name or "",
                    args.rate,
                    args.burst,
                    scopes=DEFAULT_SCOPES if args.scopes is None else parse_scopes(args.scopes),
                    expires_at=None if args.expires is None else future(args.expires),
                    thresholds=ThresholdOverrides(args.threshold, args.threshold_floor),
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            await record_act(
                client, settings, record.tenant, "key_create", key_id=record.key_id,
                detail=f"scopes {scopes_text(record.scopes)}; expires {when(record.expires_at)}; "
                f"thresholds: {record.thresholds.describe()}",
            )  # fmt: skip
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
                f"{'key id':<14}{'tenant':<20}{'name':<20}{'rate/s':>9}{'burst':>9}  {'created':<26}"
                f"{'expires':<26}{'revoked':<26}scopes"
            )
            for k in listed:
                rate = "default" if k.rate is None else f"{k.rate:g}"
                burst = "default" if k.burst is None else str(k.burst)
                print(
                    f"{k.key_id:<14}{k.tenant:<20}{k.name[:19]:<20}{rate:>9}{burst:>9}  "
                    f"{when(k.created_at):<26}{when(k.expires_at):<26}{when(k.revoked_at):<26}"
                    f"{scopes_text(k.scopes) or '-'}"
                )
            return 0
        revoked = await keys.revoke(args.key_id)
        if revoked is None:
            raise CommandError(f"no API key {args.key_id!r}")
        if revoked.tenant != "?":
            await record_act(client, settings, revoked.tenant, "key_revoke", key_id=revoked.key_id)
        print(f"key {revoked.key_id} of tenant {revoked.tenant!r} revoked at {when(revoked.revoked_at)}")
        return 0

    return run_on_redis("keys", work)
