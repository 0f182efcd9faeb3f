"""The limits a rate-limit bucket may have (an API key's, or the service default's)."""

from __future__ import annotations

import math

# The limits a key (or the service default) may have. Below MIN_RATE a bucket would take days to refill
# (and its expiry overflows); NaN and infinities are no rate at all. 0 means no limit.
MIN_RATE = 0.001
MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000


def check_limits(rate: float | None, burst: int | None) -> None:
    """Raise ``ValueError`` (one line) unless ``rate`` and ``burst`` are limits a bucket can have."""
    if rate is not None and not (rate == 0 or (math.isfinite(rate) and MIN_RATE <= rate <= MAX_RATE)):
        raise ValueError(
            f"rate must be 0 (no limit) or {MIN_RATE:g}-{MAX_RATE:g} requests per second, not {rate!r}"
        )
    if burst is not None and not 1 <= burst <= MAX_BURST:
        raise ValueError(f"burst must be 1-{MAX_BURST} requests, not {burst!r}")
