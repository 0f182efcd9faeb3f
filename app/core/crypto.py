"""Voiceprints encrypted at rest: envelope encryption with AES-256-GCM (the ``cryptography`` package).

* The **key-encryption key** (KEK, ``VOXGATE_VOICEPRINT_KEY``: 32 random bytes, hex or base64, from a
  Secret) never reaches Redis. It only wraps data keys.
* Each tenant has its own **data key** (DEK, 32 random bytes), stored in Redis wrapped by the KEK, with
  a version. Voiceprint values (embedding sums, metadata) are sealed with the tenant's current DEK.
* Every sealed value is **bound** to where it belongs: the authenticated data names the namespace,
  tenant, model, speaker and field, so a value copied under another Redis key does not decrypt.
* A **check value** sealed by the KEK is kept in Redis: a replica started with another key, or with no
  key while voiceprints are encrypted, refuses to start with one clear message.

Rotating the KEK re-wraps only the data keys (seconds); rotating data keys re-seals voiceprints, in
batches and resumably (``voxgate reencrypt``). Deleting a tenant's data key makes every voiceprint of
that tenant unreadable at once (crypto-erasure).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import string
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
# Sealed values start with this marker and the data key's version, so plain values (written before
# encryption was turned on) and values under older data keys are told apart.
SEALED_MAGIC = b"VGE1"
_HEADER = struct.Struct(">4sI")  # magic, data key version
_CHECK_PLAINTEXT = b"voxgate key check v1"


class CryptoError(ValueError):
    """A key is missing, malformed or wrong, or a sealed value does not open."""


def parse_key(text: str) -> bytes:
    """A 256-bit key from 64 hex digits or base64 (standard or URL-safe, padding optional)."""
    text = text.strip()
    if len(text) != 2 * KEY_BYTES and len(text) > 40 and all(c in string.hexdigits for c in text):
        # Hex of the wrong length (a digit lost or added in a copy) would read as base64 of some length.
        raise CryptoError(f"the voiceprint key must be {2 * KEY_BYTES} hex digits, got {len(text)}")
    try:
        if len(text) == 2 * KEY_BYTES:
            raw = bytes.fromhex(text)
        else:
            urlsafe = text.replace("+", "-").replace("/", "_")
            raw = base64.urlsafe_b64decode(urlsafe + "=" * (-len(urlsafe) % 4))
    except (ValueError, binascii.Error) as exc:
        raise CryptoError("the voiceprint key must be 32 bytes as 64 hex digits or base64") from exc
    if len(raw) != KEY_BYTES:
        raise CryptoError(f"the voiceprint key must be 32 bytes (256 bits), got {len(raw)}")
    return raw


def new_key_text() -> str:
    """A fresh random key in the form ``parse_key`` reads (for documentation and tests)."""
    return os.urandom(KEY_BYTES).hex()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise CryptoError("sealed value is truncated")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoError("sealed value does not open with this key here (wrong key, or moved)") from exc


class KeyEncryptionKey:
    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise CryptoError("a key-encryption key is 32 bytes")
        self._raw = raw
        # Names the key in Redis and in logs without revealing it.
        self.fingerprint = hashlib.sha256(b"voxgate-kek-fingerprint" + raw).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKey:
        return cls(parse_key(text))

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        return _seal(self._raw, data_key, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        return _open(self._raw, blob, aad)

    def check_value(self, aad: bytes) -> bytes:
        return _seal(self._raw, _CHECK_PLAINTEXT, aad)

    def opens_check_value(self, blob: bytes, aad: bytes) -> bool:
        try:
            return _open(self._raw, blob, aad) == _CHECK_PLAINTEXT
        except CryptoError:
            return False


def new_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


class DataKeys:
    """A tenant's data keys by version; seals with the newest, opens with any."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys:
            raise CryptoError("no data key")
        self._keys = dict(keys)
        self.current = max(keys)

    def get(self, version: int) -> bytes | None:
        """The data key of ``version``, when this set has it."""
        return self._keys.get(version)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return _HEADER.pack(SEALED_MAGIC, self.current) + _seal(self._keys[self.current], plaintext, aad)

    def open(self, value: bytes, aad: bytes) -> bytes:
        version = sealed_version(value)
        if version is None:
            raise CryptoError("not a sealed value")
        key = self._keys.get(version)
        if key is None:
            raise CryptoError(f"data key version {version} is gone (rotated out or erased)")
        return _open(key, value[_HEADER.size :], aad)


def sealed_version(value: bytes) -> int | None:
    """The data key version of a sealed value, None for a plain one."""
    if len(value) < _HEADER.size or not value.startswith(SEALED_MAGIC):
        return None
    return int(_HEADER.unpack_from(value)[1])


def value_aad(namespace: str, tenant: str, model_key: str, speaker_id: str, field: str) -> bytes:
    """What a sealed voiceprint value is bound to."""
    return f"voxgate/voiceprint/v1|{namespace}|{tenant}|{model_key}|{speaker_id}|{field}".encode()


def data_key_aad(namespace: str, tenant: str, version: int) -> bytes:
    return f"voxgate/data-key/v1|{namespace}|{tenant}|{version}".encode()


def check_aad(namespace: str) -> bytes:
    return f"voxgate/key-check/v1|{namespace}".encode()
