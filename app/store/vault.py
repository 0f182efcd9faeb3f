"""Where the data keys live: each tenant's wrapped data keys in Redis, opened with this replica's KEK.

See ``app.core.crypto`` for the scheme. The vault is shared by every tenant view of the store; it caches
opened data keys briefly, so a crypto-erased tenant (its data keys deleted) stops decrypting on every
replica within ``DATA_KEY_CACHE_S``. A data key that a KEK rotation re-wrapped under another KEK is the
same key: a replica that opened it before keeps using it until it restarts with the new KEK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from app.core.crypto import (
    CryptoError,
    DataKeys,
    KeyEncryptionKey,
    check_aad,
    data_key_aad,
    new_data_key,
)
from app.core.errors import StoreUnavailable
from app.store.connection import reply_text
from app.store.keys import KeySchema, crypto_check_key

log = logging.getLogger(__name__)

DATA_KEY_CACHE_S = 5.0


class VaultError(CryptoError):
    """This replica's key does not match the store (start-up refuses to serve)."""


class Vault:
    def __init__(self, client: aioredis.Redis, namespace: str, kek: KeyEncryptionKey | None) -> None:
        self.client = client
        self.namespace = namespace
        self.kek = kek
        self._cache: dict[str, tuple[float, DataKeys | None]] = {}
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.kek is not None

    async def verify(self) -> None:
        """Start-up check: the store and this replica agree on whether, and with which key, voiceprints
        are encrypted. The first replica with a key writes the check value."""
        key = crypto_check_key(self.namespace)
        aad = check_aad(self.namespace)
        raw: Any = await self.client.hgetall(key)
        if not raw:
            if self.kek is None:
                return  # a plain store, and no key: nothing to check
            await self.client.hsetnx(key, "check", self.kek.check_value(aad))
            await self.client.hsetnx(key, "fingerprint", self.kek.fingerprint)
            raw = await self.client.hgetall(key)
        theirs = reply_text(raw.get(b"fingerprint", b"?"))
        if self.kek is None:
            raise VaultError(
                f"voiceprints in Redis namespace {self.namespace!r} are encrypted (key fingerprint "
                f"{theirs}); set VOXGATE_VOICEPRINT_KEY to that key"
            )
        if not self.kek.opens_check_value(raw.get(b"check", b""), aad):
            raise VaultError(
                f"VOXGATE_VOICEPRINT_KEY (fingerprint {self.kek.fingerprint}) is not the key that encrypts "
                f"the voiceprints in Redis namespace {self.namespace!r} (fingerprint {theirs})"
            )

    async def data_keys(self, keys: KeySchema, *, create: bool) -> DataKeys | None:
        """The tenant's data keys; None when it has none (never encrypted anything, or crypto-erased)
        unless ``create``, which makes its first one (atomically: concurrent replicas agree)."""
        assert self.kek is not None
        tenant = keys.tenant
        cached = self._cache.get(tenant)
        if (
            cached is not None
            and time.monotonic() - cached[0] < DATA_KEY_CACHE_S
            and (cached[1] or not create)
        ):
            return cached[1]
        async with self._lock:
            raw: Any = await self.client.hgetall(keys.data_keys)
            if not raw and create:
                wrapped = self.kek.wrap(new_data_key(), data_key_aad(self.namespace, tenant, 1))
                await self.client.hsetnx(keys.data_keys, "1", wrapped)
                raw = await self.client.hgetall(keys.data_keys)
            known = cached[1] if cached is not None else None
            opened = self._open(tenant, raw, known) if raw else None
            self._cache[tenant] = (time.monotonic(), opened)
            return opened

    def _open(self, tenant: str, raw: dict[bytes, bytes], known: DataKeys | None) -> DataKeys:
        """Unwrap the tenant's data keys; one that this KEK no longer opens but this replica opened
        before was re-wrapped by a KEK rotation (``voxgate reencrypt``): the key itself is unchanged."""
        assert self.kek is not None
        keys: dict[int, bytes] = {}
        for field, blob in raw.items():
            version = int(field)
            try:
                keys[version] = self.kek.unwrap(blob, data_key_aad(self.namespace, tenant, version))
            except CryptoError as exc:
                before = known.get(version) if known is not None else None
                if before is not None:
                    keys[version] = before
                    continue
                log.error(
                    "data key %d of tenant %r does not open with this replica's VOXGATE_VOICEPRINT_KEY "
                    "(fingerprint %s): %s; was the key rotated? restart this replica with the new key",
                    version,
                    tenant,
                    self.kek.fingerprint,
                    exc,
                )
                raise StoreUnavailable(
                    "this replica cannot open these voiceprints now (its encryption key is not current); "
                    "retry, another replica may"
                ) from exc
        return DataKeys(keys)

    def forget(self, tenant: str) -> None:
        self._cache.pop(tenant, None)
