"""The service's Redis connection: one way to open a client, one mapping of driver failures to
``StoreUnavailable`` (503), one way to read a reply's bytes as text, and ``Batch``: commands of several
modules sent in one round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_exc
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from app.core.errors import StoreUnavailable


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
    except (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.BusyLoadingError, OSError) as exc:
        raise StoreUnavailable(f"Redis is unreachable: {exc}") from exc


def reply_text(value: object) -> str:
    """A Redis reply (the client returns bytes) as text. Bytes that are not UTF-8 (a record edited by
    hand) are replaced, never raised: what reads records must not fail on them."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


class Batch:
    """Commands of several modules sent to Redis in one round trip: a pipeline, not a transaction (each
    Lua script is atomic by itself). Each ``queue``/``script`` call returns the index of its reply in what
    ``run`` returns; a reply that is an error is returned as the exception (``reply`` raises it).

    Scripts are queued as EVALSHA: redis-py's own pipelines first ask ``SCRIPT EXISTS``, a second round
    trip on every call. A script Redis no longer holds (it restarted) is loaded and run again on its own."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pipe: Pipeline = client.pipeline(transaction=False)
        self._scripts: dict[int, tuple[AsyncScript, Sequence[Any], Sequence[Any]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def queue(self, add: Callable[[Pipeline], object]) -> int:
        add(self._pipe)
        self._count += 1
        return self._count - 1

    def script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> int:
        assert script.sha, "a registered script knows its digest"
        index = self.queue(lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args))
        self._scripts[index] = (script, keys, args)
        return index

    async def run(self) -> list[Any]:
        if not self._count:
            return []
        async with redis_errors():
            replies: list[Any] = await self._pipe.execute(raise_on_error=False)
            for index, (script, keys, args) in self._scripts.items():
                if isinstance(replies[index], redis_exc.NoScriptError):
                    replies[index] = await script(keys=list(keys), args=list(args))
        return replies


def reply(value: Any) -> Any:
    """A reply of ``Batch.run``: the value, or its error raised."""
    if isinstance(value, Exception):
        raise value
    return value
