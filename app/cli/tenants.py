"""``voxgate tenants list | policy | erase``: the tenants of the store, the threshold policy of one
(``app.store.thresholds``), and crypto-erasure of one (``app.store.maintenance``)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, known_tenant, record_act, run_on_redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings


def add_parser(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="list tenants, set a tenant's threshold policy, or erase one")
    tenants.set_defaults(run=run)
    commands = tenants.add_subparsers(dest="tenants_command", required=True)
    commands.add_parser("list", help="tenants with stored voiceprints")
    policy = commands.add_parser(
        "policy",
        help="show or set a tenant's decision threshold and the floor below which requests may not lower "
        "it (default: the model's threshold is both)",
    )
    policy.add_argument("tenant")
    policy.add_argument("--threshold", type=float, help="the threshold of decisions that give none")
    policy.add_argument("--threshold-floor", type=float, help="the lowest threshold a request may ask for")
    policy.add_argument(
        "--clear", action="store_true", help="remove the tenant's policy (the model's applies)"
    )
    policy.add_argument("--json", action="store_true")
    erase = commands.add_parser("erase", help="delete a tenant's data keys (crypto-erasure), data and keys")
    erase.add_argument("tenant")
    erase.add_argument("--yes", action="store_true", help="really erase")
    erase.add_argument(
        "--keep-audit",
        action="store_true",
        help="keep the tenant's earlier audit events (default: only the record of the erasure is left)",
    )


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.access.audit import AuditLog
        from app.access.auth import ApiKeys
        from app.core.ids import validate_tenant
        from app.store import maintenance

        ns = settings.redis_namespace
        if args.tenants_command == "list":
            for tenant in await maintenance.tenant_names(client, ns):
                print(tenant)
            return 0
        tenant = validate_tenant(args.tenant)
        if args.tenants_command == "policy":
            return await _policy(args, client, settings, tenant)
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
        audit = AuditLog(client, ns, settings.audit_max_events)
        removed = await maintenance.delete_tenant_keys(
            client, ns, tenant, keep=audit.streams(tenant) if args.keep_audit else ()
        )
        summary = (
            f"{'its data keys deleted, ' if erased_keys else ''}{removed} Redis keys removed, {revoked} API "
            f"keys revoked{', audit trail kept' if args.keep_audit else ''}"
        )
        # Written after the erasure, into the tenant's (new) trail: the record that it happened survives it.
        await record_act(client, settings, tenant, "tenant_erase", detail=summary)
        print(f"tenant {tenant!r} erased: {summary}")
        return 0

    return run_on_redis("tenants", work)


async def _policy(args: argparse.Namespace, client: aioredis.Redis, settings: Settings, tenant: str) -> int:
    """Show the tenant's policy, after changing it when asked (each change audited)."""
    from app.store.thresholds import TenantPolicies, ThresholdOverrides

    policies = TenantPolicies(client, settings.redis_namespace)
    if args.clear or args.threshold is not None or args.threshold_floor is not None:
        await known_tenant(client, settings.redis_namespace, tenant)
        if args.clear and (args.threshold is not None or args.threshold_floor is not None):
            raise CommandError("--clear removes the policy: give it alone")
        current = await policies.get(tenant)
        try:
            new = (
                ThresholdOverrides()
                if args.clear
                else ThresholdOverrides(
                    current.threshold if args.threshold is None else args.threshold,
                    current.floor if args.threshold_floor is None else args.threshold_floor,
                )
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        await policies.set(tenant, new)
        await record_act(client, settings, tenant, "policy", detail=f"thresholds: {new.describe()}")
    policy = await policies.get(tenant)
    if args.json:
        print(json.dumps({"tenant": tenant, "threshold": policy.threshold, "threshold_floor": policy.floor}))
    else:
        print(
            f"tenant {tenant!r}: threshold {_or_model(policy.threshold)}, "
            f"floor {_or_model(policy.floor, 'the threshold')}"
        )
    return 0


def _or_model(value: float | None, otherwise: str = "the model's") -> str:
    return otherwise if value is None else f"{value:g}"
