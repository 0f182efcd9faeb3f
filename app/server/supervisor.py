"""The supervisor of a multi-process service (``voxgate serve`` with ``VOXGATE_WORKERS`` >= 1): one
inference process (``app.engine.inference``) and N front-end workers (``app.server.worker``).

It makes what they share and nothing else runs here: a private runtime directory (the inference socket,
the multi-process metrics), the board (``app.engine.board``) and the listening socket. The inference
process starts first; the workers once it is ready. Then it watches them:

* a worker that dies is replaced at once (its board slot cleared first: what it held and had on its
  way died with it); the kernel hands new connections to the other workers meanwhile;
* when the inference process dies, readiness turns false on every worker (requests get 503
  ``engine_unavailable``) and a new one is started: a crash (a driver reset, the OOM killer) is usually
  transient, and the workers reconnect by themselves. A replacement that cannot become ready (a broken
  model, a failed self-check) ends the service with status 1, as at start-up, so that an orchestrator
  sees a failed container instead of one that never serves;
* ``RESTART_LIMIT`` unexpected exits within ``RESTART_WINDOW_S`` (a crash loop) end the service too.

SIGTERM or SIGINT: the workers drain first (their connections finish, see ``app.server.protocol``), then
the inference process finishes what is queued and stops. Every child dies with the supervisor
(``app.core.process.die_with_parent``), ``kill -9`` included. Redis is never written here: a request a
dead worker was serving was either stored whole by one Lua script or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from prometheus_client.multiprocess import mark_process_dead

from app.core.settings import Settings, env_var
from app.engine.board import Board
from app.server.protocol import LISTEN_BACKLOG

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 600.0  # model load, warm-up and self-check (a TensorRT engine build is slow)
STOP_TIMEOUT_S = 45.0  # a worker's drain (its requests are bounded by request_timeout_s)
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
POLL_S = 0.1


@dataclass
class _Child:
    role: str  # "inference" or "worker"
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class StartupFailed(Exception):
    pass


class Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self._stopping = False
        self._exits: deque[float] = deque()

    def run(self) -> int:
        runtime = Path(tempfile.mkdtemp(prefix="voxgate-"))  # 0700: this user only
        metrics = runtime / "metrics"
        metrics.mkdir()
        board = Board.create(self.workers)
        listener = uvicorn.Config("app", host=self.settings.host, port=self.settings.port).bind_socket()
        listener.listen(LISTEN_BACKLOG)  # connections queue from now on, until a worker accepts them
        self._env = self._child_env(metrics)
        self._runtime, self._board, self._listener = runtime, board, listener
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        inference: _Child | None = None
        workers: dict[int, _Child] = {}
        try:
            inference = self._start_inference()
            workers = {i: self._start_worker(i) for i in range(self.workers)}
            log.info(
                "voxgate serving",
                extra={"workers": self.workers, "host": self.settings.host, "port": self.settings.port},
            )
            inference = self._watch(inference, workers)
            return 0
        except StartupFailed as exc:
            log.error("start-up refused: %s", exc)
            return 1
        finally:
            self._stop(inference, workers)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            listener.close()
            board.close()
            os.close(board.fd)
            shutil.rmtree(runtime, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("stopping (%s): draining the workers", signal.Signals(signum).name)
        self._stopping = True

    def _child_env(self, metrics: Path) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        # What the command line or the supervisor decided, over the environment: children read settings
        # from it as `voxgate serve` does.
        env.update(
            {
                env_var("host"): s.host,
                env_var("port"): str(s.port),
                env_var("model_dir"): str(s.model_dir),
                env_var("workers"): str(self.workers),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            }
        )
        if s.redis_url is not None:
            env[env_var("redis_url")] = s.redis_url
            env.pop("REDIS_URL", None)
        return env

    def _popen(self, module: str, args: list[str], fds: list[int]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            pass_fds=fds,
            env=self._env,
            # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which stops the
            # children in order (workers drain before the engine stops).
            start_new_session=True,
        )

    def _start_inference(self) -> _Child:
        self._board.set_ready(False)
        process = self._popen(
            "app.engine.inference",
            [
                "--board-fd", str(self._board.fd),
                "--max-workers", str(self.workers),
                "--runtime-dir", str(self._runtime),
            ],
            [self._board.fd],
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._board.ready or self._board.inference_pid != process.pid:
            if process.poll() is not None:
                raise StartupFailed(f"the inference process exited with status {process.returncode}")
            if time.monotonic() > deadline or self._stopping:
                process.kill()
                process.wait()
                raise StartupFailed("the inference process did not become ready")
            time.sleep(POLL_S)
        log.info("inference process ready", extra={"pid": process.pid, "generation": self._board.generation})
        return _Child("inference", 0, process)

    def _start_worker(self, index: int) -> _Child:
        self._board.clear_slot(index)
        process = self._popen(
            "app.server.worker",
            [
                "--worker", str(index),
                "--workers", str(self.workers),
                "--board-fd", str(self._board.fd),
                "--listen-fd", str(self._listener.fileno()),
                "--runtime-dir", str(self._runtime),
            ],
            [self._board.fd, self._listener.fileno()],
        )  # fmt: skip
        return _Child("worker", index, process)

    def _watch(self, inference: _Child, workers: dict[int, _Child]) -> _Child:
        while not self._stopping:
            time.sleep(POLL_S)
            if (status := inference.process.poll()) is not None and not self._stopping:
                self._exited(inference, status)
                inference = self._start_inference()
            for index, child in list(workers.items()):
                if (status := child.process.poll()) is not None and not self._stopping:
                    self._exited(child, status)
                    self._board.clear_slot(index)
                    workers[index] = self._start_worker(index)
        return inference

    def _exited(self, child: _Child, status: int) -> None:
        if child.role == "inference":
            self._board.set_ready(False)  # every worker's /readyz says so until the new one is ready
        mark_process_dead(child.process.pid, str(self._env["PROMETHEUS_MULTIPROC_DIR"]))  # type: ignore[no-untyped-call]
        log.error(
            "%s process %d exited unexpectedly (status %s): restarting it",
            child.role,
            child.process.pid,
            status,
            extra={"role": child.role, "index": child.index, "pid": child.process.pid, "status": status},
        )
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and now - self._exits[0] > RESTART_WINDOW_S:
            self._exits.popleft()
        if len(self._exits) >= RESTART_LIMIT:
            raise StartupFailed(f"{len(self._exits)} processes died within {RESTART_WINDOW_S:g} s")

    def _stop(self, inference: _Child | None, workers: dict[int, _Child]) -> None:
        """Workers first (they drain their connections), then the inference process."""
        self._stopping = True
        _signal([c.process for c in workers.values()])
        # The listening socket is every worker's and this process's: stop it listening now, so that a new
        # connection is refused at once (as by a one-process server), not queued until the last worker
        # has drained and reset then.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RD)
        _terminate([c.process for c in workers.values()], STOP_TIMEOUT_S)
        if inference is not None:
            _terminate([inference.process], STOP_TIMEOUT_S)


def _signal(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)


def _terminate(processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    _signal(processes)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop in %g s: killed", process.pid, timeout_s)
            process.kill()
            process.wait()
