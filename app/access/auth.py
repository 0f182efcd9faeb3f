"""API keys bound to tenants, and the gate every request passes (authentication, rate limit, scope,
audit).

Keys are kept in Redis, so every replica sees a new or revoked key at once.

A key is ``vgk_<key id>_<secret>``: the key id (12 hex digits) names it in lists, logs and the audit
trail; the secret (256 random bits) is shown once, at creation. Redis holds only the SHA-256 of the
secret (a key of 256 random bits needs no slow hash), the tenant, a label, its scopes
(``app.access.scopes``), optional per-key rate limits and thresholds, an optional expiry, and the creation
and revocation times. Every request reads its key's record (no cache), so a revocation takes effect on the
next request on every replica; secrets are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import unicodedata
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from app.access.audit import AuditEvent, AuditLog, AuditNote
from app.access.ratelimit import RateLimiter
from app.access.scopes import ALL_SCOPES, DEFAULT_SCOPES, Scope, scopes_text, stored_scopes
from app.core.errors import (
    ExpiredApiKey,
    InsufficientScope,
    InvalidApiKey,
    MissingApiKey,
    RateLimited,
    RevokedApiKey,
    VoxGateError,
)
from app.core.ids import UNAUTHENTICATED_TENANT, validate_tenant
from app.core.limits import check_limits
from app.store.connection import redis_errors, reply_text
from app.store.keys import api_key_key, api_keys_index
from app.store.thresholds import NO_OVERRIDES, ThresholdOverrides

KEY_PREFIX = "vgk"
_KEY_RE = re.compile(rf"{KEY_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
# Compared against when the key id is unknown, so an unknown and a wrong key take the same time.
_NO_SUCH_HASH = hashlib.sha256(b"voxgate: no such key").hexdigest()
# A label for lists and logs: printable, so that it cannot break a table or write to a terminal.
MAX_KEY_NAME = 100


def _printable_name(name: str) -> bool:
    # No control or format characters (ESC, newlines, bidirectional overrides), no line separators.
    return len(name) <= MAX_KEY_NAME and all(
        unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") for c in name
    )


log = logging.getLogger(__name__)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    name: str
    created_at: float
    rate: float | None = None  # requests per second; None = the service default
    burst: int | None = None
    revoked_at: float | None = None
    scopes: frozenset[Scope] = DEFAULT_SCOPES
    expires_at: float | None = None  # None = never
    thresholds: ThresholdOverrides = NO_OVERRIDES

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "name": self.name,
            "scopes": scopes_text(self.scopes).split(",") if self.scopes else [],
            "rate": self.rate,
            "burst": self.burst,
            "threshold": self.thresholds.threshold,
            "threshold_floor": self.thresholds.floor,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


def _parse(key_id: str, raw: dict[bytes, bytes]) -> ApiKey | None:
    """A stored key record, or None when it names no usable tenant (the key then is not valid).

    Records are Redis hashes anyone with Redis access can edit: unusable limits fall back to the
    service defaults, an unreadable revocation time counts as revoked (fail closed)."""
    try:
        tenant = validate_tenant(reply_text(raw.get(b"tenant", b"")))
    except ValueError:
        log.warning("API key %s names no valid tenant: refused", key_id)
        return None
    try:
        rate = float(raw[b"rate"]) if raw.get(b"rate") else None
        burst = int(raw[b"burst"]) if raw.get(b"burst") else None
        check_limits(rate, burst)
    except ValueError as exc:
        # Written before the limits were checked (a NaN rate), or by hand: the service defaults apply.
        log.warning("API key %s has unusable limits (%s); using the defaults", key_id, exc)
        rate = burst = None
    scopes = raw.get(b"scopes")
    return ApiKey(
        key_id=key_id,
        tenant=tenant,
        name=reply_text(raw.get(b"name", b"")),
        created_at=_time(raw.get(b"created_at")) or 0.0,
        rate=rate,
        burst=burst,
        revoked_at=(_time(raw[b"revoked_at"]) or 0.0) if raw.get(b"revoked_at") else None,
        scopes=stored_scopes(None if scopes is None else reply_text(scopes)),
        # Unreadable: expired (fail closed), as an unreadable revocation time counts as revoked.
        expires_at=(_time(raw[b"expires_at"]) or 0.0) if raw.get(b"expires_at") else None,
        thresholds=ThresholdOverrides.parse(raw),
    )


def _time(value: bytes | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class ApiKeys:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    async def create(
        self,
        tenant: str,
        name: str = "",
        rate: float | None = None,
        burst: int | None = None,
        *,
        scopes: frozenset[Scope] = DEFAULT_SCOPES,
        expires_at: float | None = None,
        thresholds: ThresholdOverrides = NO_OVERRIDES,
    ) -> tuple[ApiKey, str]:
        """A new key for ``tenant``: its record and the full key text (shown once, never stored)."""
        validate_tenant(tenant)
        check_limits(rate, burst)
        if not _printable_name(name):
            raise ValueError(
                f"a key name is at most {MAX_KEY_NAME} printable characters (no control characters)"
            )
        if not scopes or not scopes <= ALL_SCOPES:
            raise ValueError("a key needs at least one scope")
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise ValueError("the key's expiry is in the past")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        record = ApiKey(
            key_id,
            tenant,
            name,
            now,
            rate,
            burst,
            scopes=scopes,
            expires_at=expires_at,
            thresholds=thresholds,
        )
        fields: dict[FieldT, EncodableT] = {
            "tenant": tenant,
            "name": name,
            "hash": _hash(secret),
            "created_at": repr(record.created_at),
            "scopes": scopes_text(scopes),
            **thresholds.fields(),
        }
        if expires_at is not None:
            fields["expires_at"] = repr(float(expires_at))
        if rate is not None:
            fields["rate"] = repr(float(rate))
        if burst is not None:
            fields["burst"] = str(burst)
        async with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(api_key_key(self.namespace, key_id), mapping=fields)
            pipe.zadd(api_keys_index(self.namespace), {key_id: record.created_at})
            await pipe.execute()
        return record, f"{KEY_PREFIX}_{key_id}_{secret}"

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        async with redis_errors():
            ids = [reply_text(i) for i in await self.client.zrange(api_keys_index(self.namespace), 0, -1)]
            pipe = self.client.pipeline(transaction=False)
            for key_id in ids:
                pipe.hgetall(api_key_key(self.namespace, key_id))
            raws = await pipe.execute()
        keys = [_parse(key_id, raw) for key_id, raw in zip(ids, raws, strict=True) if raw]
        return [k for k in keys if k is not None and (tenant is None or k.tenant == tenant)]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (its record stays, marked, for the audit trail); None when there is no such key."""
        key = api_key_key(self.namespace, key_id)
        async with redis_errors():
            if not await self.client.exists(key):
                return None
            await self.client.hsetnx(key, "revoked_at", repr(time.time()))
            raw: Any = await self.client.hgetall(key)
        return _parse(key_id, raw) or ApiKey(key_id, "?", "", 0.0, revoked_at=time.time())

    async def authenticate(self, token: str) -> ApiKey:
        """The key a request presented, or ``KeyRefused`` carrying the 401 to answer.

        A well-formed key whose id exists but whose secret is wrong (tampered) is refused exactly like an
        unknown one; the refusal names the stored key when there is one (for its tenant's audit trail)."""
        match = _KEY_RE.fullmatch(token.strip())
        if match is None:
            raise KeyRefused(InvalidApiKey("the API key is malformed"), None)
        key_id, secret = match.groups()
        async with redis_errors():
            raw: Any = await self.client.hgetall(api_key_key(self.namespace, key_id))
        stored = reply_text(raw.get(b"hash", b"")) if raw else _NO_SUCH_HASH
        record = _parse(key_id, raw) if raw else None
        if not hmac.compare_digest(stored.encode(), _hash(secret).encode()) or record is None:
            raise KeyRefused(InvalidApiKey("the API key is not valid"), record)
        if record.revoked:
            raise KeyRefused(RevokedApiKey(f"API key {key_id} was revoked"), record)
        if record.expired():
            raise KeyRefused(ExpiredApiKey(f"API key {key_id} expired"), record)
        return record


def presented_key(authorization: list[str], x_api_key: list[str]) -> str | None:
    """The one key a request presents (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), None when
    it presents none; ``InvalidApiKey`` for another scheme, or for two different keys (which one acts
    must never depend on the header's order)."""
    keys = [value.strip() for value in x_api_key if value.strip()]
    for value in (v.strip() for v in authorization if v.strip()):
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise InvalidApiKey("the Authorization header must be `Bearer <key>`")
        keys.append(credentials.strip())
    if len(set(keys)) > 1:
        raise InvalidApiKey("more than one API key (Authorization and X-API-Key): send one")
    return keys[0] if keys else None


class KeyRefused(Exception):
    """Authentication failed: ``error`` is the answer; ``key`` the stored key it named, if any."""

    def __init__(self, error: VoxGateError, key: ApiKey | None) -> None:
        super().__init__(error.detail)
        self.error = error
        self.key = key


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: its tenant (from its key, never from the request), that key's id, what
    it may do and the thresholds its key carries."""

    tenant: str
    key_id: str | None = None  # None when the service runs without keys
    # Without keys: every endpoint, but no lowering of a threshold below the floor (no key could carry it).
    scopes: frozenset[Scope] = DEFAULT_SCOPES
    thresholds: ThresholdOverrides = NO_OVERRIDES

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes


class Gate:
    """Authentication and the per-key rate limit of each request, and their audit events."""

    def __init__(
        self,
        keys: ApiKeys,
        limiter: RateLimiter,
        audit: AuditLog,
        *,
        required: bool,
        open_tenant: str,
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.audit = audit
        self.required = required
        self.open_tenant = open_tenant

    async def caller(self, authorization: list[str], x_api_key: list[str], request_id: str | None) -> Caller:
        """The caller of a request with these ``Authorization`` and ``X-API-Key`` header values, or a
        401 (no, invalid, revoked or expired key) / 429 (rate limit) raised."""
        if not self.required:
            return Caller(self.open_tenant)
        try:
            token = presented_key(authorization, x_api_key)
        except InvalidApiKey as unusable:
            await self._refused(None, "authenticate", unusable.code, request_id)
            raise
        if not token:
            await self._refused(None, "authenticate", "missing_api_key", request_id)
            raise MissingApiKey(
                "this endpoint needs an API key: Authorization: Bearer <key> or X-API-Key: <key>"
            )
        try:
            key = await self.keys.authenticate(token)
        except KeyRefused as refused:
            # Refused, it proved no tenant: never its named key's tenant's trail (a wrong secret for a
            # known key id could otherwise fill that tenant's audit stream).
            await self._refused(refused.key, "authenticate", refused.error.code, request_id)
            raise refused.error from None
        try:
            await self.limiter.take(key.key_id, key.rate, key.burst)
        except RateLimited as limited:
            await self._refused(key, "rate_limit", limited.code, request_id)
            raise
        return Caller(key.tenant, key.key_id, key.scopes, key.thresholds)

    async def authorize(self, caller: Caller, scope: Scope, request_id: str | None) -> Caller:
        """``caller`` when its key holds ``scope``, else 403 ``insufficient_scope`` (audited with the
        tenant's refusals)."""
        if caller.may(scope):
            return caller
        await self.audit.record(
            AuditEvent(
                time.time(), caller.tenant, caller.key_id, None, "authorize", InsufficientScope.code,
                request_id, detail=f"needs {scope.value}",
            )
        )  # fmt: skip
        raise InsufficientScope(
            f"API key {caller.key_id} does not hold the scope {scope.value!r} this needs "
            f"(it holds: {scopes_text(caller.scopes) or 'none'})",
            required_scope=scope.value,
        )

    def audited(
        self, caller: Caller, action: str, speaker_id: str | None, request_id: str | None
    ) -> AbstractAsyncContextManager[AuditNote]:
        """Record ``action`` by ``caller`` with the outcome of the block it wraps."""
        return self.audit.audited(caller.tenant, caller.key_id, action, speaker_id, request_id)

    async def _refused(self, key: ApiKey | None, action: str, outcome: str, request_id: str | None) -> None:
        tenant = key.tenant if key is not None and action != "authenticate" else UNAUTHENTICATED_TENANT
        key_id = key.key_id if key is not None else None
        await self.audit.record(AuditEvent(time.time(), tenant, key_id, None, action, outcome, request_id))
