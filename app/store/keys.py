"""The Redis key schema (documented in docs/redis-schema.md).

Every key starts with ``{namespace}:{tenant}:``; everything holding embeddings is further namespaced by
the model key (``ModelManifest.model_key()``), so embeddings of different models are never compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import InvalidSpeakerId

# No ':' (the key separator), no spaces or control characters; short enough for logs and keys.
SPEAKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
_SPEAKER_ID_RE = re.compile(SPEAKER_ID_PATTERN)


def invalid_speaker_id() -> InvalidSpeakerId:
    """The one error for a malformed speaker id, wherever it was given (form, path, query)."""
    return InvalidSpeakerId(
        "speaker_id must be 1-128 characters of letters, digits, '_', '.', '@' or '-', "
        "starting with a letter or digit",
        pattern=SPEAKER_ID_PATTERN,
    )


def validate_speaker_id(speaker_id: str) -> str:
    if not _SPEAKER_ID_RE.fullmatch(speaker_id):
        raise invalid_speaker_id()
    return speaker_id


@dataclass(frozen=True)
class KeySchema:
    namespace: str
    tenant: str
    model_key: str

    @property
    def tenant_prefix(self) -> str:
        return f"{self.namespace}:{self.tenant}"

    @property
    def prefix(self) -> str:
        return f"{self.tenant_prefix}:{self.model_key}"

    def speaker(self, speaker_id: str) -> str:
        """Hash: the voiceprint (sum + count) and the speaker's bookkeeping."""
        return f"{self.prefix}:spk:{speaker_id}"

    def speaker_of_model(self, model_key: str, speaker_id: str) -> str:
        return f"{self.tenant_prefix}:{model_key}:spk:{speaker_id}"

    @property
    def speakers(self) -> str:
        """Sorted set (all scores 0, ordered by id) of the model's speaker ids."""
        return f"{self.prefix}:speakers"

    @property
    def version(self) -> str:
        """Counter, incremented by every change; replicas poll it."""
        return f"{self.prefix}:version"

    @property
    def changes(self) -> str:
        """Stream of changes (``v``, ``op``, ``id``), capped; replicas replay it after their version."""
        return f"{self.prefix}:changes"

    @property
    def models(self) -> str:
        """Set of every model key that has stored speakers in this tenant."""
        return f"{self.tenant_prefix}:models"
