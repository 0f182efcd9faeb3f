"""What the operator commands share: their settings, their Redis connection, and how they print times
and report a command that cannot run (one line, exit 1; invalid settings exit 2, as ``voxgate serve``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import math
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.settings import Settings


class CommandError(Exception):
    """A command cannot run (printed as one line, exit 1)."""


def redis_url(settings: Settings) -> str:
    """The service's Redis: ``REDIS_URL``, else the embedded redis-server of a running ``voxgate serve``
    (found through its data directory)."""
    from app.store.embedded_redis import running_endpoint

    if settings.redis_url:
        return settings.redis_url
    url = running_endpoint(settings.data_dir / "redis")
    if url is None:
        raise CommandError(
            "no Redis: set REDIS_URL (as the service has it), or start `voxgate serve` (its embedded "
            f"redis-server under {settings.data_dir / 'redis'}) first"
        )
    return url


def run_on_redis(command: str, work: Callable[[aioredis.Redis, Settings], Awaitable[int]]) -> int:
    """Run ``work`` with the service's settings and a client of its Redis; its failures are one line."""
    from app.core.crypto import CryptoError
    from app.core.errors import StoreUnavailable
    from app.core.settings_errors import settings_or_report
    from app.store.connection import redis_client
    from app.store.maintenance import MaintenanceError

    settings = settings_or_report("voxgate")
    if settings is None:
        return 2

    async def run() -> int:
        client = redis_client(redis_url(settings), timeout_s=10.0)
        try:
            return await work(client, settings)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (CommandError, MaintenanceError, CryptoError, ValueError, StoreUnavailable) as exc:
        print(f"voxgate {command}: {exc}", file=sys.stderr)
        return 1


def when(ts: float | None) -> str:
    """A Unix time as ISO 8601 UTC (``-`` for none)."""
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _moment(text: str, direction: int, unusable: CommandError) -> float:
    """An ISO date/time (UTC unless it says otherwise), or a duration such as 90m, 12h, 7d that far back
    (``direction`` -1) or ahead (+1) of now, as a Unix time."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and re.fullmatch(r"[0-9]+(\.[0-9]*)?", text[:-1]):
        return time.time() + direction * float(text[:-1]) * units[text[-1]]
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise unusable from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def since(text: str | None) -> float | None:
    """``--since``: an ISO date/time or a duration back from now (90m, 12h, 7d)."""
    if text is None:
        return None
    unusable = CommandError(f"--since {text!r}: give an ISO date/time or a duration like 12h or 7d")
    moment = _moment(text, -1, unusable)
    # Stream ids count milliseconds from 1970: anything earlier means "from the start".
    return max(moment, 0.0) if math.isfinite(moment) else 0.0


def future(text: str, option: str = "--expires") -> float:
    """A moment ahead: an ISO date/time or a duration from now (90d, 12h)."""
    unusable = CommandError(f"{option} {text!r}: give an ISO date/time or a duration like 12h or 90d")
    moment = _moment(text, +1, unusable)
    if not math.isfinite(moment) or moment > 4e9:  # past 2096: not a date anyone meant
        raise unusable
    if moment <= time.time():
        raise CommandError(f"{option} {text!r} is in the past")
    return moment


def operator() -> str:
    """Who runs an operator's command, for the audit trail: the OS user and host (in a container, the
    container's user: name the person in your change records)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        import os

        user = f"uid{os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"


async def known_tenant(client: aioredis.Redis, namespace: str, tenant: str) -> str:
    """``tenant`` when the store knows it (API keys, revoked ones too, or anything stored, its audit
    trail included), else CommandError: a typo must not read as an empty trail."""
    from app.access.auth import ApiKeys
    from app.core.ids import UNAUTHENTICATED_TENANT, validate_tenant
    from app.store import maintenance

    if tenant == UNAUTHENTICATED_TENANT:
        return tenant
    validate_tenant(tenant)
    if await ApiKeys(client, namespace).list(tenant) or await maintenance.tenant_has_data(
        client, namespace, tenant
    ):
        return tenant
    raise CommandError(f"no tenant {tenant!r} (no API keys, nothing stored)")


async def record_act(
    client: aioredis.Redis,
    settings: Settings,
    tenant: str,
    action: str,
    *,
    key_id: str | None = None,
    speaker_id: str | None = None,
    detail: str | None = None,
) -> None:
    """An operator's act in the tenant's audit trail (and the ``voxgate.audit`` log)."""
    from app.access.audit import AuditEvent, AuditLog

    event = AuditEvent(
        time.time(), tenant, key_id, speaker_id, action, "ok", None, actor=operator(), detail=detail
    )
    await AuditLog(client, settings.redis_namespace, settings.audit_max_events).record(event)
