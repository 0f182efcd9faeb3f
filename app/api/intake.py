"""From uploaded files to ``Recording``s: decoding, resampling and speech measurement, off the event loop.

Decoding runs on a bounded pool of threads (``decode_workers``), within the request's memory
reservation (each recording's decoded size is reserved from its header before decoding; see
``app.admission``) and its deadline (checked between decoded blocks). Each upload is decoded on its own
(one bad file is refused with its name before any inference) and every error names its file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from app.admission import DECODE_WORK_BYTES, Admitted, Reservation
from app.api.multipart import UploadedFile
from app.audio import TARGET_SAMPLE_RATE, AudioHeader, decode_audio
from app.engine.backend import available_cpu_cores
from app.errors import DeadlineExceeded, VoxGateError
from app.speakers import Recording, Waiting
from app import vad


def upload_name(upload: UploadedFile, position: int) -> str:
    return upload.filename or f"{upload.field}[{position}]"


class AudioIntake:
    def __init__(self, *, workers: int, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        vad.load()  # a missing or broken VAD graph stops start-up, not the first request
        self._pool = ThreadPoolExecutor(
            max_workers=workers or available_cpu_cores(), thread_name_prefix="decode"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def decode(
        self, uploads: Sequence[UploadedFile], admitted: Admitted, waiting: Waiting
    ) -> list[Recording]:
        """Decode every upload, in order; the first bad one refuses the request."""
        loop = asyncio.get_running_loop()
        recordings: list[Recording] = []
        for position, upload in enumerate(uploads):
            name = upload_name(upload, position)
            try:
                recordings.append(
                    await loop.run_in_executor(
                        self._pool, self._decode, upload, name, admitted.reservation, waiting.deadline
                    )
                )
            except VoxGateError as exc:
                exc.extra.setdefault("file", name)
                raise
        admitted.decoded()
        return recordings

    def _decode(
        self, upload: UploadedFile, name: str, reservation: Reservation, deadline: float
    ) -> Recording:
        """One upload, on a pool thread: the memory it needs is reserved first, or it is refused."""

        def check_deadline() -> None:
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("the request's deadline passed while its audio was decoded")

        reserved = 0

        def reserve(header: AudioHeader) -> None:
            nonlocal reserved
            # Twice the waveform while its decoded blocks are joined; trimmed to once afterwards.
            reserved = 2 * header.decoded_bytes(self.max_seconds)
            reservation.grow(reserved, f"the decoded audio of {name!r}")

        check_deadline()
        reservation.grow(DECODE_WORK_BYTES, "decoding")
        try:
            audio = decode_audio(
                upload.data,
                content_type=upload.content_type,
                max_seconds=self.max_seconds,
                before_decoding=reserve,
                should_stop=check_deadline,
            )
            reservation.shrink(max(0, reserved - audio.waveform.nbytes))
            regions = vad.speech_regions(audio.waveform, TARGET_SAMPLE_RATE)
            return Recording(name, audio.waveform, vad.regions_seconds(regions), regions)
        finally:
            reservation.shrink(DECODE_WORK_BYTES)
