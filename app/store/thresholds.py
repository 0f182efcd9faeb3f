"""Decision thresholds an operator sets for a tenant (and, on an API key, for one client): the threshold a
decision uses when the request gives none, and the floor below which a request may not lower it.

A tenant's policy is a Redis hash (``{ns}:{tenant}:policy``), read on every decision, so a change holds
on every replica at the next request. How the model's threshold, these and a request's own combine is
``app.speakers.policy.Policy.threshold_for``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from app.store.connection import Batch, redis_errors, reply_text
from app.store.keys import KeySchema

# Scores are cosines in [-1, 1] or AS-Norm z-scores; no threshold outside this can mean anything.
THRESHOLD_LIMIT = 100.0


def check_threshold(value: float, what: str) -> float:
    """``value`` as a threshold (finite, within +-THRESHOLD_LIMIT), or ValueError naming ``what``."""
    if not math.isfinite(value) or abs(value) > THRESHOLD_LIMIT:
        raise ValueError(f"{what} must be a finite number within +-{THRESHOLD_LIMIT:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class ThresholdOverrides:
    """What an operator set: ``threshold`` replaces the one above it (the model's, or the tenant's for a
    key), ``floor`` is the lowest a request may ask for; None = not set here."""

    threshold: float | None = None
    floor: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_threshold(self.threshold, "threshold")
        if self.floor is not None:
            check_threshold(self.floor, "threshold floor")
        if self.threshold is not None and self.floor is not None and self.floor > self.threshold:
            raise ValueError(
                f"the threshold floor {self.floor:g} is above the threshold {self.threshold:g}: every "
                "decision without a threshold of its own would be below the floor"
            )

    @property
    def empty(self) -> bool:
        return self.threshold is None and self.floor is None

    def fields(self) -> dict[FieldT, EncodableT]:
        """As Redis hash fields (only those set)."""
        found = {"threshold": self.threshold, "threshold_floor": self.floor}
        return {name: repr(value) for name, value in found.items() if value is not None}

    @classmethod
    def parse(cls, raw: dict[Any, Any]) -> ThresholdOverrides:
        """From Redis hash fields. A value edited by hand into something unusable counts as not set
        (the threshold above it applies) rather than failing every decision."""
        values: dict[str, float | None] = {}
        for name in ("threshold", "threshold_floor"):
            text = raw.get(name.encode(), raw.get(name))
            try:
                values[name] = check_threshold(float(reply_text(text)), name) if text else None
            except ValueError:
                values[name] = None
        try:
            return cls(values["threshold"], values["threshold_floor"])
        except ValueError:  # a floor above the threshold: the floor alone holds
            return cls(None, values["threshold_floor"])

    def describe(self) -> str:
        parts = []
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        if self.floor is not None:
            parts.append(f"floor {self.floor:g}")
        return ", ".join(parts) or "none"


NO_OVERRIDES = ThresholdOverrides()


class TenantPolicies:
    """Read and set tenants' threshold policies."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def _key(self, tenant: str) -> str:
        return KeySchema(self.namespace, tenant, "-").policy

    def queue_read(self, batch: Batch, tenant: str) -> int:
        """Read the tenant's policy within ``batch`` (parse the reply with ``ThresholdOverrides.parse``)."""
        key = self._key(tenant)
        return batch.queue(lambda pipe: pipe.hgetall(key))

    async def get(self, tenant: str) -> ThresholdOverrides:
        async with redis_errors():
            raw: Any = await self.client.hgetall(self._key(tenant))
        return ThresholdOverrides.parse(raw or {})

    async def set(self, tenant: str, policy: ThresholdOverrides) -> None:
        """Replace the tenant's policy (an empty one removes it: the model's threshold applies)."""
        key = self._key(tenant)
        async with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            if not policy.empty:
                fields = policy.fields()
                fields["updated_at"] = repr(time.time())
                pipe.hset(key, mapping=fields)
            await pipe.execute()
