"""Everything that knows Redis keys: the key schema, voiceprints and their replica-local index, tenants,
retention, encryption at rest (the vault), maintenance (tenant erasure, re-encryption) and the embedded
redis-server."""
