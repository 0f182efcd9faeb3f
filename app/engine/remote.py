"""``RemoteEngine``: what a front-end worker of a multi-process service has instead of an engine of its own.

It speaks to the inference process (``app.engine.inference``) over ``app.engine.ipc``, with the
request's waveforms in this worker's arena, and reads that process's readiness and load from the board
(``app.engine.board``): admission never waits for a message. A request whose client goes away is
cancelled there too. When the inference process dies, every call in flight fails with 503
``engine_unavailable``, readiness turns false, and the worker connects again to the process the
supervisor starts in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from app.audio.recording import Recording, SpeechGate
from app.core.errors import EngineUnavailable, InvalidRequest, RequestCancelled, VoxGateError
from app.engine import ipc
from app.engine.arena import Arena
from app.engine.board import Board
from app.engine.engine import DISCONNECT_POLL_S, Waiting
from app.engine.load import Load
from app.engine.manifest import ModelManifest, load_manifest
from app.engine.selfcheck import SelfCheckResult

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

RECONNECT_S = 0.2
# An answer overdue by this much past its deadline means the inference process is stuck: give up on it.
OVERDUE_S = 10.0


class RemoteEngine:
    def __init__(
        self, *, runtime_dir: Path, board: Board, worker: int, model_dir: Path, arena_bytes: int
    ) -> None:
        self._socket_path = runtime_dir / ipc.SOCKET_NAME
        self._board = board
        self._worker = worker
        self._arena_bytes = arena_bytes
        # The inference process checked the graph's hash; the worker needs only what the manifest says.
        self.manifest: ModelManifest = load_manifest(model_dir, verify_graph_hash=False)
        self.provider = "unknown"
        self.speech_provider = "unknown"
        self.selfcheck: SelfCheckResult | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._arena: Arena | None = None
        self._generation = -1
        self._pending: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self._ids = itertools.count(1)
        self._keeper: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    # --- state -----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        board = self._board
        return self._connected.is_set() and board.ready and board.generation == self._generation

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        return None  # the inference process's metrics reach /metrics through the multi-process collector

    def load(self) -> Load:
        return self._board.load()

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (waiting for the inference process to be ready), then keep connected."""
        self._keeper = asyncio.create_task(self._keep_connected(), name="voxgate-inference-link")
        await self._connected.wait()

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        self._disconnect(EngineUnavailable("the worker is stopping"))

    async def _keep_connected(self) -> None:
        while True:
            try:
                reader = await self._connect()
            except (OSError, ipc.ProtocolError):
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                await self._read_answers(reader)
            except (OSError, asyncio.IncompleteReadError, ipc.ProtocolError) as exc:
                log.error("lost the inference process: %s", exc or type(exc).__name__)
            self._disconnect(EngineUnavailable("the inference process is gone; it is being restarted"))
            await asyncio.sleep(RECONNECT_S)

    async def _connect(self) -> asyncio.StreamReader:
        if not self._board.ready:
            raise OSError("the inference process is not ready")
        generation = self._board.generation
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        arena = Arena(self._arena_bytes)
        try:
            await asyncio.to_thread(self._handshake, sock, arena)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            welcome = await asyncio.wait_for(ipc.read_message(reader), timeout=10.0)
        except BaseException:
            sock.close()
            arena.close()
            raise
        if welcome[0] != "welcome":
            raise ipc.ProtocolError(f"expected welcome, got {welcome[0]!r}")
        _, generation, self.provider, self.speech_provider, selfcheck = welcome
        self.selfcheck = SelfCheckResult(**selfcheck) if selfcheck is not None else None
        self._writer, self._arena, self._generation = writer, arena, generation
        self._connected.set()
        log.info("connected to the inference process", extra={"generation": generation, "pid": os.getpid()})
        return reader

    def _handshake(self, sock: socket.socket, arena: Arena) -> None:
        sock.settimeout(10.0)
        sock.connect(str(self._socket_path))
        ipc.send_with_fds(sock, ("hello", self._worker, os.getpid()), [arena.fd])
        sock.setblocking(False)

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await ipc.read_message(reader)
            future = self._pending.pop(message[1], None) if len(message) > 1 else None
            if future is not None and not future.done():
                future.set_result(message)

    def _disconnect(self, error: VoxGateError) -> None:
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        # Blocks still in use are freed by their requests; the arena is closed with the last of them.
        retired, self._arena = self._arena, None
        if retired is not None and retired.used_bytes == 0:
            retired.close()

    # --- requests --------------------------------------------------------------------------------
    async def analyze(
        self,
        recordings: Sequence[Recording],
        waiting: Waiting,
        *,
        gate: SpeechGate | None = None,
        drop_non_speech: bool | None = None,
    ) -> tuple[list[Recording], list[Float32Array]]:
        """``EmbeddingEngine.analyze``, in the inference process."""
        if not recordings:
            raise InvalidRequest("no recordings")
        writer, arena = self._writer, self._arena
        if writer is None or arena is None or not self.ready:
            raise EngineUnavailable("the inference process is not ready")
        offsets: list[int] = []
        try:
            for recording in recordings:
                offsets.append(arena.put(recording.waveform))
            request_id = next(self._ids)
            answer = asyncio.get_running_loop().create_future()
            self._pending[request_id] = answer
            items = tuple(
                (r.name, offset, int(r.waveform.shape[0]))
                for r, offset in zip(recordings, offsets, strict=True)
            )
            writer.write(
                ipc.frame(
                    (
                        "analyze",
                        request_id,
                        waiting.deadline,
                        items,
                        None if gate is None else gate.min_seconds,
                        drop_non_speech,
                    )
                )
            )
            message = await self._answer(request_id, answer, waiting, writer)
        finally:
            for offset in offsets:
                arena.free(offset)
            if arena is not self._arena and arena.used_bytes == 0:  # retired by a reconnection
                arena.close()
        if message[0] == "error":
            raise ipc.decode_error(message)
        found, embeddings = [], []
        for recording, (regions, embedding) in zip(recordings, message[2], strict=True):
            found.append(recording.with_regions(ipc.decode_regions(regions)))
            embeddings.append(np.frombuffer(embedding, dtype=np.float32).copy())
        return found, embeddings

    async def _answer(
        self,
        request_id: int,
        answer: asyncio.Future[tuple[Any, ...]],
        waiting: Waiting,
        writer: asyncio.StreamWriter,
    ) -> tuple[Any, ...]:
        """The inference process's answer; when the client goes away (or this task is cancelled) the
        request is cancelled there, and its answer (to the cancellation) awaited before the arena blocks
        are freed: the inference process copies the audio out first, so they are never read late."""
        cancelled = False
        try:
            while True:
                timeout = waiting.deadline + OVERDUE_S - time.monotonic()
                if waiting.is_disconnected is not None and not cancelled:
                    timeout = min(timeout, DISCONNECT_POLL_S)
                done, _ = await asyncio.wait({answer}, timeout=max(0.0, timeout))
                if done:
                    return answer.result()
                if time.monotonic() >= waiting.deadline + OVERDUE_S:
                    self._pending.pop(request_id, None)
                    raise EngineUnavailable("the inference process did not answer in time")
                if not cancelled and waiting.is_disconnected is not None and await waiting.is_disconnected():
                    cancelled = True
                    writer.write(ipc.frame(("cancel", request_id)))
        except asyncio.CancelledError:
            if not answer.done():
                with contextlib.suppress(Exception):
                    writer.write(ipc.frame(("cancel", request_id)))
                    await asyncio.wait_for(asyncio.shield(answer), timeout=5.0)
            raise
        finally:
            if cancelled and answer.done() and answer.exception() is None:
                raise RequestCancelled("client disconnected while waiting for inference")
