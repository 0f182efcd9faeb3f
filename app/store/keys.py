"""The Redis key schema (documented in docs/redis-schema.md).

Every key starts with ``{namespace}:{tenant}:``; everything holding embeddings is further namespaced by
the model key (``ModelManifest.model_key()``), so embeddings of different models are never compared.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        """Stream: the tenant's audit trail of changes and administrative acts (enrollments, deletions,
        expiries, keys, lockouts, policy, erasure), capped."""
        return f"{self.tenant_prefix}:audit"

    @property
    def audit_decisions(self) -> str:
        """Stream: the tenant's verify and identify decisions, capped apart from the trail so that
        thousands of decisions a second cannot push the changes and administrative acts out of it."""
        return f"{self.tenant_prefix}:audit:decisions"

    @property
    def audit_refusals(self) -> str:
        """Stream: the refusals any caller can cause at the rate it sends (rate limit, scope, a locked
        speaker), capped apart from the trail so that they cannot push anything else out of it."""
        return f"{self.tenant_prefix}:audit:refused"

    @property
    def audit_streams(self) -> tuple[str, str, str]:
        return self.audit, self.audit_decisions, self.audit_refusals

    @property
    def policy(self) -> str:
        """Hash: the tenant's decision policy set by the operator (``threshold``, ``threshold_floor``)."""
        return f"{self.tenant_prefix}:policy"

    def failures(self, speaker_id: str) -> str:
        """Sorted set: the speaker's failed verifications within the lockout window (scored by time)."""
        return f"{self.tenant_prefix}:lockout:failures:{speaker_id}"

    def attempts(self, speaker_id: str) -> str:
        """Sorted set: the speaker's verifications under way (scored by when they began)."""
        return f"{self.tenant_prefix}:lockout:attempts:{speaker_id}"

    @property
    def locked(self) -> str:
        """Sorted set: the tenant's locked speakers, scored by when their lock ends (Redis's clock)."""
        return f"{self.tenant_prefix}:lockout:locked"

    @property
    def tenants(self) -> str:
        """Set of every tenant that has stored voiceprints (namespace-wide)."""
        return tenants_key(self.namespace)


def tenants_key(namespace: str) -> str:
    return f"{namespace}:tenants"


def tenant_keys_pattern(namespace: str, tenant: str) -> str:
    """SCAN pattern of every key of one tenant (voiceprints, data keys, audit streams)."""
    return f"{KeySchema(namespace, tenant, '-').tenant_prefix}:*"


def voiceprint_keys_pattern(namespace: str) -> str:
    """SCAN pattern of every voiceprint hash, all tenants and models."""
    return f"{namespace}:*:spk:*"


def parse_voiceprint_key(namespace: str, key: str) -> tuple[str, str, str]:
    """(tenant, model key, speaker id) of a key that ``voiceprint_keys_pattern`` found."""
    tenant, rest = key[len(namespace) + 1 :].split(":", 1)
    model_key, speaker_id = rest.rsplit(":spk:", 1)
    return tenant, model_key, speaker_id


def data_keys_pattern(namespace: str) -> str:
    """SCAN pattern of every tenant's data-key hash."""
    return f"{namespace}:*:datakeys"


def tenant_of_data_keys(namespace: str, key: str) -> str:
    """The tenant of a key that ``data_keys_pattern`` found."""
    return key[len(namespace) + 1 : -len(":datakeys")]


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
