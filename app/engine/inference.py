"""The inference process of a multi-process service (``python -m app.engine.inference``): the one process
per device that owns the ONNX Runtime sessions, speech detection and the batchers (an ``EmbeddingEngine``),
serving every front-end worker over ``app.engine.ipc``.

Started by the supervisor (``app.server.supervisor``) with the settings in its environment and the
board's file descriptor. It warms up and runs the start-up self-check, then listens on the runtime
directory's socket, publishes its load on the board every ``PUBLISH_S`` and marks itself ready there.
Each worker's connection brings the worker's arena; each ``analyze`` runs as a task (the engine batches
the tasks of all workers together) and is cancelled when the worker says so or goes away. SIGTERM: stop
taking connections, finish what was accepted, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from app.audio.recording import Recording, SpeechGate
from app.core.errors import RequestCancelled, VoxGateError
from app.core.logs import configure_logging
from app.core.process import die_with_parent
from app.core.settings import Settings
from app.core.settings_errors import settings_or_report
from app.engine import ipc
from app.engine.arena import ArenaView
from app.engine.board import Board
from app.engine.engine import EmbeddingEngine, Waiting
from app.engine.manifest import ManifestError
from app.engine.selfcheck import SelfCheckFailed

log = logging.getLogger("app.engine.inference")  # not __main__: it runs with -m

PUBLISH_S = 0.02  # how often the load on the board is refreshed (a wait estimate of 20 ms ago is good)


class InferenceServer:
    def __init__(self, engine: EmbeddingEngine, board: Board, generation: int) -> None:
        self.engine = engine
        self.board = board
        self.generation = generation
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, listener: socket.socket, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        publisher = asyncio.create_task(self._publish())
        self.board.set_ready(True)
        log.info("inference process ready", extra={"generation": self.generation})
        try:
            while not stop.is_set():
                accepting = asyncio.ensure_future(loop.sock_accept(listener))
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({accepting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if accepting not in done:
                    accepting.cancel()
                    break
                stopping.cancel()
                conn, _ = accepting.result()
                task = asyncio.create_task(self._connection(conn))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
        finally:
            self.board.set_ready(False)
            listener.close()
            # Accepted work is finished: the workers drained their requests before SIGTERM reached here.
            if self._connections:
                await asyncio.wait(self._connections, timeout=30.0)
            publisher.cancel()

    async def _publish(self) -> None:
        while True:
            self.board.publish(self.engine.load(), time.monotonic())
            await asyncio.sleep(PUBLISH_S)

    async def _connection(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        conn.settimeout(10.0)
        try:
            (kind, worker, pid), fds = await asyncio.to_thread(ipc.receive_with_fds, conn)
            if kind != "hello" or len(fds) != 1:
                raise ipc.ProtocolError("a connection starts with hello and the arena")
        except (OSError, ValueError, ipc.ProtocolError) as exc:
            log.warning("refused a connection: %s", exc)
            conn.close()
            return
        arena = ArenaView(fds[0])
        conn.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=conn)
        selfcheck = self.engine.selfcheck.as_dict() if self.engine.selfcheck is not None else None
        writer.write(
            ipc.frame(
                ("welcome", self.generation, self.engine.provider, self.engine.speech_provider, selfcheck)
            )
        )
        answers = ipc.FrameWriter(writer)
        tasks: dict[int, asyncio.Task[None]] = {}
        log.info("worker connected", extra={"worker": worker, "worker_pid": pid})
        try:
            while True:
                message = await ipc.read_message(reader)
                if message[0] == "analyze":
                    request_id = message[1]
                    task = asyncio.create_task(self._analyze(message, arena, answers))
                    tasks[request_id] = task
                    task.add_done_callback(functools.partial(_forget, tasks, request_id))
                elif message[0] == "cancel":
                    found = tasks.get(message[1])
                    if found is not None:
                        found.cancel()
        except (asyncio.IncompleteReadError, OSError, ipc.ProtocolError) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError):
                log.warning("worker %s: %s", worker, exc)
        finally:
            # The worker is gone (or stopping): nobody waits for these answers.
            for task in list(tasks.values()):
                task.cancel()
            if tasks:
                await asyncio.wait(tasks.values())
            writer.close()
            arena.close()
            log.info("worker disconnected", extra={"worker": worker, "worker_pid": pid})

    async def _analyze(self, message: tuple[Any, ...], arena: ArenaView, answers: ipc.FrameWriter) -> None:
        _, request_id, deadline, items, min_speech, drop_non_speech = message
        try:
            # Copied out at once: the worker may reuse its blocks as soon as it has an answer.
            recordings = [Recording(name, arena.copy(offset, n)) for name, offset, n in items]
            gate = None if min_speech is None else SpeechGate(min_speech)
            found, embeddings = await self.engine.analyze(
                recordings, Waiting(deadline), gate=gate, drop_non_speech=drop_non_speech
            )
            answer: tuple[Any, ...] = (
                "result",
                request_id,
                tuple(
                    (ipc.encode_regions(list(r.regions or ())), e.tobytes())
                    for r, e in zip(found, embeddings, strict=True)
                ),
            )
        except asyncio.CancelledError:
            answer = ipc.encode_error(request_id, RequestCancelled("cancelled by the worker"))
        except VoxGateError as exc:
            answer = ipc.encode_error(request_id, exc)
        except Exception as exc:  # a bug: the worker answers 500 with its request id, logged here too
            log.exception("analyze failed")
            answer = ipc.encode_error(request_id, VoxGateError(f"inference failed: {exc!r}"))
        answers.write(answer)


def _forget(tasks: dict[int, asyncio.Task[None]], request_id: int, _: asyncio.Task[None]) -> None:
    tasks.pop(request_id, None)


def listen(path: Path) -> socket.socket:
    """The inference socket, reachable by this user only (the runtime directory is private too)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    return listener


async def _run(settings: Settings, board: Board, listener: socket.socket) -> int:
    engine = EmbeddingEngine.from_settings(settings)
    generation = board.inference_started(os.getpid())
    await engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await InferenceServer(engine, board, generation).serve(listener, stop)
    finally:
        await engine.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="VoxGate inference process (started by voxgate serve)")
    parser.add_argument("--board-fd", type=int, required=True)
    parser.add_argument("--max-workers", type=int, required=True)
    parser.add_argument("--runtime-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    settings = settings_or_report("voxgate inference")
    if settings is None:
        return 2
    configure_logging(settings)
    board = Board.attach(args.board_fd, args.max_workers)
    path = args.runtime_dir / ipc.SOCKET_NAME
    try:
        return asyncio.run(_run(settings, board, listen(path)))
    except (ManifestError, SelfCheckFailed, OSError, ValueError) as exc:
        log.error("start-up refused: %s", exc)
        return 1
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
