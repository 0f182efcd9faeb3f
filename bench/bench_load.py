"""Load and hostile-traffic test of ``voxgate serve`` (issue 10, section 5; a benchmark, not a test).

It starts its own redis-server (free port, no persistence) and its own ``voxgate serve`` subprocess on
127.0.0.1 (a fresh one per scenario unless ``--restart needed``), enrolls one speaker from the
repository's speech (tests/data/speech), and runs, each bounded in count and time:

* ``big_uploads``: N clients POST /enroll, each with F float32 WAV uploads of 297 s (19.0 MB, just
  under the 20 MiB upload limit), made by tiling real speech;
* ``too_long_uploads``: the same with 594 s float32 WAVs at 8 kHz (19.0 MB: within the upload limit,
  twice the 300 s audio limit), which should be refused (422) without buffering or decoding them;
* ``decode_bombs``: N clients POST /enroll with F Opus files of 299 s at about 6 kbit/s (~233 KB each);
* ``overload``: a closed-loop calibration of /verify (the sustainable rate, printed), then open-loop
  Poisson arrivals at twice that rate (``--overload-factor``), one connection per request;
* ``slow_clients``: normal /verify traffic (open loop, ``--normal-rate``) alone, then alongside trickle
  clients: request headers sent one byte at a time, bodies that stall after 1 KiB, and idle keep-alive
  connections after one request; are they cut off (408, closed) and does normal traffic keep its latency;
* ``idle_flood``: up to 20,000 idle TCP connections (no byte sent), opened by helper processes, while
  /healthz is polled; server fd count, log lines produced, and whether /healthz recovers afterwards;
* ``sigterm``: keep-alive clients loop on /verify, the server gets SIGTERM: responses after it with and
  without ``Connection: close``, resets of requests already sent, refused reconnects, the exit status.

Every request goes through a small HTTP/1.1 client of its own on raw non-blocking sockets under asyncio
(not a library, not asyncio streams: they drop data already received once a write fails), so resets,
refusals, timeouts, early answers and ``Connection: close`` are seen exactly as the socket sees them;
the body is sent while the response is read, so an answer given before the upload ends is seen.
Server RSS (VmRSS of the process and its children) is sampled every 50 ms in a thread, fds every 0.5 s;
above ``--rss-cap-gib`` (6 GiB: the pod's memory limit in deploy/base) the server is SIGKILLed, as the
kernel would OOM-kill the pod, and the row says so. Memory "after" is read once the server is idle
again (its CPU use under 0.1 core for 1 s, at most ``--settle-max-s``) and has had the time to trim its
heap twice (5 s; not in ``--quick``).

Usage (smoke size, about a minute):  python -m bench.bench_load --quick
Full run (about 4 minutes here):     python -m bench.bench_load --json load.json
Some scenarios, other settings:      python -m bench.bench_load --scenarios overload,sigterm \\
                                         --env VOXGATE_QUEUE_SIZE=64
Settings reach the server as environment variables: every VOXGATE_* variable of this process, then
``--env NAME=VALUE``; the ones passed are printed, the rest are the service's defaults. Loopback only.
With VOXGATE_AUTH=required, pass ``--api-key KEY``. ``--app-root DIR`` serves another tree's ``app``
(e.g. a ``git archive`` of a commit) instead of the installed one.
Results: one Markdown table on stdout, target checks after it, ``--json FILE`` for all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import errno
import hashlib
import io
import itertools
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from app.engine.admission import TRIM_INTERVAL_S

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEECH = REPO_ROOT / "tests" / "data" / "speech"
DEFAULT_CACHE = REPO_ROOT / "data" / "bench-load"
HOST = "127.0.0.1"
SR = 16000
SCENARIOS = (
    "big_uploads",
    "too_long_uploads",
    "decode_bombs",
    "overload",
    "slow_clients",
    "idle_flood",
    "sigterm",
)
ERROR_KINDS = ("reset", "closed", "refused", "timeout")  # then any other errno name
SPEAKER = "bench-load-speaker"
# Verifications go to this many speakers in turn (the same voice enrolled under each name): the lockout
# lets only so many verifications of one speaker be under way at once (429 speaker_busy beyond).
SPEAKERS = 16
BOUNDARY = "voxgate-bench-load-7c1d"
CHUNK = 1 << 20  # bytes per socket write of a body
MiB = 1 << 20
GiB = 1 << 30
Float32Array = npt.NDArray[np.float32]


# --- sizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Every count and duration of a run (``FULL`` or ``QUICK``; some can be overridden on the CLI)."""

    big_clients: int = 20
    big_files: int = 10
    big_seconds: float = 297.0  # float32 16 kHz: 19.0 MB, under the 20 MiB upload limit
    big_timeout_s: float = 60.0
    long_clients: int = 20
    long_files: int = 10
    long_seconds: float = 594.0  # float32 8 kHz: 19.0 MB; twice the 300 s audio limit
    long_timeout_s: float = 60.0
    bomb_clients: int = 20
    bomb_files: int = 10
    bomb_seconds: float = 299.0
    bomb_timeout_s: float = 60.0
    calib_clients: int = 8
    calib_s: float = 10.0
    overload_factor: float = 2.0
    overload_s: float = 40.0
    overload_timeout_s: float = 40.0
    ok_p99_bound_s: float = 2.0  # the example bound for 200s under overload
    normal_rate: float = 5.0
    slow_baseline_s: float = 10.0
    slow_s: float = 25.0
    slow_header: int = 100
    slow_body: int = 100
    slow_idle: int = 50
    trickle_interval_s: float = 0.5
    flood_connections: int = 20000
    flood_ramp_s: float = 30.0
    flood_hold_s: float = 15.0
    healthz_interval_s: float = 0.2
    healthz_timeout_s: float = 2.0
    sigterm_clients: int = 16
    sigterm_before_s: float = 3.0
    sigterm_drain_s: float = 45.0
    request_timeout_s: float = 30.0  # normal traffic (calibration, slow_clients, sigterm)
    settle_max_s: float = 20.0
    # Once idle, the server trims its heap within one trim interval, and again one interval later
    # (app.engine.admission.HeapTrimmer): "RSS after" is read after both.
    rss_after_wait_s: float = 2 * TRIM_INTERVAL_S + 1.0


FULL = Plan()
QUICK = Plan(
    big_clients=2,
    big_files=2,
    big_seconds=30.0,
    big_timeout_s=20.0,
    long_clients=2,
    long_files=1,
    long_seconds=310.0,
    long_timeout_s=20.0,
    bomb_clients=1,
    bomb_files=2,
    bomb_seconds=60.0,
    bomb_timeout_s=20.0,
    calib_clients=4,
    calib_s=2.0,
    overload_s=3.0,
    overload_timeout_s=10.0,
    slow_baseline_s=2.0,
    slow_s=3.0,
    slow_header=5,
    slow_body=5,
    slow_idle=5,
    flood_connections=200,
    flood_ramp_s=5.0,
    flood_hold_s=1.0,
    sigterm_clients=4,
    sigterm_before_s=1.0,
    sigterm_drain_s=15.0,
    request_timeout_s=15.0,
    settle_max_s=3.0,
    rss_after_wait_s=0.0,
)


# --- processes --------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In a child before exec: SIGKILL when this benchmark dies, however it dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/TID/children)."""
    tree, i = [pid], 0
    while i < len(tree):
        p = tree[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    tree.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return tree


def vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of a process (every thread), or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        with open(path) as f:
            rest = f.read().rpartition(")")[2].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def nofile_limit(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return f"{soft}/{hard}"
    except OSError:
        pass
    return "?"


class Sampler(threading.Thread):
    """Samples the server's RSS (every 50 ms), fds (every 0.5 s) and CPU time; kills it above the cap."""

    def __init__(self, cap_bytes: int | None, interval_s: float = 0.05, fd_interval_s: float = 0.5) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.cap_bytes = cap_bytes
        self.interval_s = interval_s
        self.fd_interval_s = fd_interval_s
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self.pid: int | None = None
        self.rss = 0
        self.peak_rss = 0
        self.peak_fds = 0
        self.fds = 0
        self.cpu = 0.0
        self.killed: tuple[float, int] | None = None  # (monotonic time, RSS) of a kill at the cap

    def track(self, pid: int | None) -> None:
        with self._lock:
            self.pid = pid
            self.killed = None
            self.rss = self.peak_rss = self.fds = self.peak_fds = 0
            self.cpu = 0.0
        if pid is not None:
            self.sample(fds=True)
            self.reset_window()

    def reset_window(self) -> None:
        with self._lock:
            self.peak_rss = self.rss
            self.peak_fds = self.fds

    def sample(self, fds: bool) -> None:
        with self._lock:
            pid = self.pid
        if pid is None:
            return
        tree = process_tree(pid)
        rss = sum(vm_rss(p) for p in tree)
        cpu = sum(cpu_seconds(p) for p in tree)
        nfd = sum(fd_count(p) for p in tree) if fds else None
        with self._lock:
            if self.pid != pid:
                return
            if rss:  # 0 once the process is gone: keep the last figures
                self.rss = rss
                self.peak_rss = max(self.peak_rss, rss)
                self.cpu = max(self.cpu, cpu)
            if nfd:
                self.fds = nfd
                self.peak_fds = max(self.peak_fds, nfd)
            over = self.cap_bytes is not None and rss > self.cap_bytes and self.killed is None
            if over:
                self.killed = (time.monotonic(), rss)
        if over:
            for p in reversed(tree):
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)

    def run(self) -> None:
        next_fd = 0.0
        while not self._stop_event.wait(self.interval_s):
            now = time.monotonic()
            fds = now >= next_fd
            if fds:
                next_fd = now + self.fd_interval_s
            self.sample(fds)

    def stop(self) -> None:
        self._stop_event.set()


class Redis:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench_load: redis-server not found on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary, "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--protected-mode", "yes", "--dir", str(workdir), "--daemonize", "no",
                "--logfile", str(workdir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("bench_load: redis-server did not answer within 15 s")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Server:
    """One ``voxgate serve`` child at a time, its log in the work directory."""

    def __init__(
        self, command: list[str], cwd: Path, env: dict[str, str], workdir: Path, nofile: int | None
    ) -> None:
        self.command, self.cwd, self.env, self.workdir, self.nofile = command, cwd, env, workdir, nofile
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server-0.log"
        self.starts = 0
        self._log_offset = 0

    def _limits(self) -> None:
        _die_with_parent()
        if self.nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.nofile, hard), hard))

    def start(self, timeout_s: float = 180.0) -> float:
        """Start a fresh server and wait for /readyz 200; returns the start-up time."""
        self.stop()
        self.starts += 1
        self.port = free_port()
        self.log_path = self.workdir / f"server-{self.starts}.log"
        self._log_offset = 0
        env = {**self.env, "VOXGATE_PORT": str(self.port)}
        t0 = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=self._limits,
            )  # fmt: skip
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"bench_load: voxgate serve exited with {self.proc.returncode} during start-up:\n"
                    + self.log_tail()
                )
            if http_status(self.port, "/readyz", 1.0) == 200:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise SystemExit(f"bench_load: voxgate serve not ready within {timeout_s:g} s:\n" + self.log_tail())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 12, width: int = 400) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(line if len(line) <= width else line[:width] + " ..." for line in tail)

    def mark_log(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines_since_mark(self) -> int:
        count = 0
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            while chunk := f.read(CHUNK):
                count += chunk.count(b"\n")
        return count

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                for p in reversed(process_tree(self.proc.pid)):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def http_status(port: int, path: str, timeout: float) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


# --- audio ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Audio:
    enroll: list[bytes]  # FLAC files of one speaker, to enroll SPEAKER
    probes: list[bytes]  # other FLAC files of the same speaker, sent to /verify
    speech: Float32Array  # every recording of the set, concatenated (16 kHz)
    source: str


def load_audio(speech_dir: Path) -> Audio:
    files = sorted(speech_dir.glob("*/*.flac"))
    speakers = sorted({p.parent for p in files})
    if not speakers:
        raise SystemExit(f"bench_load: no FLAC speech under {speech_dir}")
    own = sorted(speakers[0].glob("*.flac"))
    if len(own) < 4:
        raise SystemExit(f"bench_load: {speakers[0]} needs at least 4 recordings")
    waves = [sf.read(p, dtype="float32")[0] for p in files]
    speech = np.concatenate([w if w.ndim == 1 else w.mean(axis=1) for w in waves]).astype(np.float32)
    return Audio(
        enroll=[p.read_bytes() for p in own[:3]],
        probes=[p.read_bytes() for p in own[3:]],
        speech=speech,
        source=f"{len(files)} recordings under {speech_dir}",
    )


def tiled(speech: Float32Array, seconds: float, rate: int) -> Float32Array:
    x = speech if rate == SR else soxr.resample(speech, SR, rate).astype(np.float32)
    n = int(seconds * rate)
    return np.tile(x, n // len(x) + 1)[:n]


def encode(samples: Float32Array, rate: int, fmt: str, subtype: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype, **kw)
    return buf.getvalue()


def long_wav(audio: Audio, seconds: float, rate: int) -> bytes:
    """Real speech tiled to ``seconds``, as a float32 WAV."""
    return encode(tiled(audio.speech, seconds, rate), rate, "WAV", "FLOAT")


def opus_bomb(audio: Audio, seconds: float, cache: Path) -> tuple[bytes | None, str]:
    """Speech tiled to ``seconds`` as Opus at libsndfile's lowest bitrate (cached: encoding is slow).

    soundfile's OGG/OPUS first, else ffmpeg (libopus, 6 kbit/s); (None, why) when neither can."""
    key = hashlib.sha256(audio.speech.tobytes()).hexdigest()[:12]
    path = cache / f"bomb-{seconds:g}s-{key}.opus"
    if path.is_file():
        return path.read_bytes(), f"cached {path.name}"
    samples = tiled(audio.speech, seconds, SR)
    data: bytes | None = None
    how = ""
    if "OPUS" in sf.available_subtypes("OGG"):
        try:
            data = encode(samples, SR, "OGG", "OPUS", compression_level=1.0)
            how = "soundfile OGG/OPUS, compression_level=1.0"
        except (sf.LibsndfileError, TypeError, RuntimeError) as exc:
            how = f"soundfile cannot write Opus ({exc})"
    if data is None and (ffmpeg := shutil.which("ffmpeg")):
        with tempfile.TemporaryDirectory() as tmp:
            wav, out = Path(tmp) / "in.wav", Path(tmp) / "out.opus"
            sf.write(wav, samples, SR, subtype="PCM_16")
            done = subprocess.run(
                [ffmpeg, "-v", "error", "-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "6k", str(out)],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                data, how = out.read_bytes(), "ffmpeg libopus 6 kbit/s"
            else:
                how += f"; ffmpeg failed: {done.stderr.decode(errors='replace')[-200:]}"
    if data is None:
        return None, how or "no Opus encoder: soundfile lacks OGG/OPUS and there is no ffmpeg"
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data, how


# --- the HTTP client --------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # the status code ("200") or an error kind (ERROR_KINDS, else an errno name)
    start: float  # loop time the request started (connect included for one-shot requests)
    end: float
    sent_all: bool = False  # every byte of the request was written
    connection_close: bool = False  # the response carried `Connection: close`
    retry_after: str | None = None
    send_reset: bool = False  # answered, but the upload was reset (a client that stops there sees a reset)
    closed_after: float | None = None  # slow clients: seconds from connect until the server closed it

    @property
    def latency_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    content_type: str | None = None
    body: tuple[bytes, ...] = ()
    headers: tuple[str, ...] = ()  # extra header lines, e.g. "Authorization: Bearer ..."

    @property
    def length(self) -> int:
        return sum(len(b) for b in self.body)

    def head(self, port: int, *, close: bool) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {HOST}:{port}", "User-Agent: bench-load"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {self.length}")
        lines.extend(self.headers)
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def multipart_request(
    path: str,
    fields_: Sequence[tuple[str, str]],
    files: Sequence[tuple[str, str, str, bytes]],
    headers: tuple[str, ...] = (),
) -> Request:
    """A multipart/form-data POST whose file bytes are shared, not copied."""
    parts: list[bytes] = []
    for name, value in fields_:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, ctype, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        parts.extend((data, b"\r\n"))
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return Request("POST", path, f"multipart/form-data; boundary={BOUNDARY}", tuple(parts), headers)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, "oserror").lower()
    return type(exc).__name__


class Conn:
    """A raw non-blocking socket: ``loop.sock_recv`` returns what the kernel holds, in order, even after
    a reset (asyncio's streams drop received data once a write fails, so they would hide early answers).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.usable = True

    @classmethod
    async def open(cls, port: int, timeout_s: float) -> Conn:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), max(timeout_s, 0.001))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes | memoryview) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self) -> bytes:
        """The next bytes (b"" at the end of the stream); ConnectionResetError after a reset."""
        return await asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)

    async def _fill(self) -> None:
        data = await self.recv()
        if not data:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.buf += data

    async def read_until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            await self._fill()
        out = bytes(self.buf[: i + len(sep)])
        del self.buf[: i + len(sep)]
        return out

    async def read_exactly(self, n: int) -> None:
        while len(self.buf) < n:
            await self._fill()
        del self.buf[:n]

    async def read_to_end(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                await self._fill()

    def close(self) -> None:
        self.usable = False
        self.sock.close()


async def read_response(conn: Conn) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 response, body read and discarded; 1xx responses skipped."""
    while True:
        head = await conn.read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        if "content-length" in headers:
            await conn.read_exactly(int(headers["content-length"]))
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await conn.read_until(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await conn.read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                await conn.read_exactly(size + 2)
        elif status not in (204, 304):
            await conn.read_to_end()  # delimited by the end of the connection
        return status, headers


async def exchange(
    conn: Conn, port: int, request: Request, timeout_s: float, *, close: bool, start: float
) -> Outcome:
    """Send ``request`` on ``conn`` while reading the response (an early answer is seen)."""
    loop = asyncio.get_running_loop()
    sent = False

    async def send() -> None:
        nonlocal sent
        await conn.send(request.head(port, close=close))
        for part in request.body:
            view = memoryview(part)
            for offset in range(0, len(view), CHUNK):
                await conn.send(view[offset : offset + CHUNK])
        sent = True

    sender = asyncio.create_task(send())
    failure: str | None = None
    try:
        try:
            status, headers = await asyncio.wait_for(read_response(conn), max(timeout_s, 0.001))
        except Exception as exc:
            failure = error_kind(exc)
    finally:
        if not sender.done():
            sender.cancel()
            conn.usable = False  # answered before the body was sent: the stream is out of step
        await asyncio.gather(sender, return_exceptions=True)
    send_error = None if sender.cancelled() else sender.exception()
    if failure is not None:
        if failure == "closed" and send_error is not None and error_kind(send_error) == "reset":
            failure = "reset"
        conn.close()
        return Outcome(failure, start, loop.time(), sent_all=sent)
    if send_error is not None:
        conn.usable = False
    connection_close = "close" in headers.get("connection", "").lower()
    if connection_close or close or not conn.usable:
        conn.close()
    return Outcome(
        str(status),
        start,
        loop.time(),
        sent_all=sent,
        connection_close=connection_close,
        retry_after=headers.get("retry-after"),
        send_reset=send_error is not None and error_kind(send_error) == "reset",
    )


async def one_shot(port: int, request: Request, timeout_s: float) -> Outcome:
    """``request`` on a connection of its own (latency includes the connect)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        conn = await Conn.open(port, timeout_s)
    except Exception as exc:
        return Outcome(error_kind(exc), start, loop.time())
    try:
        return await exchange(conn, port, request, timeout_s - (loop.time() - start), close=True, start=start)
    finally:
        conn.close()


async def keep_alive_loop(
    port: int,
    requests: Callable[[int], Request],
    until: Callable[[], bool],
    timeout_s: float,
    out: list[Outcome],
    *,
    stop_on_refused: Callable[[], bool] = lambda: False,
) -> None:
    """One closed-loop client on a keep-alive connection, reconnecting when the server closes it."""
    loop = asyncio.get_running_loop()
    conn: Conn | None = None
    i = 0
    try:
        while not until():
            start = loop.time()
            if conn is None or not conn.usable:
                try:
                    conn = await Conn.open(port, timeout_s)
                except Exception as exc:
                    out.append(Outcome(error_kind(exc), start, loop.time()))
                    if stop_on_refused():
                        return
                    await asyncio.sleep(0.05)
                    continue
            outcome = await exchange(conn, port, requests(i), timeout_s, close=False, start=start)
            i += 1
            out.append(outcome)
    finally:
        if conn is not None:
            conn.close()


async def closed_loop(
    port: int, requests: Callable[[int], Request], clients: int, seconds: float, timeout_s: float
) -> tuple[list[Outcome], float]:
    loop = asyncio.get_running_loop()
    out: list[Outcome] = []
    t0 = loop.time()
    end = t0 + seconds
    await asyncio.gather(
        *(keep_alive_loop(port, requests, lambda: loop.time() >= end, timeout_s, out) for _ in range(clients))
    )
    return out, loop.time() - t0


async def open_loop(
    port: int,
    requests: Callable[[int], Request],
    rate: float,
    seconds: float,
    timeout_s: float,
    seed: int = 0,
) -> tuple[list[Outcome], float]:
    """Poisson arrivals at ``rate`` for ``seconds``, each on a new connection; returns the arrival rate
    actually achieved as well (below ``rate`` when this client could not keep up)."""
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    tasks: list[asyncio.Task[Outcome]] = []
    t0 = loop.time()
    at = t0
    while True:
        at += float(rng.exponential(1.0 / rate))
        if at >= t0 + seconds:
            break
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_shot(port, requests(len(tasks)), timeout_s)))
    achieved = len(tasks) / max(loop.time() - t0, 1e-9)
    return list(await asyncio.gather(*tasks)), achieved


# --- results ----------------------------------------------------------------------------------------
def kind_order(kind: str) -> tuple[int, str]:
    if kind.isdigit():
        return 0, kind
    return (1, f"{ERROR_KINDS.index(kind)}") if kind in ERROR_KINDS else (2, kind)


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else math.nan


def fmt_s(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_bytes(n: int) -> str:
    return f"{n / 1e3:.0f} KB" if n < 1e6 else f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def fmt_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:,.0f}"


@dataclass
class Row:
    scenario: str
    label: str
    outcomes: list[Outcome] = field(default_factory=list)
    rss_before: int | None = None
    rss_peak: int | None = None
    rss_after: int | None = None
    killed_at_cap: bool = False
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (target, met)
    extra: dict[str, Any] = field(default_factory=dict)

    def histogram(self) -> dict[str, int]:
        counts = Counter(o.kind for o in self.outcomes)
        return {k: counts[k] for k in sorted(counts, key=kind_order)}

    def latencies(self, kind: str) -> list[float]:
        return [o.latency_s for o in self.outcomes if o.kind == kind]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "label": self.label,
            "requests": len(self.outcomes),
            "statuses": self.histogram(),
            "latency_s": {
                k: {"p50": pct(self.latencies(k), 50), "p99": pct(self.latencies(k), 99)}
                for k in self.histogram()
            },
            "rss_before_bytes": self.rss_before,
            "rss_peak_bytes": self.rss_peak,
            "rss_after_bytes": self.rss_after,
            "killed_at_rss_cap": self.killed_at_cap,
            "notes": self.notes,
            "checks": [{"target": t, "met": ok} for t, ok in self.checks],
            **self.extra,
        }


def table(rows: Sequence[Row]) -> str:
    out = [
        "| scenario | requests | statuses | p50 / p99 by status "
        "| server RSS MiB: before → peak → after | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        hist = r.histogram()
        statuses = ", ".join(f"{k}: {n}" for k, n in hist.items()) or "-"
        lat = "; ".join(
            f"{k}: {fmt_s(pct(r.latencies(k), 50))} / {fmt_s(pct(r.latencies(k), 99))}" for k in hist
        )
        after = "killed at cap" if r.killed_at_cap else fmt_mib(r.rss_after)
        rss = f"{fmt_mib(r.rss_before)} → {fmt_mib(r.rss_peak)} → {after}"
        out.append(
            f"| {r.label} | {len(r.outcomes)} | {statuses} | {lat or '-'} | {rss} | {'; '.join(r.notes)} |"
        )
    return "\n".join(out)


# --- the run ----------------------------------------------------------------------------------------
class Bench:
    def __init__(
        self, args: argparse.Namespace, plan: Plan, audio: Audio, server: Server, sampler: Sampler
    ) -> None:
        self.args, self.plan, self.audio, self.server, self.sampler = args, plan, audio, server, sampler
        self.enrolled_on: int | None = None  # server start number that enrolled (Redis keeps it after)
        self.busy_after_last = False
        self.sustainable_rate: float | None = None
        self.auth: tuple[str, ...] = (f"Authorization: Bearer {args.api_key}",) if args.api_key else ()
        self._turn = itertools.count()

    # -- helpers --
    def verify_request(self, i: int) -> Request:
        probe = self.audio.probes[i % len(self.audio.probes)]
        speaker = next(self._turn) % SPEAKERS  # round robin, whichever client asks
        return multipart_request(
            "/verify",
            [("speaker_id", f"{SPEAKER}-{speaker}")],
            [("audio", f"probe{i % len(self.audio.probes)}.flac", "audio/flac", probe)],
            self.auth,
        )

    def healthz(self) -> Request:
        return Request("GET", "/healthz", headers=self.auth)

    async def fresh_server(self) -> None:
        need = (
            self.args.restart == "always"
            or not self.server.alive()
            or self.busy_after_last
            or self.sampler.killed is not None
        )
        if need:
            self.sampler.track(None)
            startup = self.server.start()
            self.sampler.track(self.server.pid)
            print(
                f"# server start {self.server.starts}: ready in {startup:.1f} s, pid {self.server.pid}, "
                f"RSS {self.sampler.rss / MiB:.0f} MiB, fd limit {nofile_limit(self.server.pid)}",
                file=sys.stderr,
                flush=True,
            )
        if self.enrolled_on is None:
            for n in range(SPEAKERS):
                req = multipart_request(
                    "/enroll",
                    [("speaker_id", f"{SPEAKER}-{n}")],
                    [("audio", f"enroll{i}.flac", "audio/flac", b) for i, b in enumerate(self.audio.enroll)],
                    self.auth,
                )
                outcome = await one_shot(self.server.port, req, 60.0)
                if outcome.kind != "200":
                    raise SystemExit(
                        f"bench_load: enrolling {SPEAKER}-{n} failed: {outcome.kind}\n"
                        + self.server.log_tail()
                    )
            self.enrolled_on = self.server.starts
        self.busy_after_last = False
        await asyncio.sleep(0.3)
        self.sampler.sample(fds=True)
        self.sampler.reset_window()
        self.server.mark_log()

    async def settle(self, row: Row) -> None:
        """Wait for the server to go idle (CPU < 0.1 core for 1 s) and trim its heap, then read its RSS."""
        if not self.server.alive() or self.sampler.killed is not None:
            row.killed_at_cap = self.sampler.killed is not None
            row.rss_peak = self.sampler.peak_rss
            row.rss_after = None
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        quiet = 0
        last_cpu, last_t = self.sampler.cpu, t0
        settled_in: float | None = None
        while loop.time() - t0 < self.plan.settle_max_s:
            await asyncio.sleep(0.5)
            self.sampler.sample(fds=False)
            now, cpu = loop.time(), self.sampler.cpu
            busy = (cpu - last_cpu) / max(now - last_t, 1e-6)
            last_cpu, last_t = cpu, now
            quiet = quiet + 1 if busy < 0.1 else 0
            if quiet >= 2:
                settled_in = now - t0 - 1.0
                break
        if settled_in is not None and self.plan.rss_after_wait_s:
            await asyncio.sleep(self.plan.rss_after_wait_s)
            self.sampler.sample(fds=False)
        row.rss_peak = self.sampler.peak_rss
        row.rss_after = self.sampler.rss
        row.extra["settle_s"] = settled_in
        if settled_in is None:
            self.busy_after_last = True
            row.notes.append(
                f"server still busy {self.plan.settle_max_s:g} s after the last client (RSS after: then)"
            )
        elif settled_in >= 1.0:
            row.notes.append(f"server busy {settled_in:.0f} s after the last client")

    def start_row(self, scenario: str, label: str) -> Row:
        return Row(scenario, label, rss_before=self.sampler.rss)

    def finish_common(self, row: Row, t0: float, cpu0: float) -> None:
        wall = time.monotonic() - t0
        row.extra["wall_s"] = wall
        row.extra["server_cpu_s"] = self.sampler.cpu - cpu0
        row.extra["server_log_lines"] = self.server.log_lines_since_mark()
        row.extra["load_average"] = os.getloadavg()[0]
        early = sum(o.send_reset for o in row.outcomes)
        row.extra["answered_then_upload_reset"] = early
        if early:
            row.notes.append(
                f"{early} answered before the body was sent, then the upload was reset "
                "(a client that stops at the write error sees a reset, not the answer)"
            )
        if self.sampler.killed is not None:
            row.killed_at_cap = True
            row.notes.append(
                f"server SIGKILLed at RSS {self.sampler.killed[1] / GiB:.1f} GiB > cap "
                f"{self.args.rss_cap_gib:g} GiB (an OOM kill of the pod) "
                f"{self.sampler.killed[0] - t0:.0f} s in"
            )
            row.checks.append((f"{row.label}: peak RSS under {self.args.rss_cap_gib:g} GiB", False))

    # -- scenarios --
    async def uploads(
        self,
        scenario: str,
        label: str,
        clients: int,
        files: int,
        data: bytes,
        ctype: str,
        name: str,
        timeout_s: float,
    ) -> Row:
        row = self.start_row(scenario, label)
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        reqs = [
            multipart_request(
                "/enroll",
                [("speaker_id", f"bench-load-{scenario}-{c}")],
                [("audio", f"{name}{k}", ctype, data) for k in range(files)],
                self.auth,
            )
            for c in range(clients)
        ]
        polls: list[Outcome] = []
        poller = asyncio.create_task(self.poll_healthz(polls))
        try:
            row.outcomes = list(
                await asyncio.gather(*(one_shot(self.server.port, r, timeout_s) for r in reqs))
            )
        finally:
            poller.cancel()
        self.finish_common(row, t0, cpu0)
        worst = max((o.latency_s for o in polls), default=float("nan"))
        row.extra.update(healthz_polls=len(polls), healthz_worst_s=worst)
        row.notes.append(f"/healthz during the uploads: worst {fmt_s(worst)} of {len(polls)} polls")
        row.checks.append(
            (
                f"{label}: /healthz answered 200 within 1 s throughout",
                bool(polls) and all(o.kind == "200" and o.latency_s < 1.0 for o in polls),
            )
        )
        row.checks.append(
            (
                f"{label}: only 200 or 4xx answers (what cannot finish in time is refused early)",
                all(o.kind == "200" or o.kind.startswith("4") for o in row.outcomes if o.kind.isdigit()),
            )
        )
        await self.settle(row)
        row.notes.insert(
            0,
            f"{clients} client(s) × {files} × {fmt_bytes(len(data))} "
            f"({fmt_bytes(reqs[0].length * clients)} in all), client timeout {timeout_s:g} s",
        )
        answered = [o for o in row.outcomes if o.kind.isdigit()]
        if answered:
            row.notes.append(f"first answer after {fmt_s(min(o.latency_s for o in answered))}")
        if row.rss_peak is not None and not row.killed_at_cap:
            row.checks.append(
                (
                    f"{label}: peak RSS under {self.args.rss_cap_gib:g} GiB",
                    row.rss_peak < self.args.rss_cap_gib * GiB,
                )
            )
        if row.rss_after is not None and row.rss_before:
            row.checks.append(
                (
                    f"{label}: RSS given back (after ≤ 1.5 × before: bench's bound)",
                    row.rss_after <= 1.5 * row.rss_before,
                )
            )
        return row

    async def poll_healthz(self, polls: list[Outcome]) -> None:
        """/healthz every healthz_interval_s on a connection of its own, until cancelled."""
        p = self.plan
        loop = asyncio.get_running_loop()
        while True:
            at = loop.time()
            polls.append(await one_shot(self.server.port, self.healthz(), 5.0))
            await asyncio.sleep(max(0.0, p.healthz_interval_s - (loop.time() - at)))

    async def big_uploads(self) -> list[Row]:
        p = self.plan
        data = long_wav(self.audio, p.big_seconds, SR)
        row = await self.uploads(
            "big_uploads",
            f"big uploads ({p.big_seconds:g} s float WAV)",
            p.big_clients,
            p.big_files,
            data,
            "audio/wav",
            "big.wav",
            p.big_timeout_s,
        )
        row.checks.append(
            (
                "big uploads: every request answered (no reset, no timeout)",
                all(o.kind.isdigit() for o in row.outcomes),
            )
        )
        return [row]

    async def too_long_uploads(self) -> list[Row]:
        p = self.plan
        data = long_wav(self.audio, p.long_seconds, 8000)
        row = await self.uploads(
            "too_long_uploads",
            f"too-long uploads ({p.long_seconds:g} s, 8 kHz float WAV)",
            p.long_clients,
            p.long_files,
            data,
            "audio/wav",
            "long.wav",
            p.long_timeout_s,
        )
        hist = row.histogram()
        row.checks.append(
            (
                "too-long uploads: all refused (422/413, or 429 while the memory budget is in use)",
                sum(hist.get(k, 0) for k in ("413", "422", "429")) == len(row.outcomes),
            )
        )
        return [row]

    async def decode_bombs(self) -> list[Row]:
        p = self.plan
        data, how = opus_bomb(self.audio, p.bomb_seconds, self.args.cache)
        label = f"decode bombs ({p.bomb_seconds:g} s Opus)"
        if data is None:
            return [Row("decode_bombs", label, notes=[f"skipped: {how}"])]
        row = await self.uploads(
            "decode_bombs",
            label,
            p.bomb_clients,
            p.bomb_files,
            data,
            "audio/ogg",
            "bomb.opus",
            p.bomb_timeout_s,
        )
        row.notes.insert(
            1, f"{how}; server CPU {row.extra['server_cpu_s']:.0f} s in {row.extra['wall_s']:.0f} s"
        )
        row.checks.append(
            (
                "decode bombs: every request answered (no reset, no timeout)",
                all(o.kind.isdigit() for o in row.outcomes),
            )
        )
        row.checks.append(("decode bombs: no 504", "504" not in row.histogram()))
        return [row]

    async def overload(self) -> list[Row]:
        p = self.plan
        port = self.server.port
        calib = self.start_row("overload", f"calibration (closed loop, {p.calib_clients} clients)")
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        await closed_loop(
            port, self.verify_request, p.calib_clients, min(1.0, p.calib_s / 4), p.request_timeout_s
        )  # warm
        self.sampler.reset_window()
        calib.outcomes, wall = await closed_loop(
            port, self.verify_request, p.calib_clients, p.calib_s, p.request_timeout_s
        )
        ok = [o for o in calib.outcomes if o.kind == "200"]
        rate = len(ok) / wall if ok else 1.0
        self.sustainable_rate = rate
        self.finish_common(calib, t0, cpu0)
        calib.rss_peak, calib.rss_after = self.sampler.peak_rss, self.sampler.rss
        calib.notes.append(f"sustainable rate {rate:.1f} /verify per s ({wall:.0f} s)")
        calib.extra["sustainable_rate"] = rate
        print(f"# sustainable /verify rate: {rate:.1f} per s", file=sys.stderr, flush=True)

        await self.settle(Row("overload", "(calibration settle)"))
        self.sampler.reset_window()
        self.server.mark_log()
        target = p.overload_factor * rate
        row = self.start_row("overload", f"{p.overload_factor:g}× overload (open loop, {target:.1f}/s)")
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        row.outcomes, achieved = await open_loop(
            port, self.verify_request, target, p.overload_s, p.overload_timeout_s
        )
        self.finish_common(row, t0, cpu0)
        await self.settle(row)
        hist = row.histogram()
        ok_l, busy_l = row.latencies("200"), row.latencies("429")
        row.notes.insert(
            0,
            f"Poisson arrivals for {p.overload_s:g} s (achieved {achieved:.1f}/s), one connection each, "
            f"client timeout {p.overload_timeout_s:g} s",
        )
        first_429 = min(
            (o.start - row.outcomes[0].start for o in row.outcomes if o.kind == "429"), default=None
        )
        if first_429 is not None:
            row.notes.append(f"first 429 for a request sent {first_429:.1f} s in")
        row.extra.update(target_rate=target, achieved_rate=achieved)
        row.checks += [
            ("overload: only 200 and 429", set(hist) <= {"200", "429"}),
            ("overload: no 504", "504" not in hist),
            ("overload: 429 p99 ≤ 50 ms", bool(busy_l) and pct(busy_l, 99) <= 0.05),
            (
                f"overload: 200 p99 ≤ {p.ok_p99_bound_s:g} s (the issue's example bound)",
                bool(ok_l) and pct(ok_l, 99) <= p.ok_p99_bound_s,
            ),
        ]
        if row.rss_after is not None and row.rss_before:
            row.checks.append(
                (
                    "overload: RSS given back (after ≤ 1.5 × before: bench's bound)",
                    row.rss_after <= 1.5 * row.rss_before,
                )
            )
        return [calib, row]

    async def trickler(self, kind: str, duration: float, out: list[Outcome]) -> None:
        """A slow client of ``kind`` (header, body, idle) until cut off or ``duration`` is over."""
        p, port = self.plan, self.server.port
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            conn = await Conn.open(port, 5.0)
        except Exception as exc:
            out.append(Outcome(error_kind(exc), start, loop.time()))
            return
        statuses: list[int] = []
        ended: list[str] = []

        answered_at: list[float] = []  # when each response's first bytes came

        async def watch() -> None:
            buf = b""
            try:
                while chunk := await conn.recv():
                    buf += chunk
                    found = re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", buf)
                    while len(statuses) < len(found):
                        statuses.append(int(found[len(statuses)]))
                        answered_at.append(loop.time())
                ended.append("closed")
            except Exception as exc:
                ended.append(error_kind(exc))

        watcher = asyncio.create_task(watch())
        end = start + duration
        try:
            if kind == "header":
                data = (
                    f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Trickle: ".encode() + b"a" * 100_000
                )
                for i in range(len(data)):
                    if watcher.done() or loop.time() >= end:
                        break
                    await conn.send(data[i : i + 1])
                    await asyncio.sleep(p.trickle_interval_s)
            else:
                if kind == "body":
                    req = self.verify_request(0)
                    await conn.send(req.head(port, close=False) + b"".join(req.body)[:1024])
                else:  # idle: one complete request, then silence on the kept-alive connection
                    await conn.send(self.healthz().head(port, close=False))
            await asyncio.wait({watcher}, timeout=max(end - loop.time(), 0))
        except Exception:
            await asyncio.wait({watcher}, timeout=1.0)
        finally:
            cut = watcher.done()
            t_end = loop.time()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            conn.close()
        # Cut off: answered (408, 429, ...; for "idle" anything but its own 200) or closed. The time is
        # that of the answer when there is one, else of the close; ``end`` is when it was closed.
        cut_by = [
            (st, at)
            for st, at in zip(statuses, answered_at, strict=True)
            if not (kind == "idle" and st == 200)
        ]
        if cut_by:
            out.append(
                Outcome(str(cut_by[0][0]), start, cut_by[0][1], closed_after=t_end - start if cut else None)
            )
        elif cut:
            out.append(Outcome(ended[0] if ended else "closed", start, t_end, closed_after=t_end - start))
        else:
            out.append(Outcome("open", start, t_end))

    async def slow_clients(self) -> list[Row]:
        p = self.plan
        port = self.server.port
        base = self.start_row("slow_clients", f"normal /verify alone ({p.normal_rate:g}/s)")
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        base.outcomes, _ = await open_loop(
            port, self.verify_request, p.normal_rate, p.slow_baseline_s, p.request_timeout_s, seed=1
        )
        self.finish_common(base, t0, cpu0)
        base.rss_peak, base.rss_after = self.sampler.peak_rss, self.sampler.rss

        self.sampler.reset_window()
        self.server.mark_log()
        normal = self.start_row(
            "slow_clients", f"normal /verify with {p.slow_header + p.slow_body + p.slow_idle} slow clients"
        )
        kinds: dict[str, list[Outcome]] = {"header": [], "body": [], "idle": []}
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        counts = {"header": p.slow_header, "body": p.slow_body, "idle": p.slow_idle}
        tricklers = [
            asyncio.create_task(self.trickler(kind, p.slow_s + 1.0, kinds[kind]))
            for kind, n in counts.items()
            for _ in range(n)
        ]
        await asyncio.sleep(1.0)  # the slow clients are in place before normal traffic starts
        normal.outcomes, _ = await open_loop(
            port, self.verify_request, p.normal_rate, p.slow_s, p.request_timeout_s, seed=2
        )
        await asyncio.gather(*tricklers)
        self.finish_common(normal, t0, cpu0)
        await self.settle(normal)
        b_ok, n_ok = base.latencies("200"), normal.latencies("200")
        if b_ok and n_ok:
            r50, r99 = pct(n_ok, 50) / pct(b_ok, 50), pct(n_ok, 99) / pct(b_ok, 99)
            normal.notes.append(f"200 latency vs alone: p50 {r50:.2f}×, p99 {r99:.2f}×")
            normal.extra.update(p50_ratio=r50, p99_ratio=r99)
            normal.checks.append(
                ("slow clients: normal /verify p99 within 1.5× of alone (bench's bound)", r99 <= 1.5)
            )
        normal.checks.append(("slow clients: normal /verify all 200", set(normal.histogram()) == {"200"}))
        rows = [base, normal]
        what = {
            "header": f"trickle headers (1 byte / {p.trickle_interval_s:g} s)",
            "body": "stalled bodies (headers + 1 KiB)",
            "idle": "idle keep-alive after 1 request",
        }
        for kind, outs in kinds.items():
            if not outs:
                continue
            r = Row("slow_clients", what[kind], outcomes=outs)
            still = sum(o.kind == "open" for o in outs)
            answered = [o for o in outs if o.kind.isdigit()]
            if answered:
                closed = [o.closed_after for o in answered if o.closed_after is not None]
                r.notes.append(
                    f"{len(answered)} answered ({', '.join(sorted({o.kind for o in answered}))}), "
                    + (
                        f"{len(closed)} of them closed by the server "
                        f"{fmt_s(pct(closed, 50))} after connecting (p50)"
                        if closed
                        else "none of them closed by the server"
                    )
                )
            r.notes.append(
                f"{still} of {len(outs)} still connected after {p.slow_s + 1:g} s; "
                "latency = time until answered or closed"
            )
            if kind != "idle":
                r.checks.append((f"slow clients: {what[kind]} cut off (408 or closed)", still == 0))
            rows.append(r)
        return rows

    async def idle_flood(self) -> list[Row]:
        p = self.plan
        port = self.server.port
        row = self.start_row("idle_flood", f"/healthz during {p.flood_connections:,} idle connections")
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        per_worker = max(100, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100)
        n_workers = math.ceil(p.flood_connections / per_worker)
        counts = [
            p.flood_connections // n_workers + (i < p.flood_connections % n_workers) for i in range(n_workers)
        ]
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bench_load",
                "_flood_worker",
                str(port),
                str(n),
                str(p.flood_ramp_s),
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            for n in counts
        ]
        loop = asyncio.get_running_loop()
        polls: list[Outcome] = []
        polling = True

        async def poll() -> None:
            while polling:
                at = loop.time()
                polls.append(await one_shot(port, self.healthz(), p.healthz_timeout_s))
                await asyncio.sleep(max(0.0, p.healthz_interval_s - (loop.time() - at)))

        poller = asyncio.create_task(poll())
        reports: list[dict[str, Any]] = []
        try:
            ramped = []
            for w in workers:
                assert w.stdout is not None
                line = await asyncio.wait_for(w.stdout.readline(), p.flood_ramp_s + 30)
                ramped.append(json.loads(line or b"{}"))
            ramp_s = time.monotonic() - t0
            await asyncio.sleep(p.flood_hold_s)
            peak_fds = self.sampler.peak_fds
            for w in workers:
                assert w.stdin is not None
                w.stdin.write(b"close\n")
                with contextlib.suppress(Exception):
                    await w.stdin.drain()
            for w in workers:
                assert w.stdout is not None
                line = await asyncio.wait_for(w.stdout.readline(), 30)
                reports.append(json.loads(line or b"{}"))
        finally:
            polling = False
            for w in workers:
                if w.returncode is None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait(), 10)
                if w.returncode is None:
                    w.kill()
                    await w.wait()
            await poller
        row.outcomes = polls
        flood_end = loop.time()
        # After the flood: how long until /healthz answers again.
        recovered: float | None = None
        while loop.time() - flood_end < 10.0:
            o = await one_shot(port, self.healthz(), p.healthz_timeout_s)
            if o.kind == "200":
                recovered = loop.time() - flood_end
                break
            await asyncio.sleep(0.2)
        self.finish_common(row, t0, cpu0)
        await self.settle(row)
        fd_limit = nofile_limit(self.server.pid) if self.server.alive() else "?"
        established = sum(r.get("established", 0) for r in ramped)
        failed: Counter[str] = Counter()
        for r in ramped:
            failed.update(r.get("failed", {}))
        closed_by_server = sum(r.get("closed_by_server", 0) for r in reports)
        fail_text = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"
        row.notes += [
            f"{established:,} of {p.flood_connections:,} connections established in {ramp_s:.0f} s "
            f"({n_workers} helper process(es); failed: {fail_text}), held {p.flood_hold_s:g} s",
            f"server fds peak {peak_fds:,} (limit {fd_limit})",
            f"{closed_by_server:,} idle connections closed by the server",
            f"{row.extra['server_log_lines']:,} server log lines",
            "/healthz answered again "
            + (
                f"{fmt_s(recovered)} after the flood"
                if recovered is not None
                else "not within 10 s of the flood"
            ),
        ]
        row.extra.update(
            connections_established=established,
            connect_failures=dict(failed),
            closed_by_server=closed_by_server,
            server_fds_peak=peak_fds,
            healthz_recovered_s=recovered,
        )
        hist = row.histogram()
        row.checks += [
            ("idle flood: every /healthz poll answered 200", set(hist) == {"200"}),
            ("idle flood: server log lines ≤ 1,000 (bench's bound)", row.extra["server_log_lines"] <= 1000),
        ]
        return [row]

    async def sigterm(self) -> list[Row]:
        p = self.plan
        port = self.server.port
        row = self.start_row("sigterm", f"SIGTERM under keep-alive load ({p.sigterm_clients} clients)")
        t0, cpu0 = time.monotonic(), self.sampler.cpu
        loop = asyncio.get_running_loop()
        assert self.server.proc is not None
        proc = self.server.proc
        signalled: list[float] = []
        exited: list[float] = []
        out: list[Outcome] = []
        hard_end = loop.time() + p.sigterm_before_s + p.sigterm_drain_s

        def over() -> bool:
            return loop.time() >= hard_end or bool(exited)

        clients = [
            asyncio.create_task(
                keep_alive_loop(
                    port,
                    self.verify_request,
                    over,
                    p.request_timeout_s,
                    out,
                    stop_on_refused=lambda: bool(signalled),
                )
            )
            for _ in range(p.sigterm_clients)
        ]

        async def watch_exit() -> None:
            for _ in range(int((hard_end + 5 - loop.time()) / 0.02) + 1):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            if proc.poll() is not None:
                exited.append(loop.time())

        await asyncio.sleep(p.sigterm_before_s)
        t_sig = loop.time()
        signalled.append(t_sig)
        proc.send_signal(signal.SIGTERM)
        watcher = asyncio.create_task(watch_exit())
        await asyncio.wait(clients, timeout=p.sigterm_drain_s + p.request_timeout_s)
        for c in clients:
            c.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await watcher
        exit_code = proc.returncode
        row.outcomes = out
        self.finish_common(row, t0, cpu0)
        row.rss_peak = self.sampler.peak_rss
        self.server.stop(grace_s=0.1)
        self.sampler.track(None)
        after = [o for o in out if o.end >= t_sig]
        answered = [o for o in after if o.kind.isdigit()]
        with_close = sum(o.connection_close for o in answered)
        resets = [o for o in after if o.kind in ("reset", "closed")]
        resets_sent = [o for o in resets if o.sent_all]
        refused = sum(o.kind == "refused" for o in after)
        in_flight = sum(o.start < t_sig <= o.end for o in out)
        exit_text = (
            f"exit status {exit_code} {exited[0] - t_sig:.2f} s after SIGTERM"
            if exited
            else f"still running {hard_end + 5 - t_sig:.0f} s after SIGTERM: killed"
        )
        row.notes += [
            f"{len(out) - len(after)} answered before the signal, {in_flight} in flight at it",
            f"after it: {len(answered)} responses ({with_close} with Connection: close, "
            f"{len(answered) - with_close} without), {len(resets_sent)} resets/closes of requests "
            f"already sent ({len(resets) - len(resets_sent)} more while sending), "
            f"{refused} refused reconnects",
            exit_text,
            "RSS after: server gone",
        ]
        row.extra.update(
            responses_after_signal=len(answered),
            with_connection_close=with_close,
            without_connection_close=len(answered) - with_close,
            resets_of_sent_requests=len(resets_sent),
            resets_while_sending=len(resets) - len(resets_sent),
            refused_after_signal=refused,
            exit_code=exit_code if exited else None,
            exit_after_s=exited[0] - t_sig if exited else None,
        )
        row.checks += [
            ("sigterm: no reset of a request already sent", not resets),
            ("sigterm: every response after SIGTERM has Connection: close", with_close == len(answered)),
            ("sigterm: exit status 0", bool(exited) and exit_code == 0),
        ]
        return [row]

    async def run(self, scenario: str) -> list[Row]:
        await self.fresh_server()
        method: Callable[[], Awaitable[list[Row]]] = getattr(self, scenario)
        return await method()


# --- idle-connection helper process -----------------------------------------------------------------
def flood_worker(
    port: int, count: int, ramp_s: float, in_flight: int = 256, connect_timeout_s: float = 5.0
) -> int:
    """Open ``count`` idle connections (at most ``in_flight`` connecting at once, for at most ``ramp_s``),
    print one JSON line, hold them until stdin says "close" (noting the ones the server closes), close
    them, print another JSON line."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ep = select.epoll()
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    pending: dict[int, tuple[socket.socket, float]] = {}
    live: dict[int, socket.socket] = {}
    failed: Counter[str] = Counter()
    closed_by_server = 0
    stop = False
    t0 = time.monotonic()
    started = 0

    def handle(fd: int, ev: int) -> None:
        nonlocal closed_by_server, stop
        if fd == stdin:
            stop = True
        elif fd in pending:
            sock, _ = pending.pop(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                live[fd] = sock
                ep.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
            else:
                failed[error_kind(OSError(err, os.strerror(err)))] += 1
                ep.unregister(fd)
                sock.close()
        elif fd in live:  # the server sent something or closed it: either way, it is gone for us
            closed_by_server += 1
            ep.unregister(fd)
            live.pop(fd).close()

    while (started < count or pending) and not stop:
        while started < count and len(pending) < in_flight and time.monotonic() - t0 < ramp_s:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                failed[f"own {error_kind(exc)}"] += count - started
                started = count
                break
            sock.setblocking(False)
            started += 1
            err = sock.connect_ex((HOST, port))
            if err in (0, errno.EINPROGRESS):
                pending[sock.fileno()] = (sock, time.monotonic())
                ep.register(sock.fileno(), select.EPOLLOUT)
            else:
                failed[error_kind(OSError(err, os.strerror(err)))] += 1
                sock.close()
        if time.monotonic() - t0 >= ramp_s and started < count:
            failed["not attempted (ramp time)"] += count - started
            started = count
        for fd, ev in ep.poll(0.05):
            handle(fd, ev)
        now = time.monotonic()
        for fd, (sock, at) in list(pending.items()):
            if now - at > connect_timeout_s:
                failed["timeout"] += 1
                ep.unregister(fd)
                del pending[fd]
                sock.close()
    print(json.dumps({"established": len(live) + closed_by_server, "failed": dict(failed)}), flush=True)
    while not stop:
        for fd, ev in ep.poll(0.5):
            handle(fd, ev)
    still = len(live)
    for sock in live.values():
        sock.close()
    print(json.dumps({"closed_by_server": closed_by_server, "open_at_end": still}), flush=True)
    return 0


# --- main -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every scenario at a tiny size (about a minute)")
    ap.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from: {', '.join(SCENARIOS)}"
    )
    ap.add_argument("--json", type=Path, metavar="FILE", help="write every figure as JSON")
    ap.add_argument(
        "--model",
        type=Path,
        help="model directory (VOXGATE_MODEL_DIR; default: models/default of the app's tree)",
    )
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the server"
    )
    ap.add_argument(
        "--app-root",
        type=Path,
        help="serve the `app` package of this tree (python -m app.cli serve there), "
        "not the installed `voxgate`",
    )
    ap.add_argument("--speech", type=Path, default=DEFAULT_SPEECH, help="FLAC speech, one folder per speaker")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the Opus decode bombs are kept")
    ap.add_argument(
        "--rss-cap-gib", type=float, default=6.0, help="SIGKILL the server above this RSS (0: no cap)"
    )
    ap.add_argument(
        "--server-nofile", type=int, help="the server's RLIMIT_NOFILE soft limit (default: this shell's)"
    )
    ap.add_argument(
        "--restart",
        choices=("always", "needed"),
        help="a fresh server per scenario (full) or only when needed (quick)",
    )
    ap.add_argument(
        "--api-key", help="sent as `Authorization: Bearer KEY` (for a server run with VOXGATE_AUTH=required)"
    )
    ap.add_argument("--keep-workdir", action="store_true", help="keep server and Redis logs")
    for f in fields(Plan):
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(getattr(FULL, f.name)),
            dest=f"plan_{f.name}",
            help=argparse.SUPPRESS,
        )
    args = ap.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.restart is None:
        args.restart = "needed" if args.quick else "always"
    if args.model is None:
        args.model = (args.app_root or REPO_ROOT) / "models" / "default"
    return args


def server_env(
    args: argparse.Namespace, redis_url: str, workdir: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """The server's environment, and the VOXGATE_* settings in it (to print)."""
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"bench_load: --env wants NAME=VALUE, got {item!r}")
        env[name] = value
    env.update(
        VOXGATE_HOST=HOST,
        VOXGATE_REDIS_URL=redis_url,
        VOXGATE_MODEL_DIR=str(args.model.resolve()),
        VOXGATE_DATA_DIR=str(workdir / "data"),
        VOXGATE_LOG_JSON=env.get("VOXGATE_LOG_JSON", "true"),
    )
    if args.app_root is not None:
        env["PYTHONPATH"] = str(args.app_root.resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    shown = {
        k: v
        for k, v in sorted(env.items())
        if k.startswith("VOXGATE_") and k not in ("VOXGATE_REDIS_URL", "VOXGATE_PORT")
    }
    return env, shown


def git_state(root: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "app"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return "?"
    if not head:
        return "not a git tree"
    n = len(dirty.splitlines())
    return f"{head}" + (f" + {n} uncommitted change(s) under app/" if n else " (app/ clean)")


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM to the benchmark unwinds it like Ctrl-C, so the server and Redis are stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def run_all(bench: Bench, scenarios: list[str], rows: list[Row]) -> None:
    for scenario in scenarios:
        print(f"# {scenario} (load average {os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        new = await bench.run(scenario)
        rows.extend(new)
        print(f"# {scenario} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        print(table(new).split("\n", 2)[2], file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_flood_worker"]:
        return flood_worker(int(argv[1]), int(argv[2]), float(argv[3]))
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(
        plan,
        **{
            f.name: getattr(args, f"plan_{f.name}")
            for f in fields(Plan)
            if getattr(args, f"plan_{f.name}") is not None
        },
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client's own connections
    server_nofile = args.server_nofile if args.server_nofile is not None else soft
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    audio = load_audio(args.speech)
    workdir = Path(tempfile.mkdtemp(prefix="voxgate-bench-load-"))
    redis: Redis | None = None
    server: Server | None = None
    sampler = Sampler(int(args.rss_cap_gib * GiB) if args.rss_cap_gib > 0 else None)
    rows: list[Row] = []
    shown: dict[str, str] = {}
    interrupted = False
    try:
        with terminate_on_sigterm():
            redis = Redis(workdir)
            env, shown = server_env(args, redis.url, workdir)
            if args.app_root is not None:
                command, cwd = [sys.executable, "-m", "app.cli", "serve"], args.app_root.resolve()
            else:
                script = Path(sys.executable).parent / "voxgate"
                command = (
                    [str(script), "serve"] if script.is_file() else [sys.executable, "-m", "app.cli", "serve"]
                )
                cwd = REPO_ROOT
            server = Server(command, cwd, env, workdir, server_nofile)
            sampler.start()
            header = [
                f"# bench_load {'--quick ' if args.quick else ''}{started:%Y-%m-%d %H:%M} UTC: "
                f"{os.uname().machine}, {os.cpu_count()} CPUs ({cpu_model()}), "
                f"{mem_total_gib():.0f} GiB RAM, shared machine; "
                f"load average at start {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}",
                f"# server: {' '.join(command)} in {cwd} (git {git_state(cwd)}), "
                f"own redis-server on :{redis.port}, fd limit {server_nofile} (this client: {hard}), "
                f"RSS cap {args.rss_cap_gib:g} GiB, restart {args.restart}",
                "# settings passed: "
                + (", ".join(f"{k}={v}" for k, v in shown.items()) or "none")
                + " (the rest: service defaults)",
                f"# audio: {audio.source}",
            ]
            print("\n".join(header), flush=True)
            bench = Bench(args, plan, audio, server, sampler)
            try:
                asyncio.run(run_all(bench, args.scenarios, rows))
            except KeyboardInterrupt:
                interrupted = True
                print("# interrupted: stopping the server and Redis", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sampler.stop()
        if server is not None:
            server.stop(grace_s=2.0)
        if redis is not None:
            redis.stop()
        if args.keep_workdir:
            print(f"# logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(rows))
    checks = [(t, ok) for r in rows for t, ok in r.checks]
    if checks:
        print()
        print("Targets (issue 10):")
        for target, ok in checks:
            print(f"- {'PASS' if ok else 'FAIL'} {target}")
    load_end = os.getloadavg()
    print(
        f"\n# load average at end {load_end[0]:.2f}; {'interrupted; ' if interrupted else ''}"
        f"{server.starts if server else 0} server start(s)"
    )
    if args.json is not None:
        doc = {
            "command": ["python", "-m", "bench.bench_load", *argv],
            "started_utc": started.isoformat(),
            "quick": args.quick,
            "plan": asdict(plan),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "mem_gib": mem_total_gib()},
            "load_average_start": load_start,
            "load_average_end": load_end,
            "settings": shown,
            "server_fd_limit": server_nofile,
            "rss_cap_gib": args.rss_cap_gib,
            "sustainable_rate": None,
            "rows": [no_nan(r.summary()) for r in rows],
            "interrupted": interrupted,
        }
        for r in rows:
            if "sustainable_rate" in r.extra:
                doc["sustainable_rate"] = r.extra["sustainable_rate"]
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 130 if interrupted else 0


def no_nan(value: Any) -> Any:
    """NaN (a percentile of nothing) as null, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def mem_total_gib() -> float:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
