"""A front-end worker of a multi-process service (``python -m app.server.worker``, started by the
supervisor): the HTTP server, authentication, rate limits, forms, decoding, Redis and scoring, with a
``RemoteEngine`` in front of the inference process instead of an engine of its own.

All workers accept on the one listening socket the supervisor made (the kernel hands each connection to
one of them); each takes its share of ``max_connections``. Its metrics go to the service's
multi-process directory, and its /metrics serves every process's (``prometheus_client.multiprocess``).
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.api.factory import create_app
from app.core.logs import configure_logging
from app.core.process import available_cpus, die_with_parent
from app.core.settings_errors import settings_or_report
from app.engine.board import Board, WorkerSlot
from app.engine.remote import RemoteEngine
from app.server.serve import run_http


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="VoxGate front-end worker (started by voxgate serve)")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--board-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--runtime-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    settings = settings_or_report("voxgate worker")
    if settings is None:
        return 2
    if settings.decode_workers == 0:  # the cores are shared by every worker
        settings = settings.model_copy(update={"decode_workers": max(1, available_cpus() // args.workers)})
    configure_logging(settings)
    board = Board.attach(args.board_fd, args.workers)
    listener = socket.socket(fileno=args.listen_fd)
    registry = CollectorRegistry()  # this process's metrics (their values go to the shared directory)
    exposition = CollectorRegistry()
    MultiProcessCollector(exposition)  # type: ignore[no-untyped-call]

    def engine() -> RemoteEngine:
        return RemoteEngine(
            runtime_dir=args.runtime_dir,
            board=board,
            worker=args.worker,
            model_dir=settings.model_dir,
            arena_bytes=settings.request_memory_bytes,
        )

    app = create_app(
        settings,
        registry=registry,
        engine_factory=engine,
        slot=WorkerSlot(board, args.worker),
        exposition=exposition,
    )
    share = max(1, math.ceil(settings.max_connections / args.workers))
    return run_http(settings, registry, app, sockets=[listener], max_connections=share)


if __name__ == "__main__":
    sys.exit(main())
