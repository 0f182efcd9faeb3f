"""The wire between a front-end worker and the inference process: length-prefixed ``marshal`` messages
(tuples of numbers, strings and bytes: no code runs when one is read, unlike pickle) over a Unix socket in
the service's private runtime directory. Audio is not in them: it is in the worker's arena
(``app.engine.arena``), whose file descriptor travels with the first message (``SCM_RIGHTS``).

Messages (worker -> inference):
    ("hello", worker, pid)                                        + the arena's fd
    ("analyze", id, deadline, ((name, offset, samples), ...), min_speech_s | None, drop_non_speech | None)
    ("cancel", id)
(inference -> worker):
    ("welcome", generation, provider, speech_provider, selfcheck dict | None)
    ("result", id, ((regions: int64 pairs as bytes, embedding: float32 bytes), ...))
    ("error", id, code, detail, extra dict, retry_after_s | None)

``deadline`` is a ``time.monotonic()`` value: CLOCK_MONOTONIC is one clock for every process of a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import socket
import struct
from typing import Any

import numpy as np

from app.audio.vad import Region
from app.core.errors import Overloaded, VoxGateError, error_class

_LENGTH = struct.Struct("<I")
MAX_MESSAGE = 64 * 1024 * 1024  # a result of many recordings' regions; far above anything real
SOCKET_NAME = "inference.sock"


class ProtocolError(ConnectionError):
    """The other side sent something that is not a message of this protocol."""


def frame(message: tuple[Any, ...]) -> bytes:
    payload = marshal.dumps(message)
    return _LENGTH.pack(len(payload)) + payload


class FrameWriter:
    """Messages written in one turn of the event loop leave in one write: the answers to the requests of
    one batch, which all finish in the same turn, cost one system call and one wake-up of the reader
    instead of one each."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []

    def write(self, message: tuple[Any, ...]) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame(message))

    def _flush(self) -> None:
        data = b"".join(self._frames)
        self._frames.clear()
        with contextlib.suppress(OSError, RuntimeError):  # the reader went away: nobody waits for it
            self._writer.write(data)


async def read_message(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next message; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes")
    try:
        message = marshal.loads(await reader.readexactly(length))
    except (ValueError, EOFError, TypeError) as exc:
        raise ProtocolError(f"unreadable message: {exc}") from exc
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ProtocolError("a message is a tuple that starts with its kind")
    return message


def send_with_fds(sock: socket.socket, message: tuple[Any, ...], fds: list[int]) -> None:
    """One message with file descriptors attached (blocking socket; the first message only)."""
    data = frame(message)
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive_with_fds(sock: socket.socket, max_fds: int = 1) -> tuple[tuple[Any, ...], list[int]]:
    """The first message of a connection and the descriptors that came with it (blocking socket)."""
    head, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, max_fds)
    while len(head) < _LENGTH.size:
        more = sock.recv(_LENGTH.size - len(head))
        if not more:
            raise ProtocolError("connection closed during its first message")
        head += more
    (length,) = _LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes")
    body = b""
    while len(body) < length:
        more = sock.recv(length - len(body))
        if not more:
            raise ProtocolError("connection closed during its first message")
        body += more
    message = marshal.loads(body)
    if not isinstance(message, tuple) or not message:
        raise ProtocolError("a message is a tuple that starts with its kind")
    return message, list(fds)


def encode_regions(regions: list[Region]) -> bytes:
    return np.asarray(regions, dtype=np.int64).reshape(-1).tobytes()


def decode_regions(data: bytes) -> tuple[Region, ...]:
    flat = np.frombuffer(data, dtype=np.int64)
    return tuple((int(a), int(b)) for a, b in flat.reshape(-1, 2))


def encode_error(request_id: int, exc: VoxGateError) -> tuple[Any, ...]:
    retry = getattr(exc, "retry_after_s", None)
    extra = {k: v for k, v in exc.extra.items() if isinstance(v, str | int | float | bool | list | None)}
    if isinstance(exc, Overloaded):  # why, for the worker's metrics and log (an argument, not in the body)
        extra["reason"] = exc.reason
    return ("error", request_id, exc.code, exc.detail, extra, retry)


def decode_error(message: tuple[Any, ...]) -> VoxGateError:
    _, _, code, detail, extra, retry = message
    cls = error_class(code)
    if retry is not None:
        return cls(detail, retry_after_s=retry, **extra)
    return cls(detail, **extra)
