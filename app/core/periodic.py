"""A coroutine run every few seconds in the background, for as long as the app runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app.core.errors import StoreUnavailable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` every ``interval_s`` until stopped. A Redis outage is logged and waited out; any
    other error is logged with its traceback and the loop goes on (a bug must not silently stop it)."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval_s = interval_s
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._step()
            except StoreUnavailable as exc:
                log.warning("%s failed: %s", self.name, exc)
            except Exception:
                log.exception("%s crashed", self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
