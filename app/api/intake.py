"""From uploaded files to ``Recording``s: decoding, resampling and speech measurement, off the event loop.

Each upload is decoded on its own (one bad file is refused with its name before any inference) and
every error names the file it is about.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from app.api.multipart import UploadedFile
from app.audio import TARGET_SAMPLE_RATE, decode_audio
from app.errors import VoxGateError
from app.speakers import Recording
from app.vad import speech_seconds


def upload_name(upload: UploadedFile, position: int) -> str:
    return upload.filename or f"{upload.field}[{position}]"


def _decode(upload: UploadedFile, name: str, max_seconds: float) -> Recording:
    audio = decode_audio(upload.data, content_type=upload.content_type, max_seconds=max_seconds)
    return Recording(name, audio.waveform, speech_seconds(audio.waveform, TARGET_SAMPLE_RATE))


async def decode_uploads(uploads: Sequence[UploadedFile], *, max_seconds: float) -> list[Recording]:
    """Decode every upload in a worker thread, in order; the first bad one refuses the request."""
    recordings: list[Recording] = []
    for position, upload in enumerate(uploads):
        name = upload_name(upload, position)
        try:
            recordings.append(await run_in_threadpool(_decode, upload, name, max_seconds))
        except VoxGateError as exc:
            exc.extra.setdefault("file", name)
            raise
    return recordings
