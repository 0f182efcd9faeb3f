"""Operator commands on the service's Redis: ``voxgate keys``, ``voxgate audit``, ``voxgate tenants`` and
``voxgate reencrypt``. They use the service's settings (``REDIS_URL``, ``VOXGATE_REDIS_NAMESPACE``,
``VOXGATE_VOICEPRINT_KEY``); without ``REDIS_URL`` they find the embedded redis-server of a running
``voxgate serve`` through its data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT

from app.access.audit import AuditLog
from app.access.auth import ApiKeys
from app.core.crypto import CryptoError, KeyEncryptionKey, check_aad, data_key_aad, sealed_version, value_aad
from app.core.errors import StoreUnavailable
from app.core.settings import Settings, env_var
from app.store.embedded_redis import running_endpoint
from app.store.keys import KeySchema, crypto_check_key, tenants_key, validate_tenant
from app.store.redis_store import redis_client
from app.store.vault import Vault

OLD_KEY_ENV = env_var("old_voiceprint_key")
# Re-sealing writes a value back only if the voiceprint did not change meanwhile (its revision).
_RESEAL_LUA = """
local rev = redis.call('HGET', KEYS[1], 'rev') or '0'
if rev ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sum', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[3]) end
return 1
"""


class AdminError(Exception):
    """A command cannot run (printed as one line, exit 1)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    url = running_endpoint(settings.data_dir / "redis")
    if url is None:
        raise AdminError(
            "no Redis: set REDIS_URL (as the service has it), or start `voxgate serve` (its embedded "
            f"redis-server under {settings.data_dir / 'redis'}) first"
        )
    return url


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _since(text: str | None) -> float | None:
    """``--since``: an ISO date/time (UTC unless it says otherwise) or a duration such as 90m, 12h, 7d."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    unusable = AdminError(f"--since {text!r}: give an ISO date/time or a duration like 12h or 7d")
    if text[-1:] in units and re.fullmatch(r"[0-9]+(\.[0-9]*)?", text[:-1]):
        since = time.time() - float(text[:-1]) * units[text[-1]]
    else:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise unusable from exc
        since = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
    # Stream ids count milliseconds from 1970: anything earlier means "from the start".
    return max(since, 0.0) if math.isfinite(since) else 0.0


# --- keys ----------------------------------------------------------------------------------------------
async def _keys(args: argparse.Namespace, client: aioredis.Redis, settings: Settings) -> int:
    keys = ApiKeys(client, settings.redis_namespace)
    if args.keys_command == "create":
        try:
            record, secret = await keys.create(args.tenant, args.name or "", args.rate, args.burst)
        except ValueError as exc:
            raise AdminError(str(exc)) from exc
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
        print(f"{'key id':<14}{'tenant':<20}{'name':<20}{'rate/s':>9}{'burst':>9}  {'created':<26}revoked")
        for k in listed:
            rate = "default" if k.rate is None else f"{k.rate:g}"
            burst = "default" if k.burst is None else str(k.burst)
            print(
                f"{k.key_id:<14}{k.tenant:<20}{k.name[:19]:<20}{rate:>9}{burst:>9}  "
                f"{_when(k.created_at):<26}{_when(k.revoked_at)}"
            )
        return 0
    revoked = await keys.revoke(args.key_id)
    if revoked is None:
        raise AdminError(f"no API key {args.key_id!r}")
    print(f"key {revoked.key_id} of tenant {revoked.tenant!r} revoked at {_when(revoked.revoked_at)}")
    return 0


# --- audit ---------------------------------------------------------------------------------------------
MAX_AUDIT_READ = 1_000_000  # events one `voxgate audit` reads (a stream holds VOXGATE_AUDIT_MAX_EVENTS)


async def _audit(args: argparse.Namespace, client: aioredis.Redis, settings: Settings) -> int:
    if not 1 <= args.limit <= MAX_AUDIT_READ:
        raise AdminError(f"--limit must be 1-{MAX_AUDIT_READ} events, not {args.limit}")
    events = await AuditLog(client, settings.redis_namespace, 1).read(
        args.tenant, _since(args.since), args.limit
    )
    for event in events:
        if args.json:
            print(json.dumps(event.fields() | {"time": event.time}))
        else:
            print(
                f"{_when(event.time)}  {event.action:<13}{event.outcome:<22}speaker={event.speaker_id or '-'}"
                f" key={event.key_id or '-'} request={event.request_id or '-'}"
            )
    return 0


# --- tenants -------------------------------------------------------------------------------------------
async def _tenants(args: argparse.Namespace, client: aioredis.Redis, settings: Settings) -> int:
    ns = settings.redis_namespace
    if args.tenants_command == "list":
        for tenant in sorted(_text(t) for t in await client.smembers(tenants_key(ns))):
            print(tenant)
        return 0
    tenant = validate_tenant(args.tenant)
    if not args.yes:
        raise AdminError(f"erasing tenant {tenant!r} deletes all its voiceprints for good: add --yes")
    schema = KeySchema(ns, tenant, "-")
    # The data keys first: from here on nothing of the tenant can be decrypted (crypto-erasure), on
    # every replica within a few seconds (app.store.vault.DATA_KEY_CACHE_S).
    if not await ApiKeys(client, ns).list(tenant) and not await _any_key(client, f"{schema.tenant_prefix}:*"):
        raise AdminError(f"no tenant {tenant!r} (no API keys, nothing stored): nothing erased")
    erased_keys = int(await client.delete(schema.data_keys))
    revoked = 0
    for key in await ApiKeys(client, ns).list(tenant):
        if not key.revoked:
            await ApiKeys(client, ns).revoke(key.key_id)
            revoked += 1
    removed = 0
    batch: list[Any] = []
    async for key in client.scan_iter(match=f"{schema.tenant_prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += int(await client.unlink(*batch))
            batch = []
    if batch:
        removed += int(await client.unlink(*batch))
    await client.srem(tenants_key(ns), tenant)
    print(
        f"tenant {tenant!r} erased: {'its data keys deleted, ' if erased_keys else ''}{removed} Redis keys "
        f"removed, {revoked} API keys revoked"
    )
    return 0


async def _any_key(client: aioredis.Redis, pattern: str) -> bool:
    async for _ in client.scan_iter(match=pattern, count=1000):
        return True
    return False


# --- re-encryption -------------------------------------------------------------------------------------
def _kek(text: str | None, what: str) -> KeyEncryptionKey:
    if not text:
        raise AdminError(f"{what} is not set")
    try:
        return KeyEncryptionKey.from_text(text)
    except CryptoError as exc:
        raise AdminError(f"{what}: {exc}") from exc


async def _rewrap(
    client: aioredis.Redis, ns: str, new: KeyEncryptionKey, old: KeyEncryptionKey | None
) -> int:
    """Every tenant's data keys wrapped by ``new`` (those still under ``old`` re-wrapped); then the check
    value. Idempotent: a data key that already opens with ``new`` is left alone."""
    marker = crypto_check_key(ns)
    raw: Any = await client.hgetall(marker)
    check = raw.get(b"check", b"") if raw else b""
    if (
        raw
        and not new.opens_check_value(check, check_aad(ns))
        and (old is None or not old.opens_check_value(check, check_aad(ns)))
    ):
        raise AdminError(
            f"the store's voiceprints are under key {_text(raw.get(b'fingerprint', b'?'))}: set "
            f"{OLD_KEY_ENV} to that key to rotate from it to VOXGATE_VOICEPRINT_KEY ({new.fingerprint})"
        )
    rewrapped = 0
    async for key in client.scan_iter(match=f"{ns}:*:datakeys", count=1000):
        tenant = _text(key)[len(ns) + 1 : -len(":datakeys")]
        stored: Any = await client.hgetall(key)
        for field, blob in stored.items():
            aad = data_key_aad(ns, tenant, int(field))
            try:
                new.unwrap(blob, aad)
                continue  # already under the new key
            except CryptoError:
                pass
            if old is None:
                raise AdminError(
                    f"data key {int(field)} of tenant {tenant!r} is not under the new key: set {OLD_KEY_ENV}"
                )
            await client.hset(key, field, new.wrap(old.unwrap(blob, aad), aad))
            rewrapped += 1
    pipe = client.pipeline(transaction=True)
    pipe.hset(marker, mapping={"check": new.check_value(check_aad(ns)), "fingerprint": new.fingerprint})
    await pipe.execute()
    return rewrapped


async def _reseal(
    client: aioredis.Redis, ns: str, vault: Vault, batch: int, progress: Callable[[str], None]
) -> int:
    """Seal every plain voiceprint, and re-seal those under an older data key, under the tenant's current
    data key. Resumable: values already sealed under the current key are skipped."""
    reseal = client.register_script(_RESEAL_LUA)
    done = 0
    seen = 0
    async for key in client.scan_iter(match=f"{ns}:*:spk:*", count=batch):
        seen += 1
        tenant, rest = _text(key)[len(ns) + 1 :].split(":", 1)
        model_key, speaker_id = rest.rsplit(":spk:", 1)
        schema = KeySchema(ns, tenant, model_key)
        data_keys = await vault.data_keys(schema, create=True)
        assert data_keys is not None
        raw: Any = await client.hmget(key, ["sum", "metadata", "rev"])
        plain_sum, meta, rev = raw
        if plain_sum is None or sealed_version(plain_sum) == data_keys.current:
            continue
        sum_aad = value_aad(ns, tenant, model_key, speaker_id, "sum")
        meta_aad = value_aad(ns, tenant, model_key, speaker_id, "metadata")
        opened_sum = (
            data_keys.open(plain_sum, sum_aad) if sealed_version(plain_sum) is not None else plain_sum
        )
        new_meta = b""
        if meta:
            opened_meta = data_keys.open(meta, meta_aad) if sealed_version(meta) is not None else meta
            new_meta = data_keys.seal(opened_meta, meta_aad)
        args: list[EncodableT] = [_text(rev) if rev else "0", data_keys.seal(opened_sum, sum_aad), new_meta]
        if int(await reseal(keys=[key], args=args)):
            done += 1
        if seen % batch == 0:
            progress(f"re-encryption: {seen} voiceprints looked at, {done} sealed")
    return done


async def _reencrypt(args: argparse.Namespace, client: aioredis.Redis, settings: Settings) -> int:
    new = _kek(
        settings.voiceprint_key.get_secret_value() if settings.voiceprint_key else None,
        "VOXGATE_VOICEPRINT_KEY",
    )
    old_text = os.environ.get(OLD_KEY_ENV)
    old = _kek(old_text, OLD_KEY_ENV) if old_text else None
    ns = settings.redis_namespace
    rewrapped = await _rewrap(client, ns, new, old)
    print(f"data keys: {rewrapped} re-wrapped under key {new.fingerprint}", file=sys.stderr)
    vault = Vault(client, ns, new)
    await vault.verify()
    sealed = await _reseal(client, ns, vault, args.batch, lambda line: print(line, file=sys.stderr))
    print(
        f"voiceprints: {sealed} sealed under their tenant's current data key; the store is under key "
        f"{new.fingerprint}"
    )
    return 0


# --- entry point ---------------------------------------------------------------------------------------
_COMMANDS: dict[str, Callable[[argparse.Namespace, aioredis.Redis, Settings], Awaitable[int]]] = {
    "keys": _keys,
    "audit": _audit,
    "tenants": _tenants,
    "reencrypt": _reencrypt,
}


def run_admin(args: argparse.Namespace) -> int:
    from app.core.settings_errors import InvalidSettings, load_settings

    try:
        settings = load_settings()
    except InvalidSettings as exc:
        print(f"voxgate: invalid settings\n{exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        client = redis_client(redis_url(settings), timeout_s=10.0)
        try:
            return await _COMMANDS[args.command](args, client, settings)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (AdminError, CryptoError, ValueError) as exc:
        print(f"voxgate {args.command}: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"voxgate {args.command}: {exc}", file=sys.stderr)
        return 1
