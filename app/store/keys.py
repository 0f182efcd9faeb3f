"""The Redis key schema (documented in docs/redis-schema.md).

Every key starts with ``{namespace}:{tenant}:``; everything holding embeddings is further namespaced by
the model key (``ModelManifest.model_key()``), so embeddings of different models are never compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.core.errors import InvalidSpeakerId

# No ':' (the key separator), no spaces or control characters; short enough for logs and keys.
SPEAKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
_SPEAKER_ID_RE = re.compile(SPEAKER_ID_PATTERN)
# Tenant names: the same alphabet as ids but no '@'; they start with a letter or digit ('_' names are
# the service's own, e.g. the audit stream of requests that named no valid key).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TENANT_RE = re.compile(TENANT_PATTERN)
UNAUTHENTICATED_TENANT = "_unauthenticated"


def validate_tenant(tenant: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(
            "a tenant name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return tenant


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
    def epoch(self) -> str:
        """A random id set by the first write of the model's history: a Redis that lost its data starts
        a new history with a new epoch, so replicas reload instead of replaying versions onto stale rows."""
        return f"{self.prefix}:epoch"

    @property
    def changes(self) -> str:
        """Stream of changes (``v``, ``op``, ``id``), capped; replicas replay it after their version."""
        return f"{self.prefix}:changes"

    @property
    def models(self) -> str:
        """Set of every model key that has stored speakers in this tenant."""
        return f"{self.tenant_prefix}:models"

    @property
    def expiry(self) -> str:
        """Sorted set of the model's speaker ids scored by their expiry time (retention)."""
        return f"{self.prefix}:expiry"

    @property
    def data_keys(self) -> str:
        """Hash: the tenant's data keys (voiceprint encryption), wrapped by the key-encryption key."""
        return f"{self.tenant_prefix}:datakeys"

    @property
    def audit(self) -> str:
        """Stream: the tenant's audit trail of enrollments and deletions (capped)."""
        return f"{self.tenant_prefix}:audit"

    @property
    def audit_refusals(self) -> str:
        """Stream: the rate-limit refusals of the tenant's keys, capped apart from the trail so that a
        flood of refused requests cannot push enrollments and deletions out of it."""
        return f"{self.tenant_prefix}:audit:refused"

    @property
    def tenants(self) -> str:
        """Set of every tenant that has stored voiceprints (namespace-wide)."""
        return tenants_key(self.namespace)


def tenants_key(namespace: str) -> str:
    return f"{namespace}:tenants"


def api_key_key(namespace: str, key_id: str) -> str:
    """Hash: one API key (hash of its secret, tenant, label, limits, times); namespace-wide."""
    return f"{namespace}:apikey:{key_id}"


def api_keys_index(namespace: str) -> str:
    """Sorted set of every API key id, scored by creation time."""
    return f"{namespace}:apikeys"


def rate_bucket_key(namespace: str, key_id: str) -> str:
    """Hash: one API key's token bucket (tokens, last refill), shared by every replica."""
    return f"{namespace}:ratelimit:{key_id}"


def crypto_check_key(namespace: str) -> str:
    """Hash: the key-encryption key's fingerprint and a check value only that key opens."""
    return f"{namespace}:crypto"
