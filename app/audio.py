"""Audio intake: sniff, decode, mix to mono, resample to 16 kHz, and check the limits.

Decisions (also stated in the OpenAPI description at /docs):

* The container is recognised by its magic bytes, not its file name. Content that is none of WAV
  (RIFF/RF64/WAVE), FLAC, OGG (Vorbis, Opus) or MP3 is ``unsupported_media_type`` (415) — a text file
  named ``.wav`` is refused that way. A declared content type that is clearly not audio
  (``text/*``, ``image/*``, ...) is 415 as well.
* Content that *looks* like a supported container but cannot be decoded (corrupt, truncated, empty,
  no samples, NaN/inf samples, a sample rate outside 4-768 kHz) is ``invalid_audio`` (400). A WAV
  whose data chunk promises more bytes than the file holds is truncated and refused, even though
  libsndfile would decode the prefix.
* Duration is checked from the header before decoding everything, and again after decoding (MP3
  headers only estimate it).

Everything here is blocking CPU work: callers run it in a thread pool, never on the event loop.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from app.errors import AudioTooLong, InvalidAudio, UnsupportedMediaType

TARGET_SAMPLE_RATE = 16000
# soxr "HQ": 20-bit precision, linear phase; more than enough for 16 kHz speech features.
RESAMPLE_QUALITY = "HQ"

# Sample rates a real recording can have. Outside this a header is corrupt or hostile: 2**31 Hz would
# make the resampler grind seconds for a few output samples and then report "no speech".
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 768000

AudioFormat = Literal["wav", "flac", "ogg", "mp3"]

# Declared content types we accept as-is; anything else under these prefixes is refused, and the
# generic types (missing, octet-stream) defer to the magic bytes.
_AUDIO_TYPE_PREFIXES = ("audio/",)
_GENERIC_TYPES = {"", "application/octet-stream", "application/ogg", "video/ogg", "binary/octet-stream"}


@dataclass(frozen=True)
class DecodedAudio:
    waveform: npt.NDArray[np.float32]  # 16 kHz mono float32 in [-1, 1]
    format: AudioFormat
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return self.waveform.size / TARGET_SAMPLE_RATE


def sniff_format(head: bytes) -> AudioFormat | None:
    """The container format from the first bytes, or None when it is none we decode."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    # A bare MPEG audio frame: 11 sync bits, layer != reserved, bitrate != 0xF.
    if (
        len(head) >= 3
        and head[0] == 0xFF
        and (head[1] & 0xE0) == 0xE0
        and (head[1] & 0x06) != 0
        and (head[2] & 0xF0) != 0xF0
    ):
        return "mp3"
    return None


def check_content_type(content_type: str | None) -> None:
    """Refuse a declared content type that says the upload is not audio."""
    if content_type is None:
        return
    base = content_type.split(";", 1)[0].strip().lower()
    if base in _GENERIC_TYPES or base.startswith(_AUDIO_TYPE_PREFIXES):
        return
    raise UnsupportedMediaType(
        f"declared content type {base!r} is not audio; send WAV, FLAC, OGG (Vorbis/Opus) or MP3"
    )


def _check_wav_not_truncated(data: bytes) -> None:
    """Walk the RIFF chunks: the data chunk must be complete (libsndfile silently reads a prefix)."""
    if data[:4] == b"RF64":
        return  # sizes live in the ds64 chunk; rare enough to leave to libsndfile
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if chunk_id == b"data":
            # 0 and 0xFFFFFFFF are what streaming writers put before they know the length.
            if size not in (0, 0xFFFFFFFF) and pos + 8 + size > len(data):
                raise InvalidAudio(
                    f"truncated WAV: data chunk declares {size} bytes, file holds {len(data) - pos - 8}"
                )
            return
        pos += 8 + size + (size & 1)
    raise InvalidAudio("WAV without a data chunk (truncated or corrupt)")


def decode_audio(
    data: bytes,
    *,
    content_type: str | None = None,
    max_seconds: float | None = None,
) -> DecodedAudio:
    """Decode an upload to 16 kHz mono float32. Raises the 4xx errors of ``app.errors``."""
    check_content_type(content_type)
    if not data:
        raise InvalidAudio("empty upload (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise UnsupportedMediaType(
            "content is not a supported audio container (WAV, FLAC, OGG Vorbis/Opus, MP3)"
        )
    if fmt == "wav":
        _check_wav_not_truncated(data)
    buffer = io.BytesIO(data)
    try:
        with sf.SoundFile(buffer) as f:
            sample_rate = int(f.samplerate)
            channels = int(f.channels)
            if channels <= 0:
                raise InvalidAudio(f"bad stream parameters: {channels} channels")
            if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
                raise InvalidAudio(
                    f"unsupported sample rate {sample_rate} Hz; "
                    f"expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
                )
            # MP3 frame counts are estimates; the exact check after decoding catches the rest.
            if max_seconds is not None and f.frames > 0 and f.frames / sample_rate > max_seconds + 1.0:
                raise AudioTooLong(
                    f"recording is {f.frames / sample_rate:.1f} s; the limit is {max_seconds:g} s",
                    duration_s=round(f.frames / sample_rate, 3),
                    max_seconds=max_seconds,
                )
            samples = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError, struct.error) as exc:
        # libsndfile names the file object ("<_io.BytesIO object at 0x...>"): no use to a client.
        reason = str(exc).replace(repr(buffer), "the upload")
        raise InvalidAudio(f"cannot decode {fmt.upper()} audio: {reason}") from exc
    if samples.shape[0] == 0:
        raise InvalidAudio("the recording holds no samples")
    if not np.isfinite(samples).all():
        raise InvalidAudio("the recording holds NaN or infinite samples")
    duration = samples.shape[0] / sample_rate
    if max_seconds is not None and duration > max_seconds:
        raise AudioTooLong(
            f"recording is {duration:.1f} s; the limit is {max_seconds:g} s",
            duration_s=round(duration, 3),
            max_seconds=max_seconds,
        )
    mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]
    if sample_rate != TARGET_SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, TARGET_SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    waveform = np.ascontiguousarray(np.clip(mono, -1.0, 1.0), dtype=np.float32)
    return DecodedAudio(waveform, fmt, sample_rate, channels)
