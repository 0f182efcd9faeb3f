"""From uploaded files to ``Recording``s (``app.audio.recording``), off the event loop.

Decoding runs on a bounded pool of threads (``decode_workers``), within the request's memory reservation
(the decoded size of all its recordings is reserved from their headers before any is decoded; see
``app.engine.admission``) and its deadline (checked before decoding against the engine's estimate, and
between decoded blocks). Each upload is decoded on its own (one bad file is refused with its name before
any inference) and every error names its file.

A request with one upload, when a decoding thread is free, is opened, checked and decoded in one trip to
that thread: the same steps in the same order, one thread handoff instead of two (each cost the event
loop and the threads about 0.05-0.1 CPU-ms). When every thread is busy its header is read beside the
pool as for several uploads, so that audio that cannot be in time is refused without waiting its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from app.audio.decode import TARGET_SAMPLE_RATE, AudioHeader, OpenedUpload
from app.audio.recording import Recording, decode_recording
from app.core.errors import DeadlineExceeded, VoxGateError
from app.core.process import available_cpus
from app.engine.admission import DECODE_WORK_BYTES, Admitted, Reservation
from app.engine.engine import Waiting

T = TypeVar("T")


class Upload(Protocol):
    """One uploaded file, as the HTTP layer read it."""

    @property
    def field(self) -> str: ...
    @property
    def filename(self) -> str | None: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def data(self) -> bytes: ...


def upload_name(upload: Upload, position: int) -> str:
    return upload.filename or f"{upload.field}[{position}]"


# Worker seconds to decode one second of audio, until measured (then a running average): FLAC decoding
# and resampling took about 0.6 ms per second here, Opus about 1.5 ms.
INITIAL_DECODE_COST = 0.002


class AudioIntake:
    def __init__(self, *, workers: int, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.workers = workers or available_cpus()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        self._cost = INITIAL_DECODE_COST  # worker seconds per second of audio
        self._queued_s = 0.0  # audio seconds waiting for or in decoding (from their headers)
        self._busy = 0  # pool tasks submitted and not finished
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def likely_decoding_bytes(self, body_bytes: int, max_files: int) -> int:
        """What decoding a body of ``body_bytes`` will likely hold: 16 kHz float32 is twice the bytes of
        16-bit PCM at 16 kHz (less for higher rates and channels, more for compressed formats, which
        reserve the rest from their headers), the largest file twice while its blocks are joined, and the
        decoding work. At most what ``max_files`` recordings of the longest accepted duration need."""
        cap = max_files * AudioHeader.decoded_bytes_cap(self.max_seconds)
        return (
            min(2 * body_bytes, cap)
            + min(2 * body_bytes, AudioHeader.decoded_bytes_cap(self.max_seconds))
            + DECODE_WORK_BYTES
        )

    async def decode(
        self, uploads: Sequence[Upload], admitted: Admitted, waiting: Waiting
    ) -> list[Recording]:
        """Decode every upload, in order; the first bad one refuses the request.

        Every header is read first (no samples decoded): an over-long or undecodable file is refused at
        once, the memory for all recordings is reserved at once, and audio that cannot be through
        inference by the deadline is refused before any of it is decoded."""
        names = [upload_name(upload, position) for position, upload in enumerate(uploads)]
        if len(uploads) == 1 and self._take_thread_if_free():
            return [
                await self._in_pool(self._open_and_decode, uploads[0], names[0], admitted, waiting.deadline)
            ]
        # Headers are cheap (no samples): read them beside the pool, not queued behind its decoding.
        with _naming_errors(None):
            opened = await asyncio.to_thread(self._open_all, uploads, names)
        try:
            seconds, expected = self._reserve(opened, admitted, waiting.deadline)
            try:
                recordings: list[Recording] = []
                for upload, name, size in zip(opened, names, expected, strict=True):
                    with _naming_errors(name):
                        recordings.append(
                            await self._in_pool(
                                self._decode, upload, name, size, admitted.reservation, waiting.deadline
                            )
                        )
            finally:
                self._done(seconds)
        finally:
            for upload in opened:
                upload.close()  # what was not decoded (refused, cancelled); a no-op for the rest
        admitted.decoded()
        return recordings

    def _take_thread_if_free(self) -> bool:
        with self._lock:
            return self._busy < self.workers

    async def _in_pool(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            self._busy += 1

        def run() -> T:
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._busy -= 1

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    def _open_and_decode(self, upload: Upload, name: str, admitted: Admitted, deadline: float) -> Recording:
        """One upload's whole trip, on a pool thread: what ``decode`` does in its steps."""
        (opened,) = self._open_all([upload], [name])
        try:
            seconds, (expected,) = self._reserve([opened], admitted, deadline)
            try:
                with _naming_errors(name):
                    recording = self._decode(opened, name, expected, admitted.reservation, deadline)
            finally:
                self._done(seconds)
        finally:
            opened.close()
        admitted.decoded()
        return recording

    def _reserve(
        self, opened: Sequence[OpenedUpload], admitted: Admitted, deadline: float
    ) -> tuple[float, list[int]]:
        """From the headers: the decoded audio's memory reserved, the request refused unless its audio
        can be decoded and through inference by the deadline, its audio declared and queued. Returns the
        queued seconds (for ``_done``) and each recording's expected decoded bytes."""
        headers = [upload.header for upload in opened]
        decoded = [h.decoded_bytes(self.max_seconds) for h in headers]
        admitted.reservation.grow(
            sum(decoded) + max(decoded) + DECODE_WORK_BYTES,
            f"the decoded audio of {len(opened)} recording(s)",
        )
        seconds = sum(min(h.duration_s or self.max_seconds, self.max_seconds) for h in headers)
        samples = round(seconds * TARGET_SAMPLE_RATE)
        with self._lock:
            # Its own decoding runs on one worker; what is queued ahead spreads over all of them.
            decode_s, queued_s = seconds * self._cost, self._queued_s * self._cost / self.workers
        admitted.refuse_unless_in_time(samples, decode_s, queued_s, deadline)
        admitted.declare(samples)
        with self._lock:
            self._queued_s += seconds
        return seconds, decoded

    def _done(self, seconds: float) -> None:
        with self._lock:
            self._queued_s = max(0.0, self._queued_s - seconds)

    def _open_all(self, uploads: Sequence[Upload], names: Sequence[str]) -> list[OpenedUpload]:
        """Every upload opened and its header read (no samples decoded), or the first bad one refused."""
        opened: list[OpenedUpload] = []
        try:
            for upload, name in zip(uploads, names, strict=True):
                with _naming_errors(name):
                    opened.append(
                        OpenedUpload(
                            upload.data, content_type=upload.content_type, max_seconds=self.max_seconds
                        )
                    )
        except BaseException:
            for done in opened:
                done.close()
            raise
        return opened

    def _decode(
        self, upload: OpenedUpload, name: str, expected: int, reservation: Reservation, deadline: float
    ) -> Recording:
        """One upload, on a pool thread, within what was reserved for it (more only when the container
        said too little: MP3 lengths are estimates)."""

        def check_deadline() -> None:
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed while its audio was decoded")

        check_deadline()
        started = time.perf_counter()
        recording = decode_recording(
            upload,
            name,
            should_stop=check_deadline,
            on_decoded=lambda audio: reservation.grow(
                max(0, audio.waveform.nbytes - expected), f"the decoded audio of {name!r}"
            ),
        )
        seconds = recording.waveform.shape[0] / TARGET_SAMPLE_RATE
        if seconds >= 1.0:  # the cost per second of audio, for the next requests' estimates
            cost = (time.perf_counter() - started) / seconds
            with self._lock:
                self._cost = 0.8 * self._cost + 0.2 * cost
        return recording


@contextlib.contextmanager
def _naming_errors(name: str | None) -> Iterator[None]:
    """A refusal names the file it is about (when the caller knows it)."""
    try:
        yield
    except VoxGateError as exc:
        if name is not None:
            exc.extra.setdefault("file", name)
        raise
