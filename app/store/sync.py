"""Keeps a replica's ``VoiceprintIndex`` in step with Redis.

Every ``index_sync_interval_s`` the syncer reads the model's version counter (and the id of the last
change stream entry); when they moved, it
replays the change stream after the last entry it applied and re-reads the sums of the speakers that
changed. Stream entries carry consecutive versions, so a gap (the stream was trimmed past us, or
Redis lost its data) is detected and answered with a full reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
import numpy.typing as npt

from app.core.errors import StoreUnavailable
from app.store.index import VoiceprintIndex
from app.store.redis_store import Change, RedisVoiceprintStore

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0


class IndexSyncer:
    def __init__(self, store: RedisVoiceprintStore, index: VoiceprintIndex, interval_s: float) -> None:
        self.store = store
        self.index = index
        self.interval_s = interval_s
        self.version = -1  # nothing loaded yet
        self.stream_id: str | None = None
        self.epoch: str | None = None
        self.last_error: str | None = None
        self.last_success_monotonic: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    @property
    def healthy(self) -> bool:
        """Loaded at least once and the last poll reached Redis."""
        return self.version >= 0 and self.last_error is None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def full_reload(self) -> None:
        point = await self.store.sync_point()
        ids: list[str] = []
        vectors: list[npt.NDArray[np.float32]] = []
        async for batch_ids, batch_sums in self.store.iter_all_sums():
            ids.extend(batch_ids)
            vectors.extend(batch_sums)
        await asyncio.to_thread(self._replace_all, ids, vectors)
        self.version, self.stream_id, self.epoch = point.version, point.stream_id, point.epoch
        # Changes made while we loaded are replayed by the next poll (upserts re-read, so idempotent).
        log.info("voiceprint index loaded", extra={"speakers": len(ids), "version": point.version})

    def _replace_all(self, ids: list[str], vectors: list[npt.NDArray[np.float32]]) -> None:
        matrix = np.stack(vectors) if vectors else np.zeros((0, self.index.dim), dtype=np.float32)
        self.index.replace_all(ids, matrix)

    def _update(self, removed: list[str], ids: list[str], vectors: list[npt.NDArray[np.float32]]) -> None:
        for sid in removed:
            self.index.remove(sid)
        if ids:
            self.index.upsert_many(ids, np.stack(vectors))

    async def write_through(self, speaker_id: str, voiceprint_sum: npt.NDArray[np.float32] | None) -> None:
        """This replica's own write, applied at once (read-your-writes; ``None`` = deleted). Waits for a
        sync in progress: a full reload that read Redis before the write must not overwrite it."""
        async with self._lock:
            removed, ids, vectors = (
                ([speaker_id], [], []) if voiceprint_sum is None else ([], [speaker_id], [voiceprint_sum])
            )
            await asyncio.to_thread(self._update, removed, ids, vectors)

    async def sync_once(self) -> None:
        async with self._lock:
            try:
                await self._sync()
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                raise
            self.last_error = None
            self.last_success_monotonic = time.monotonic()

    async def _sync(self) -> None:
        if self.version < 0:
            await self.full_reload()
        point = await self.store.sync_point()
        remote = point.version
        # Same version *and* same last stream entry: nothing changed. (A restarted, emptied Redis can
        # reach our version number again, but never with the same stream entry id.)
        if point.epoch != self.epoch or (point.epoch is None and len(self.index)):
            # Another history: Redis lost its data (restart without persistence, flush) and writes began
            # anew; its versions say nothing about what this index holds (rows written through, say).
            # No history at all while this index holds rows: those were written through into a history
            # Redis lost before this replica had polled it (the index loaded empty, epoch None).
            await self.full_reload()
            return
        if remote == self.version and point.stream_id == self.stream_id:
            return
        if remote <= self.version:  # Redis lost data or was flushed
            await self.full_reload()
            return
        changes = await self.store.changes_after(self.stream_id)
        expected = self.version + 1
        if not changes or changes[0].version != expected:
            await self.full_reload()
            return
        consecutive: list[Change] = []
        for change in changes:
            if change.version != expected:
                break
            consecutive.append(change)
            expected += 1
        await self._apply(consecutive)
        self.version = consecutive[-1].version
        self.stream_id = consecutive[-1].stream_id

    async def _apply(self, changes: list[Change]) -> None:
        # The last op per speaker wins; upserts re-read the current sum (it may be newer than the entry).
        touched = list(dict.fromkeys(c.speaker_id for c in changes))
        sums = await self.store.get_sums(touched)
        present = [(sid, s) for sid, s in zip(touched, sums, strict=True) if s is not None]
        removed = [sid for sid, s in zip(touched, sums, strict=True) if s is None]
        # Index updates wait for a running search's lock: never on the event loop.
        await asyncio.to_thread(self._update, removed, [sid for sid, _ in present], [s for _, s in present])

    async def start(self) -> None:
        """First load (raises when Redis is unreachable), then poll in the background."""
        await self.sync_once()
        self._task = asyncio.create_task(self._run(), name="voiceprint-index-sync")

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync_once()
            except StoreUnavailable as exc:
                log.warning("index sync failed: %s", exc)
            except Exception:  # keep polling; a bug here must not silently stop the sync
                self.last_error = "index sync crashed; see logs"
                log.exception("index sync crashed")

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if a driver call swallowed the cancellation
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if done:
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        else:  # shutdown must not hang on a stuck Redis call
            log.warning("index sync task did not stop within %s s", STOP_TIMEOUT_S)
