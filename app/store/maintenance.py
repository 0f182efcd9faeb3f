"""Operator work on the whole store, outside requests: listing and erasing tenants, and re-encrypting
voiceprints (re-wrapping data keys under a new key-encryption key, sealing plain or older values).

Used by the operator commands (``voxgate tenants``, ``voxgate reencrypt``); every key it reads or writes
comes from the key schema (``app.store.keys``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT

from app.core.crypto import CryptoError, KeyEncryptionKey, check_aad, data_key_aad, sealed_version, value_aad
from app.store.connection import reply_text
from app.store.keys import (
    KeySchema,
    crypto_check_key,
    data_keys_pattern,
    parse_voiceprint_key,
    tenant_keys_pattern,
    tenant_of_data_keys,
    tenants_key,
    voiceprint_keys_pattern,
)
from app.store.vault import Vault

_SCAN_BATCH = 1000
# Re-sealing writes a value back only if the voiceprint did not change meanwhile (its revision).
_RESEAL_LUA = """
local rev = redis.call('HGET', KEYS[1], 'rev') or '0'
if rev ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'sum', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'metadata', ARGV[3]) end
return 1
"""


class MaintenanceError(Exception):
    """The store is not in a state this operation can work on (one line for the operator)."""


# --- tenants -------------------------------------------------------------------------------------------
async def tenant_names(client: aioredis.Redis, namespace: str) -> list[str]:
    """Tenants with stored voiceprints, sorted."""
    return sorted(reply_text(t) for t in await client.smembers(tenants_key(namespace)))


async def tenant_has_data(client: aioredis.Redis, namespace: str, tenant: str) -> bool:
    async for _ in client.scan_iter(match=tenant_keys_pattern(namespace, tenant), count=_SCAN_BATCH):
        return True
    return False


async def delete_data_keys(client: aioredis.Redis, namespace: str, tenant: str) -> bool:
    """Crypto-erasure: from here on nothing of the tenant can be decrypted, on every replica within a few
    seconds (``app.store.vault.DATA_KEY_CACHE_S``). True when there were data keys."""
    return bool(await client.delete(KeySchema(namespace, tenant, "-").data_keys))


async def delete_tenant_keys(
    client: aioredis.Redis, namespace: str, tenant: str, keep: Collection[str] = ()
) -> int:
    """Every Redis key of the tenant but those in ``keep``, and its entry in the tenant registry; how many
    keys were removed."""
    removed = 0
    batch: list[Any] = []
    kept = {k.encode() for k in keep}
    async for key in client.scan_iter(match=tenant_keys_pattern(namespace, tenant), count=_SCAN_BATCH):
        if key in kept:
            continue
        batch.append(key)
        if len(batch) >= _SCAN_BATCH:
            removed += int(await client.unlink(*batch))
            batch = []
    if batch:
        removed += int(await client.unlink(*batch))
    await client.srem(tenants_key(namespace), tenant)
    return removed


# --- re-encryption -------------------------------------------------------------------------------------
async def rewrap_data_keys(
    client: aioredis.Redis,
    namespace: str,
    new: KeyEncryptionKey,
    old: KeyEncryptionKey | None,
    old_key_setting: str,
) -> int:
    """Every tenant's data keys wrapped by ``new`` (those still under ``old`` re-wrapped); then the check
    value. Idempotent: a data key that already opens with ``new`` is left alone. ``old_key_setting``
    names where the operator gives the old key (for the errors)."""
    marker = crypto_check_key(namespace)
    raw: Any = await client.hgetall(marker)
    check = raw.get(b"check", b"") if raw else b""
    aad = check_aad(namespace)
    if (
        raw
        and not new.opens_check_value(check, aad)
        and (old is None or not old.opens_check_value(check, aad))
    ):
        raise MaintenanceError(
            f"the store's voiceprints are under key {reply_text(raw.get(b'fingerprint', b'?'))}: set "
            f"{old_key_setting} to that key to rotate from it to VOXGATE_VOICEPRINT_KEY ({new.fingerprint})"
        )
    rewrapped = 0
    async for key in client.scan_iter(match=data_keys_pattern(namespace), count=_SCAN_BATCH):
        tenant = tenant_of_data_keys(namespace, reply_text(key))
        stored: Any = await client.hgetall(key)
        for field, blob in stored.items():
            key_aad = data_key_aad(namespace, tenant, int(field))
            try:
                new.unwrap(blob, key_aad)
                continue  # already under the new key
            except CryptoError:
                pass
            if old is None:
                raise MaintenanceError(
                    f"data key {int(field)} of tenant {tenant!r} is not under the new key: set "
                    f"{old_key_setting}"
                )
            await client.hset(key, field, new.wrap(old.unwrap(blob, key_aad), key_aad))
            rewrapped += 1
    pipe = client.pipeline(transaction=True)
    pipe.hset(marker, mapping={"check": new.check_value(aad), "fingerprint": new.fingerprint})
    await pipe.execute()
    return rewrapped


async def reseal_voiceprints(
    client: aioredis.Redis, namespace: str, vault: Vault, batch: int, progress: Callable[[str], None]
) -> int:
    """Seal every plain voiceprint, and re-seal those under an older data key, under the tenant's current
    data key. Resumable: values already sealed under the current key are skipped."""
    reseal = client.register_script(_RESEAL_LUA)
    done = 0
    seen = 0
    async for key in client.scan_iter(match=voiceprint_keys_pattern(namespace), count=batch):
        seen += 1
        tenant, model_key, speaker_id = parse_voiceprint_key(namespace, reply_text(key))
        data_keys = await vault.data_keys(KeySchema(namespace, tenant, model_key), create=True)
        assert data_keys is not None
        raw: Any = await client.hmget(key, ["sum", "metadata", "rev"])
        plain_sum, meta, rev = raw
        if plain_sum is None or sealed_version(plain_sum) == data_keys.current:
            continue
        sum_aad = value_aad(namespace, tenant, model_key, speaker_id, "sum")
        meta_aad = value_aad(namespace, tenant, model_key, speaker_id, "metadata")
        opened_sum = (
            data_keys.open(plain_sum, sum_aad) if sealed_version(plain_sum) is not None else plain_sum
        )
        new_meta = b""
        if meta:
            opened_meta = data_keys.open(meta, meta_aad) if sealed_version(meta) is not None else meta
            new_meta = data_keys.seal(opened_meta, meta_aad)
        args: list[EncodableT] = [
            reply_text(rev) if rev else "0",
            data_keys.seal(opened_sum, sum_aad),
            new_meta,
        ]
        if int(await reseal(keys=[key], args=args)):
            done += 1
        if seen % batch == 0:
            progress(f"re-encryption: {seen} voiceprints looked at, {done} sealed")
    return done
