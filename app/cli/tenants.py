"""``voxgate tenants list | erase``: the tenants of the store, and crypto-erasure of one
(``app.store.maintenance``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, run_on_redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings


def add_parser(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="list tenants, or erase one")
    tenants.set_defaults(run=run)
    commands = tenants.add_subparsers(dest="tenants_command", required=True)
    commands.add_parser("list", help="tenants with stored voiceprints")
    erase = commands.add_parser("erase", help="delete a tenant's data keys (crypto-erasure), data and keys")
    erase.add_argument("tenant")
    erase.add_argument("--yes", action="store_true", help="really erase")


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.auth import ApiKeys
        from app.core.ids import validate_tenant
        from app.store import maintenance

        ns = settings.redis_namespace
        if args.tenants_command == "list":
            for tenant in await maintenance.tenant_names(client, ns):
                print(tenant)
            return 0
        tenant = validate_tenant(args.tenant)
        if not args.yes:
            raise CommandError(f"erasing tenant {tenant!r} deletes all its voiceprints for good: add --yes")
        keys = ApiKeys(client, ns)
        if not await keys.list(tenant) and not await maintenance.tenant_has_data(client, ns, tenant):
            raise CommandError(f"no tenant {tenant!r} (no API keys, nothing stored): nothing erased")
        # The data keys first: from here on nothing of the tenant can be decrypted.
        erased_keys = await maintenance.delete_data_keys(client, ns, tenant)
        revoked = 0
        for key in await keys.list(tenant):
            if not key.revoked:
                await keys.revoke(key.key_id)
                revoked += 1
        removed = await maintenance.delete_tenant_keys(client, ns, tenant)
        print(
            f"tenant {tenant!r} erased: {'its data keys deleted, ' if erased_keys else ''}{removed} "
            f"Redis keys removed, {revoked} API keys revoked"
        )
        return 0

    return run_on_redis("tenants", work)
