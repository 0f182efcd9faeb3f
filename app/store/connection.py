"""The service's Redis connection: one way to open a client, one mapping of driver failures to
``StoreUnavailable`` (503) and of a Redis at its memory limit to ``StoreFull`` (507), and one way to read
a reply's bytes as text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions as redis_exc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.core.errors import StoreFull, StoreUnavailable


def redis_client(url: str, *, timeout_s: float = 2.0) -> aioredis.Redis:
    """The service's Redis client. Short timeouts: a dead Redis must turn into a quick 503, not a hung
    request. A command that meets a connection Redis closed (it restarted) is retried once on a fresh
    connection, so the first request after Redis is back succeeds; a timeout is not retried."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=10,
        decode_responses=False,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[redis_exc.ConnectionError],
    )


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Map driver connection failures to ``StoreUnavailable`` (the one place that does it)."""
    try:
        yield
    except redis_exc.AuthenticationError as exc:  # (a ConnectionError, with a message of its own)
        raise StoreUnavailable(
            f"Redis refused the connection's credentials ({exc}): its password comes from REDIS_URL or "
            "VOXGATE_REDIS_PASSWORD_FILE"
        ) from exc
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.BusyLoadingError, OSError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc
    except redis_exc.OutOfMemoryError as exc:
        # maxmemory reached under noeviction: Redis refuses writes ("OOM command not allowed ...").
        raise StoreFull(
            "Redis is at its memory limit (maxmemory) and refuses writes; nothing was stored"
        ) from exc


def reply_text(value: object) -> str:
    """A Redis reply (the client returns bytes) as text. Bytes that are not UTF-8 (a record edited by
    hand) are replaced, never raised: what reads records must not fail on them."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
