"""``voxgate reencrypt``: encrypt the store under ``VOXGATE_VOICEPRINT_KEY``, rotating from
``VOXGATE_OLD_VOICEPRINT_KEY`` when set; resumable (``app.store.maintenance``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from app.cli.common import CommandError, run_on_redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from app.core.crypto import KeyEncryptionKey
    from app.core.settings import Settings


def add_parser(sub: Any) -> None:
    reencrypt = sub.add_parser(
        "reencrypt",
        help="encrypt the store under VOXGATE_VOICEPRINT_KEY (rotating from VOXGATE_OLD_VOICEPRINT_KEY); "
        "resumable",
    )
    reencrypt.set_defaults(run=run)
    reencrypt.add_argument("--batch", type=int, default=500, help="voiceprints per batch")


def _kek(text: str | None, what: str) -> KeyEncryptionKey:
    from app.core.crypto import CryptoError, KeyEncryptionKey

    if not text:
        raise CommandError(f"{what} is not set")
    try:
        return KeyEncryptionKey.from_text(text)
    except CryptoError as exc:
        raise CommandError(f"{what}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    async def work(client: aioredis.Redis, settings: Settings) -> int:
        from app.core.settings import env_var
        from app.store.maintenance import reseal_voiceprints, rewrap_data_keys
        from app.store.vault import Vault

        old_key_env = env_var("old_voiceprint_key")

        new = _kek(
            settings.voiceprint_key.get_secret_value() if settings.voiceprint_key else None,
            "VOXGATE_VOICEPRINT_KEY",
        )
        old_text = os.environ.get(old_key_env)
        old = _kek(old_text, old_key_env) if old_text else None
        ns = settings.redis_namespace
        rewrapped = await rewrap_data_keys(client, ns, new, old, old_key_env)
        print(f"data keys: {rewrapped} re-wrapped under key {new.fingerprint}", file=sys.stderr)
        vault = Vault(client, ns, new)
        await vault.verify()
        sealed = await reseal_voiceprints(
            client, ns, vault, args.batch, lambda line: print(line, file=sys.stderr)
        )
        print(
            f"voiceprints: {sealed} sealed under their tenant's current data key; the store is under key "
            f"{new.fingerprint}"
        )
        return 0

    return run_on_redis("reencrypt", work)
