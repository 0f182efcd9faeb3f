"""Connection limits, read timeouts and a draining shutdown for uvicorn's h11 protocol.

uvicorn has no header or body read timeout (its keep-alive timer restarts on every byte) and ASGI
middleware only runs once a request has been parsed, so all of this lives in a subclass of uvicorn's
``H11Protocol``, one instance per connection, sharing one ``ConnectionGuard``:

* **Concurrent connections.** At most ``max_connections`` are open. A new connection at the limit
  closes the one that has been idle longest (no request in progress; an ``OrderedDict`` ordered by the
  time each connection last became idle, so O(1)), so a flood of idle sockets cannot lock out
  ``/healthz``. When every connection has a request in progress the newcomer gets ``503
  connection_limit`` with ``Connection: close``. ``fit_to_fd_limit`` keeps the limit well below the
  process's file-descriptor limit (which ``raise_fd_limit`` lifts to its hard limit first).
* **Header read timeout.** From the connection's start, or from the first byte of the next request on
  a keep-alive connection, to the end of the request headers; it is not restarted by later bytes, so a
  client trickling its headers is cut off: ``408 request_timeout`` with ``Connection: close`` when some
  of a request had arrived, a silent close when nothing had.
* **Body idle timeout and minimum rate.** While a request body is arriving, no byte for
  ``body_idle_timeout_s``, or after that long an average below ``body_min_rate_bytes_s`` (a body
  trickled in byte by byte), ends the request: the app's ``receive()`` returns ``http.disconnect``,
  the client gets ``408`` if no response had started, and the socket is closed. Time in which the
  server itself was not reading (its buffer full, or a ``100 Continue`` not yet sent) is not held
  against the client. A client that accepts no response bytes for ``body_idle_timeout_s`` (its window
  shut) is cut off too.
* **Keep-alive idle timeout:** uvicorn's own timer (``keepalive_timeout_s``).
* **Lingering close.** When a connection is closed after an answer given before the request's body
  had arrived (a 429 or 413 from the headers alone), closing at once would make the kernel reset the
  connection under the client's upload, and a client that stops at the write error never reads the
  answer. Instead the rest of the body is read and dropped, for at most ``LINGER_S`` and ``LINGER_BYTES``,
  and then the connection is closed.
* **Bounded logs.** Refusals, evictions, timeouts and malformed requests are counted (Prometheus:
  ``voxgate_http_connections_dropped_total{reason}``) and logged as one summary line per
  ``SUMMARY_INTERVAL_S`` at most, never a line per connection.
* **Draining shutdown** (uvicorn calls ``shutdown()`` on every connection after closing the listening
  sockets): every response not yet started carries ``Connection: close`` and the connection closes
  after it; an idle keep-alive connection is given ``drain_grace_s`` in which a request that arrives is
  still served (with ``Connection: close``), then closed; so a keep-alive client never has a request
  the server received reset under it. uvicorn then waits for the connections and tasks, and runs the
  app's lifespan shutdown.

Everything is timers and callbacks on the event loop; nothing blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, ClassVar, Final, Protocol

import h11
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import CLOSE_HEADER, FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.api.problems import PROBLEM_MEDIA_TYPE, problem_type

log = logging.getLogger(__name__)

# File descriptors kept free of connections: Redis clients, the model and log files, the event loop's
# own descriptors, thread-pool pipes, the embedded redis-server's pipes (a served process uses ~40).
FD_RESERVE: Final = 256
# The kernel's queue of connections not yet accepted (uvicorn's default backlog; Linux caps it at
# net.core.somaxconn). A short queue makes the kernel drop SYNs under a flood: +1 s per retry to connect.
LISTEN_BACKLOG: Final = 2048
# asyncio accepts up to ``backlog`` sockets per loop tick (uvicorn passes it to both listen() and the
# accept loop), and their protocols all see connection_made before any of them reads a byte: a batch as
# large as max_connections lets one burst of a flood evict every open connection, a /healthz probe whose
# request is already waiting in its socket included. A quarter of the limit gives each connection a few
# ticks to be read; ``GuardedServer`` then raises the kernel's queue back to LISTEN_BACKLOG. A flood can
# hold a few such batches of sockets beyond the open connections.
ACCEPT_BURSTS: Final = 3


def accept_batch(max_connections: int) -> int:
    """The most sockets asyncio accepts per loop tick, for a connection limit."""
    return min(LISTEN_BACKLOG, max(1, max_connections // 4))


SUMMARY_INTERVAL_S: Final = 5.0
DROP_REASONS: Final = (
    "refused",  # at the limit with no idle connection: 503
    "evicted",  # idle connection closed to make room for a new one
    "header_timeout",  # request headers incomplete after header_timeout_s (408, or closed if nothing came)
    "body_timeout",  # no request body byte for body_idle_timeout_s (408 if no response had started)
    "body_too_slow",  # request body below body_min_rate_bytes_s on average after the idle timeout (408)
    "write_timeout",  # the client accepted no response byte for body_idle_timeout_s
    "invalid_request",  # malformed HTTP (uvicorn's 400)
)
_INVALID_REQUEST_MSG: Final = "Invalid HTTP request received."  # uvicorn's warning, counted instead


class ConnectionSettings(Protocol):
    """The part of ``app.core.settings.Settings`` the connection limits read."""

    @property
    def max_connections(self) -> int: ...

    @property
    def header_timeout_s(self) -> float: ...

    @property
    def body_idle_timeout_s(self) -> float: ...

    @property
    def keepalive_timeout_s(self) -> float: ...

    @property
    def drain_grace_s(self) -> float: ...

    @property
    def body_min_rate_bytes_s(self) -> float: ...


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    body_idle_timeout_s: float
    keepalive_timeout_s: float
    drain_grace_s: float
    accept_batch: int = LISTEN_BACKLOG // 4
    body_min_rate_bytes_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: ConnectionSettings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections,
            header_timeout_s=settings.header_timeout_s,
            body_idle_timeout_s=settings.body_idle_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            drain_grace_s=settings.drain_grace_s,
            accept_batch=accept_batch(settings.max_connections),
            body_min_rate_bytes_s=settings.body_min_rate_bytes_s,
        )


def raise_fd_limit() -> int:
    """Lift RLIMIT_NOFILE's soft limit to the hard limit (logged); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    log.info("open-file limit raised from %d to %d", soft, target, extra={"fd_limit": target})
    return target


def fit_to_fd_limit(limits: ConnectionLimits, fd_limit: int) -> ConnectionLimits:
    """The limits with ``max_connections`` (and the accept batch) lowered so that the connections, a few
    accept batches and ``FD_RESERVE`` fit in ``fd_limit`` descriptors; a lowered limit is logged."""
    room = max(fd_limit - FD_RESERVE, 2)
    if limits.max_connections + ACCEPT_BURSTS * limits.accept_batch <= room:
        return limits
    # max_connections + ACCEPT_BURSTS * max_connections / 4 <= room
    fitted = max(1, min(limits.max_connections, room * 4 // (4 + ACCEPT_BURSTS)))
    batch = min(limits.accept_batch, accept_batch(fitted))
    if fitted < limits.max_connections:
        log.warning(
            "max_connections lowered from %d to %d: the process may open %d files (RLIMIT_NOFILE)",
            limits.max_connections,
            fitted,
            fd_limit,
            extra={"max_connections": fitted, "requested": limits.max_connections, "fd_limit": fd_limit},
        )
    return replace(limits, max_connections=fitted, accept_batch=batch)


def problem_response_bytes(
    status: int,
    reason: str,
    code: str,
    detail: str,
    request_id: str | None = None,
    instance: str | None = None,
) -> bytes:
    """A complete HTTP/1.1 problem+json response with ``Connection: close``, for answers given below
    the app (the connection is closed right after it). ``instance``, the request's path, only when a
    request was read that far (the document's ``Problem`` has it optional)."""
    request_id = request_id or uuid.uuid4().hex
    problem: dict[str, object] = {
        "type": problem_type(code),
        "title": reason,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if instance is not None:
        problem["instance"] = instance
    body = json.dumps(problem).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        f"content-type: {PROBLEM_MEDIA_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
        f"x-request-id: {request_id}",
    ]
    if status == 503:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _InvalidRequestWarnings(logging.Filter):
    """Drops uvicorn's per-request "Invalid HTTP request received." warning (the guard counts them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _INVALID_REQUEST_MSG


def _framing_is_ambiguous(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Both Content-Length and Transfer-Encoding: h11 reads the body by Transfer-Encoding, as RFC 9112
    §6.1 allows, but a proxy in front may have read it by Content-Length, so the connection must close
    after the answer: bytes after the chunked body would otherwise run as a request no proxy saw."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


class ConnectionGuard:
    """What the connections of one server share: the limits, the idle connections in the order they
    became idle, the open count, the drop counters and the rate-limited summary log."""

    def __init__(self, limits: ConnectionLimits, registry: CollectorRegistry | None = None) -> None:
        self.limits = limits
        self._metrics = _ConnectionMetrics(registry if registry is not None else CollectorRegistry(), limits)
        self.idle: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self.open = 0
        self.draining = False
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._unlogged = dict.fromkeys(DROP_REASONS, 0)
        self._summary: asyncio.TimerHandle | None = None

    def protocol_class(self) -> type[GuardedH11Protocol]:
        """The protocol class to pass as ``uvicorn.Config(http=...)``, bound to this guard."""
        uvicorn_log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _InvalidRequestWarnings) for f in uvicorn_log.filters):
            uvicorn_log.addFilter(_InvalidRequestWarnings())
        guard = self

        class BoundGuardedH11Protocol(GuardedH11Protocol):
            pass

        BoundGuardedH11Protocol.guard = guard
        return BoundGuardedH11Protocol

    # --- bookkeeping ---

    def admit(self, proto: GuardedH11Protocol, loop: asyncio.AbstractEventLoop) -> bool:
        """Make room for a new connection; False when it must be refused (all others busy)."""
        while self.open >= self.limits.max_connections:
            if not self.idle:
                self.note("refused", loop)
                return False
            victim, _ = self.idle.popitem(last=False)
            victim.evict()
        self.open += 1
        self._metrics.open.inc()
        return True

    def mark_idle(self, proto: GuardedH11Protocol) -> None:
        self.idle[proto] = None
        self.idle.move_to_end(proto)

    def mark_busy(self, proto: GuardedH11Protocol) -> None:
        self.idle.pop(proto, None)

    def release(self, proto: GuardedH11Protocol) -> None:
        self.idle.pop(proto, None)
        self.open -= 1
        self._metrics.open.dec()

    def begin_drain(self) -> None:
        """From now on every response not yet started says Connection: close (idempotent)."""
        if self.draining:
            return
        self.draining = True
        log.info(
            "draining HTTP connections",
            extra={"open_connections": self.open, "idle_connections": len(self.idle)},
        )

    # --- counting and the summary line ---

    def note(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self.dropped[reason] += 1
        self._metrics.dropped.labels(reason).inc()
        self._unlogged[reason] += 1
        if self._summary is None:
            self._summary = loop.call_later(SUMMARY_INTERVAL_S, self.flush_log)

    def flush_log(self) -> None:
        """Log what was dropped since the last summary (one line), if anything."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        counts = {reason: n for reason, n in self._unlogged.items() if n}
        if not counts:
            return
        self._unlogged = dict.fromkeys(DROP_REASONS, 0)
        log.warning(
            "HTTP connections dropped: %s",
            ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in counts.items()),
            extra={
                **counts,
                "open_connections": self.open,
                "max_connections": self.limits.max_connections,
                "interval_s": SUMMARY_INTERVAL_S,
            },
        )


class _ConnectionMetrics:
    """The guard's figures as Prometheus metrics (on the server's registry; in a multi-process service each
    worker's are summed by the multi-process collector)."""

    def __init__(self, registry: CollectorRegistry, limits: ConnectionLimits) -> None:
        self.open = Gauge(
            "voxgate_http_connections",
            "Open HTTP connections.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.max = Gauge(
            "voxgate_http_connections_max",
            "Most concurrent HTTP connections (max_connections).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.max.set(limits.max_connections)
        self.dropped = Counter(
            "voxgate_http_connections_dropped",
            "HTTP connections refused at the limit, evicted while idle, or cut off by a timeout.",
            ("reason",),
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)


class _ReadClock(FlowControl):
    """uvicorn's flow control, remembering when the server last asked for more (it resumed reading, or
    the app called ``receive()``, which resumes reading first): a client's body idle time counts from
    the later of that and its last byte, so time in which the server would not read is not held
    against it."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        on_ready: Callable[[bool], None],
    ) -> None:
        super().__init__(transport)
        self._loop = loop
        self._on_ready = on_ready
        self.ready_at = loop.time()

    def resume_reading(self) -> None:
        was_paused = self.read_paused
        self.ready_at = self._loop.time()
        super().resume_reading()
        self._on_ready(was_paused)


# A connection closed after an early answer keeps reading (and dropping) the client's upload this long /
# this much at most before it is closed for good.
LINGER_S = 5.0
LINGER_BYTES = 64 * 1024 * 1024


class _LingeringTransport:
    """The transport a request/response cycle sees: ``close()`` lingers while the request body is still
    arriving (see the module docstring), and a response's head goes out with its first body bytes, in one
    write (one system call instead of two: writes were a quarter of the front end's CPU); everything
    else is the real transport."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._head: bytes | None = None
        self._head_seen = False  # the cycle's first write is its response's head
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._head_seen and bytes(data[:5]) == b"HTTP/":
            self._head_seen = True
            # The head, alone: held until the body's first write, or the end of this loop iteration.
            self._head = bytes(data)
            self._flush_handle = self._protocol.loop.call_soon(self._flush)
            return
        if self._head is not None:
            data = self._head + bytes(data)
            self._head = None
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
        if data:
            self._transport.write(data)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        if self._protocol.conn.their_state is h11.SEND_BODY and not self._transport.is_closing():
            self._protocol.linger()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of the module docstring; ``guard`` is set on the class
    that ``ConnectionGuard.protocol_class`` makes."""

    guard: ClassVar[ConnectionGuard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.guard.limits
        self.timeout_keep_alive = limits.keepalive_timeout_s  # type: ignore[assignment]  # call_later takes float
        self._counted = False  # holds one of the guard's connection slots
        self._busy = False  # a request is being served (headers parsed, response not complete)
        self._seen_cycle: object | None = None
        self._last_read = 0.0
        self._read_clock: _ReadClock | None = None
        # Body rate: bytes since ``_rate_since``, restarted whenever the server was what held the body up.
        self._rate_since = 0.0
        self._rate_bytes = 0
        self._awaiting_continue = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingered_bytes: int | None = None  # set while lingering: bytes dropped so far

    # --- connection life ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.guard.admit(self, self.loop):
            self.transport = transport
            transport.write(
                problem_response_bytes(
                    503,
                    "Service Unavailable",
                    "connection_limit",
                    "every connection the server accepts is serving a request; retry shortly",
                )
            )
            transport.close()
            return
        self._counted = True
        super().connection_made(transport)
        self._read_clock = self.flow = _ReadClock(transport, self.loop, self._server_ready)
        self._last_read = self.loop.time()
        self.guard.mark_idle(self)
        self._start_header_timer()
        if self.guard.draining:  # accepted just before the listening sockets closed
            self._start_grace()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._read_clock is None:
            return  # refused in connection_made: uvicorn never saw it
        self._close_slot()
        super().connection_lost(exc)

    def _close_slot(self) -> None:
        if self._counted:
            self._counted = False
            self.guard.release(self)

    def _cancel_timers(self) -> None:
        timers = (
            self._header_timer,
            self._body_timer,
            self._write_timer,
            self._grace_timer,
            self._linger_timer,
        )
        for timer in timers:
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._write_timer = self._grace_timer = None
        self._linger_timer = None

    def _close(self) -> None:
        """Close from our side, without an answer (the connection has no request in progress)."""
        self._close_slot()
        self._cancel_timers()
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def evict(self) -> None:
        """Closed by the guard to make room for a new connection (it is idle)."""
        self.guard.note("evicted", self.loop)
        self._close()

    # --- reading ---

    def linger(self) -> None:
        """Closing after an early answer: read and drop the rest of the upload first (bounded)."""
        self._cancel_timers()
        self._unset_keepalive_if_required()
        self._lingered_bytes = 0
        self.transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self._close)

    def data_received(self, data: bytes) -> None:
        if self._lingered_bytes is not None:  # closing: the upload is dropped unparsed
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_BYTES:
                self._close()
            return
        self._last_read = self.loop.time()
        if self.conn.their_state is h11.SEND_BODY:
            self._rate_bytes += len(data)
        super().data_received(data)
        self._after_events()

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen_cycle and not cycle.response_complete:
            self._seen_cycle = cycle
            cycle.transport = _LingeringTransport(self.transport, self)  # type: ignore[assignment]
            self._request_started()

    def _request_started(self) -> None:
        """A request's headers are complete and the app is about to run."""
        self._busy = True
        self.guard.mark_busy(self)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self.guard.draining or _framing_is_ambiguous(self.cycle.scope["headers"]):
            self.close_after_response()
        if self.conn.their_state is h11.SEND_BODY and self._body_timer is None:
            self._restart_rate()
            self._awaiting_continue = self.cycle.waiting_for_100_continue
            self._body_timer = self.loop.call_later(self.guard.limits.body_idle_timeout_s, self._check_body)

    def _restart_rate(self) -> None:
        self._rate_since = self.loop.time()
        self._rate_bytes = 0

    def _server_ready(self, was_paused: bool) -> None:
        """The server resumed reading, or the app asked for body (after its 100 Continue, if expected)."""
        if was_paused:
            self._restart_rate()
        elif self._awaiting_continue and self.cycle is not None and not self.cycle.waiting_for_100_continue:
            self._awaiting_continue = False
            self._restart_rate()

    def _after_events(self) -> None:
        """After parsing: part of the next request buffered (headers incomplete) starts its header timer
        (at the first byte, not restarted by later ones)."""
        if self._busy or self._header_timer is not None or self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._start_header_timer()

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._header_timeout)

    def on_response_complete(self) -> None:
        self._busy = False
        if self._counted and not self.transport.is_closing():
            self.guard.mark_idle(self)
        super().on_response_complete()  # arms the keep-alive timer; may start a pipelined request
        if not self.transport.is_closing():
            self._after_events()
            if self.guard.draining and not self._busy:
                self._start_grace()

    # --- timeouts ---

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._busy or self.transport.is_closing():
            return
        self.guard.note("header_timeout", self.loop)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._close_slot()
            self._cancel_timers()
            self.transport.write(
                problem_response_bytes(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"request headers not received within {self.guard.limits.header_timeout_s:g} s",
                )
            )
            self.transport.close()
        else:
            self._close()  # nothing of a request came: there is nobody to answer

    def _check_body(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        timeout = self.guard.limits.body_idle_timeout_s
        clock = self._read_clock
        assert clock is not None  # set in connection_made, before any request
        cycle = self.cycle
        if clock.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # The server is not reading, or the client waits for its 100 Continue: it is not idle.
            self._restart_rate()
            self._body_timer = self.loop.call_later(timeout, self._check_body)
            return
        now = self.loop.time()
        remaining = timeout - (now - max(self._last_read, clock.ready_at))
        if remaining <= 0:
            self._end_body("body_timeout", f"no request body byte received for {timeout:g} s")
            return
        min_rate = self.guard.limits.body_min_rate_bytes_s
        elapsed = now - self._rate_since
        if min_rate > 0 and elapsed > timeout and self._rate_bytes < min_rate * (elapsed - timeout):
            self._end_body("body_too_slow", f"the request body arrived at under {min_rate:g} bytes/s")
            return
        self._body_timer = self.loop.call_later(remaining, self._check_body)

    def _end_body(self, reason: str, detail: str) -> None:
        """Cut off a request whose body stalled: the app sees a disconnect, the client a 408 (if no
        response had started), the connection is closed."""
        self.guard.note(reason, self.loop)
        cycle = self.cycle
        answer = b""
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                state = cycle.scope.get("state") or {}
                request_id = state.get("request_id") if isinstance(state, dict) else None
                path = cycle.scope.get("path")
                answer = problem_response_bytes(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    detail,
                    request_id if isinstance(request_id, str) else None,
                    path if isinstance(path, str) else None,
                )
            cycle.disconnected = True  # the app's receive() returns http.disconnect, its sends are dropped
            cycle.message_event.set()
        self._close_slot()
        self._cancel_timers()
        if answer:
            self.transport.write(answer)
        self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self._close_slot()
        super().timeout_keep_alive_handler()

    # --- writing ---

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            timeout = self.guard.limits.body_idle_timeout_s
            self._write_timer = self.loop.call_later(timeout, self._write_timeout)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _write_timeout(self) -> None:
        self._write_timer = None
        if self.transport.is_closing() and not self.flow.write_paused:
            return
        self.guard.note("write_timeout", self.loop)
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._close_slot()
        self._cancel_timers()
        self.flow.resume_writing()  # wakes a send() waiting to drain; it sees the disconnect
        self.transport.abort()  # close() would wait for the unread bytes to be sent

    # --- uvicorn's per-connection log lines, counted instead ---

    def send_400_response(self, msg: str) -> None:
        self.guard.note("invalid_request", self.loop)
        self._close_slot()
        self._cancel_timers()
        super().send_400_response(msg)

    def _unsupported_upgrade_warning(self) -> None:
        pass  # no WebSocket routes: the request is served as plain HTTP; not worth a line per request

    # --- shutdown ---

    def close_after_response(self) -> None:
        """A request whose response has not started is answered with Connection: close, and the
        connection closes after it (draining; ambiguous framing). (A response already under way ends as
        it began; when draining, the connection then gets the idle grace.)"""
        cycle = self.cycle
        if not self._busy or cycle is None or cycle.response_complete or cycle.response_started:
            return
        cycle.keep_alive = False
        if CLOSE_HEADER not in cycle.default_headers:
            cycle.default_headers = [*cycle.default_headers, CLOSE_HEADER]

    def shutdown(self) -> None:
        """Called by uvicorn on every connection once the listening sockets are closed."""
        self.guard.begin_drain()
        if not self._counted or self.transport.is_closing():
            return
        if self._busy:
            self.close_after_response()
        else:
            self._start_grace()

    def _receiving_request(self) -> bool:
        """Part of a request's headers has arrived (it will be served, with Connection: close)."""
        return self._header_timer is not None and bool(self.conn.trailing_data[0])

    def _start_grace(self) -> None:
        """Draining, idle: a request that arrives within drain_grace_s is served, then the connection
        closes; one that has partly arrived is left to finish (its header timeout bounds it)."""
        if self._grace_timer is not None or self._receiving_request():
            return
        grace = self.guard.limits.drain_grace_s
        if grace <= 0:
            self._close()
        else:
            self._grace_timer = self.loop.call_later(grace, self._end_grace)

    def _end_grace(self) -> None:
        self._grace_timer = None
        if self.transport.is_closing() or self._busy or self._receiving_request():
            return
        self._close()


class GuardedServer(uvicorn.Server):
    """uvicorn's server, draining from the moment SIGTERM or SIGINT arrives: uvicorn notices the signal
    at its next 0.1 s tick and only then closes the listening sockets and calls each connection's
    ``shutdown()``; here the sockets close and every response not yet started gets Connection: close at
    once, so no response sent after the signal invites the client to reuse its connection."""

    def __init__(self, config: Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up (listen(accept_batch): Config(backlog=) is asyncio's accept batch too),
        then the kernel's queue of pending connections back to LISTEN_BACKLOG."""
        await super().startup(sockets)
        for server in getattr(self, "servers", ()):
            for listener in server.sockets:
                with listener.dup() as sock:  # the same listening socket, on another descriptor
                    sock.listen(LISTEN_BACKLOG)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self.started and not self.guard.draining:
            self._loop.call_soon_threadsafe(self._drain_now)

    def _drain_now(self) -> None:
        for server in getattr(self, "servers", ()):
            server.close()  # stop accepting (uvicorn's shutdown closes them again: a no-op)
        self.guard.begin_drain()
        for connection in list(self.server_state.connections):
            if isinstance(connection, GuardedH11Protocol):
                connection.close_after_response()
