"""``voxgate serve``: uvicorn in front of the app, with an embedded redis-server when no REDIS_URL; one
process, or (``VOXGATE_WORKERS``) front-end workers and an inference process under a supervisor
(``app.server.supervisor``)."""

from __future__ import annotations

import logging
import math
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api.factory import create_app
from app.core.logs import configure_logging
from app.core.settings import Settings
from app.server.protocol import (
    ConnectionGuard,
    ConnectionLimits,
    GuardedServer,
    accept_batch,
    fit_to_fd_limit,
    raise_fd_limit,
)
from app.store.embedded_redis import RedisSupervisor, RedisSupervisorError

log = logging.getLogger(__name__)


@contextmanager
def _signals_end_gracefully() -> Iterator[None]:
    """Uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handler it found. With the
    default handler that kills the process before the embedded Redis is shut down; with this one the
    re-raised signal is a no-op and ``serve`` returns normally."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(host: str | None, port: int | None, model_dir: Path | None) -> int:
    settings = Settings.model_validate({})
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if model_dir is not None:
        updates["model_dir"] = model_dir
    settings = settings.model_copy(update=updates)
    configure_logging(settings)

    supervisor: RedisSupervisor | None = None
    if settings.redis_url is None:
        try:
            supervisor = RedisSupervisor(settings.data_dir / "redis")
            settings = settings.model_copy(update={"redis_url": supervisor.start()})
        except RedisSupervisorError as exc:
            log.error("cannot start the embedded redis-server: %s", exc)
            return 1
    try:
        workers = settings.front_end_workers
        if workers:
            from app.server.supervisor import Supervisor

            return Supervisor(settings, workers).run()
        registry = CollectorRegistry()
        return run_http(settings, registry, create_app(settings, registry=registry))
    finally:
        if supervisor is not None:
            supervisor.stop()


def run_http(
    settings: Settings,
    registry: CollectorRegistry,
    app: FastAPI,
    *,
    sockets: list[socket.socket] | None = None,
    max_connections: int | None = None,
) -> int:
    """uvicorn with the guarded protocol, until SIGTERM or SIGINT has drained it; 0 when it served.
    ``sockets``: listening sockets made by the caller (a front-end worker's, shared by all of them), and
    ``max_connections`` its share of the service's connections."""
    # Connection limits and timeouts live in the HTTP protocol (app.server.protocol): uvicorn has no
    # header or body read timeout, and middleware only runs once a request is parsed.
    limits = ConnectionLimits.from_settings(settings)
    if max_connections is not None:
        limits = replace(limits, max_connections=max_connections, accept_batch=accept_batch(max_connections))
    limits = fit_to_fd_limit(limits, raise_fd_limit())
    guard = ConnectionGuard(limits, registry)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guard.protocol_class(),
        backlog=limits.accept_batch,  # per loop tick; GuardedServer sets the kernel's queue
        timeout_keep_alive=math.ceil(limits.keepalive_timeout_s),  # the protocol uses the exact value
        log_config=None,  # configure_logging owns logging
        access_log=False,  # the request middleware writes the access line
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    server = GuardedServer(config, guard)
    with _signals_end_gracefully():
        server.run(sockets=sockets)
    guard.flush_log()
    # uvicorn swallows start-up failures into an exit without serving; report them as failure.
    return 0 if server.started else 1
