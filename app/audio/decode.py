"""Audio intake: sniff, decode, mix to mono, resample to 16 kHz, and check the limits.

Decisions (also stated in the OpenAPI description at /docs):

* The container is recognised by its magic bytes, not its file name. Content that is none of WAV
  (RIFF/RF64/WAVE), FLAC, OGG (Vorbis, Opus) or MP3 is ``unsupported_media_type`` (415) — a text file
  named ``.wav`` is refused that way. A declared content type that is clearly not audio
  (``text/*``, ``image/*``, ...) is 415 as well.
* Content that *looks* like a supported container but cannot be decoded (corrupt, truncated, empty,
  no samples, NaN/inf samples, a sample rate outside 4-768 kHz) is ``invalid_audio`` (400).
  libsndfile decodes the prefix of a truncated file without complaint, so truncation is checked here:
  a WAV whose data chunk promises more bytes than the file holds, an Ogg stream whose last page is
  cut or is not its end-of-stream page, and any file that decodes to fewer frames than its header
  declares (FLAC, MP3 with a Xing/LAME header). An MP3 without such a header states no length: a cut
  one is a valid, shorter MP3.
* Duration is checked from the header before decoding everything, and again after decoding (MP3
  headers only estimate it).
* FLAC is decoded by dr_flac (through miniaudio), everything else by libsndfile: for a 3 s FLAC dr_flac
  took 0.28 CPU-ms against libsndfile's 0.56, with the same samples (``python -m bench.bench_decode``).

Everything here is blocking CPU work: callers run it in a thread pool, never on the event loop.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import miniaudio
import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from app.core.errors import AudioTooLong, InvalidAudio, UnsupportedMediaType

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


def _check_ogg_not_truncated(data: bytes) -> None:
    """Walk the Ogg pages: the last one must be whole and end the stream (libsndfile decodes the pages a
    cut file still has, and its length comes from the last of them, so nothing else shows the cut)."""
    pos, header_type = 0, 0
    while pos + 27 <= len(data) and data[pos : pos + 4] == b"OggS":
        segments = data[pos + 27 : pos + 27 + data[pos + 26]]
        end = pos + 27 + data[pos + 26] + sum(segments)
        if len(segments) < data[pos + 26] or end > len(data):
            raise InvalidAudio(f"truncated or corrupt Ogg: the page at byte {pos} is cut off")
        header_type, pos = data[pos + 5], end
    if not header_type & _OGG_END_OF_STREAM:
        raise InvalidAudio("truncated or corrupt Ogg: the stream ends without its end-of-stream page")


_OGG_END_OF_STREAM = 0x04


@dataclass(frozen=True)
class AudioHeader:
    """What the container says before any sample is decoded."""

    format: AudioFormat
    sample_rate: int
    channels: int
    duration_s: float | None  # None when the container does not say (streamed WAV); MP3: an estimate

    @staticmethod
    def decoded_bytes_cap(max_seconds: float) -> int:
        """The most one recording's decoded waveform can take (the duration cap, plus header slack)."""
        return DECODED_BYTES_PER_SECOND * math.ceil(max_seconds + HEADER_SLACK_S + 1)

    def decoded_bytes(self, max_seconds: float | None) -> int:
        """Bytes of the 16 kHz float32 waveform decoding will produce (at most ``max_seconds`` of it)."""
        seconds = self.duration_s if self.duration_s is not None else max_seconds
        if seconds is None:
            raise ValueError("duration unknown and no cap given")
        if max_seconds is not None:
            seconds = min(seconds, max_seconds + HEADER_SLACK_S)
        return DECODED_BYTES_PER_SECOND * math.ceil(seconds + 1)


# Decoding runs in blocks of at most this many samples (all channels together): memory stays bounded
# whatever the header claims (a 65535-channel WAV would otherwise ask for gigabytes per block).
BLOCK_SAMPLES = 1 << 18
DECODED_BYTES_PER_SECOND = TARGET_SAMPLE_RATE * 4  # float32
# MP3 frame counts are estimates; the exact check while decoding catches the rest.
HEADER_SLACK_S = 1.0
# Fewer decoded frames than the header declares means a cut file, but encoders may disagree by up to
# one MPEG audio frame about the padding at the end.
TRUNCATION_SLACK_FRAMES = 1152


class _Samples(Protocol):
    """An opened upload's samples, read into a float32 (frames, channels) buffer block by block."""

    @property
    def samplerate(self) -> int: ...
    @property
    def channels(self) -> int: ...
    @property
    def frames(self) -> int: ...  # as declared: 0 (or absurdly many, for libsndfile) when unknown

    def read_into(self, buffer: npt.NDArray[np.float32]) -> int: ...
    def close(self) -> None: ...


class _LibsndfileSamples:
    def __init__(self, data: bytes) -> None:
        self._file = sf.SoundFile(io.BytesIO(data))
        self.samplerate, self.channels, self.frames = (
            self._file.samplerate,
            self._file.channels,
            self._file.frames,
        )

    def read_into(self, buffer: npt.NDArray[np.float32]) -> int:
        return int(self._file.read(len(buffer), dtype="float32", always_2d=True, out=buffer).shape[0])

    def close(self) -> None:
        self._file.close()


class _FlacSamples:
    """dr_flac's decoder over the upload's bytes (which the cdata buffer keeps alive)."""

    _flac = miniaudio.ffi.NULL  # until opened

    def __init__(self, data: bytes) -> None:
        self._data = miniaudio.ffi.from_buffer(data)
        self._flac = miniaudio.lib.ma_dr_flac_open_memory(self._data, len(data), miniaudio.ffi.NULL)
        if self._flac == miniaudio.ffi.NULL:
            raise InvalidAudio("cannot decode FLAC audio: not a valid FLAC stream")
        self.samplerate = int(self._flac.sampleRate)
        self.channels = int(self._flac.channels)
        self.frames = int(self._flac.totalPCMFrameCount)

    def read_into(self, buffer: npt.NDArray[np.float32]) -> int:
        if self._flac == miniaudio.ffi.NULL:
            raise ValueError("read from a closed FLAC decoder")
        target = miniaudio.ffi.cast("float *", miniaudio.ffi.from_buffer(buffer))
        return int(miniaudio.lib.ma_dr_flac_read_pcm_frames_f32(self._flac, buffer.shape[0], target))

    def close(self) -> None:
        if self._flac != miniaudio.ffi.NULL:
            miniaudio.lib.ma_dr_flac_close(self._flac)
            self._flac = miniaudio.ffi.NULL

    __del__ = close  # the decoder is C memory: freed even if an error skipped close()


def _open(data: bytes, content_type: str | None) -> tuple[_Samples, AudioFormat]:
    """The upload opened by its decoder, after the checks that need no decoding; the decoder's errors
    become ``invalid_audio`` (400)."""
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
    elif fmt == "ogg":
        _check_ogg_not_truncated(data)
    if fmt == "flac":
        return _FlacSamples(data), fmt
    with _libsndfile_errors(fmt):
        return _LibsndfileSamples(data), fmt


@contextlib.contextmanager
def _libsndfile_errors(fmt: AudioFormat) -> Iterator[None]:
    try:
        yield
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError, struct.error) as exc:
        # libsndfile names the file object ("<_io.BytesIO object at 0x...>"): no use to a client.
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the upload", str(exc))
        raise InvalidAudio(f"cannot decode {fmt.upper()} audio: {reason}") from exc


class OpenedUpload:
    """An upload opened once: its header read now, its samples decoded later (maybe on another thread),
    then closed. The intake reads every header of a request before it decodes any (memory is reserved and
    the deadline checked from them), and opening a file twice cost a tenth of a request's CPU."""

    def __init__(self, data: bytes, *, content_type: str | None = None, max_seconds: float | None = None):
        self._file, self.format = _open(data, content_type)
        self._max_seconds = max_seconds
        try:
            with _libsndfile_errors(self.format):
                self.header = _header(self._file, self.format, max_seconds)
        except BaseException:
            self._file.close()
            raise

    def decode(self, should_stop: Callable[[], None] | None = None) -> DecodedAudio:
        """16 kHz mono float32 (see ``decode_audio``); closes the upload."""
        try:
            with _libsndfile_errors(self.format):
                waveform = _decode_blocks(self._file, self.header, self._max_seconds, should_stop)
        finally:
            self.close()
        return DecodedAudio(waveform, self.format, self.header.sample_rate, self.header.channels)

    def close(self) -> None:
        self._file.close()


def read_header(
    data: bytes, *, content_type: str | None = None, max_seconds: float | None = None
) -> AudioHeader:
    """What the upload's container says (format, rate, channels, duration), without decoding a sample.
    Raises the same 4xx errors as ``decode_audio`` for what the header alone shows."""
    opened = OpenedUpload(data, content_type=content_type, max_seconds=max_seconds)
    opened.close()
    return opened.header


def decode_audio(
    data: bytes,
    *,
    content_type: str | None = None,
    max_seconds: float | None = None,
    before_decoding: Callable[[AudioHeader], None] | None = None,
    should_stop: Callable[[], None] | None = None,
) -> DecodedAudio:
    """Decode an upload to 16 kHz mono float32. Raises the 4xx errors of ``app.core.errors``.

    The samples are read, mixed to mono and resampled block by block, with the duration cap checked as
    they come, so an over-long or lying file costs at most the cap. ``before_decoding`` sees the header
    first (the caller reserves memory for the result, or refuses); ``should_stop`` runs between blocks
    and may raise (the request's deadline passed).
    """
    opened = OpenedUpload(data, content_type=content_type, max_seconds=max_seconds)
    try:
        if before_decoding is not None:
            before_decoding(opened.header)
    except BaseException:
        opened.close()
        raise
    return opened.decode(should_stop)


# --- the duration from the first bytes of an upload that is still arriving -------------------------------
STREAM_HEAD_BYTES = 64 * 1024


def declared_seconds(head: bytes) -> float | None:
    """The duration a WAV or FLAC header states, from the first bytes of the file (None when they do not
    say: other containers, a streamed WAV, or not enough bytes yet). Lets an over-long upload be refused
    while the rest of it is still on the way."""
    fmt = sniff_format(head[:16])
    if fmt == "flac":
        return _flac_seconds(head)
    if fmt == "wav" and head[:4] == b"RIFF":
        return _wav_seconds(head)
    return None


def _flac_seconds(head: bytes) -> float | None:
    # fLaC, then the STREAMINFO block: 4-byte block header, 10 bytes of block/frame sizes, then 20 bits
    # sample rate, 3 bits channels, 5 bits bits-per-sample, 36 bits total samples (0 = unknown).
    if len(head) < 8 + 18 or head[4] & 0x7F != 0:
        return None
    bits = int.from_bytes(head[18:26], "big")
    rate = bits >> 44
    total = bits & ((1 << 36) - 1)
    _check_sample_rate(rate)
    return total / rate if total > 0 else None


def _wav_seconds(head: bytes) -> float | None:
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (size,) = struct.unpack("<I", head[pos + 4 : pos + 8])
        # fmt chunk: format tag, channels (2 bytes each), sample rate, byte rate (4 bytes each), ...
        if chunk_id == b"fmt " and pos + 20 <= len(head):
            sample_rate, byte_rate = struct.unpack("<II", head[pos + 12 : pos + 20])
            _check_sample_rate(sample_rate)
        elif chunk_id == b"data":
            if byte_rate <= 0 or size in (0, 0xFFFFFFFF):
                return None
            return float(size / byte_rate)
        pos += 8 + size + (size & 1)
    return None


def check_declared_duration(head: bytes, max_seconds: float) -> None:
    """Refuse (``audio_too_long``) an upload whose header states more than ``max_seconds``."""
    seconds = declared_seconds(head)
    if seconds is not None and seconds > max_seconds + HEADER_SLACK_S:
        raise _too_long(seconds, max_seconds)


def _too_long(duration: float, max_seconds: float) -> AudioTooLong:
    return AudioTooLong(
        f"recording is {duration:.1f} s; the limit is {max_seconds:g} s",
        duration_s=round(duration, 3),
        max_seconds=max_seconds,
    )


def _check_sample_rate(sample_rate: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidAudio(
            f"unsupported sample rate {sample_rate} Hz; expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )


def _header(f: _Samples, fmt: AudioFormat, max_seconds: float | None) -> AudioHeader:
    sample_rate = int(f.samplerate)
    channels = int(f.channels)
    if channels <= 0:
        raise InvalidAudio(f"bad stream parameters: {channels} channels")
    _check_sample_rate(sample_rate)
    # libsndfile reports a huge frame count for WAVs whose data size is unknown (streamed: 0xFFFFFFFF).
    frames = int(f.frames)
    duration = frames / sample_rate if 0 < frames < 2**62 else None
    if max_seconds is not None and duration is not None and duration > max_seconds + HEADER_SLACK_S:
        raise _too_long(duration, max_seconds)
    return AudioHeader(fmt, sample_rate, channels, duration)


def _decode_blocks(
    f: _Samples,
    header: AudioHeader,
    max_seconds: float | None,
    should_stop: Callable[[], None] | None,
) -> npt.NDArray[np.float32]:
    rate, channels = header.sample_rate, header.channels
    max_frames = None if max_seconds is None else math.floor(max_seconds * rate)
    resampler = (
        soxr.ResampleStream(rate, TARGET_SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        if rate != TARGET_SAMPLE_RATE
        else None
    )
    pieces: list[npt.NDArray[np.float32]] = []
    frames = 0
    # One buffer, and only the frames each read really returned: SoundFile.blocks() yields whole blocks
    # of np.empty memory when a file ends before its header says (a cut MP3), i.e. whatever an earlier
    # request decoded into that memory.
    buffer = np.empty((max(1, BLOCK_SAMPLES // channels), channels), dtype=np.float32)
    while read := f.read_into(buffer):
        block = buffer[:read]
        if should_stop is not None:
            should_stop()
        frames += block.shape[0]
        if max_frames is not None and frames > max_frames:
            raise _too_long(frames / rate, max_seconds or 0.0)
        if not np.isfinite(block).all():
            raise InvalidAudio("the recording holds NaN or infinite samples")
        mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
        if resampler is not None:
            mono = resampler.resample_chunk(mono)
        pieces.append(np.array(mono, dtype=np.float32))  # a copy: the block buffer is reused
    if frames == 0:
        raise InvalidAudio("the recording holds no samples")
    declared = int(f.frames)
    if 0 < declared < 2**62 and frames < declared - TRUNCATION_SLACK_FRAMES:
        raise InvalidAudio(
            f"truncated {header.format.upper()}: the header declares {declared} frames, only {frames} decode"
        )
    if resampler is not None:
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    waveform = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    np.clip(waveform, -1.0, 1.0, out=waveform)
    return np.ascontiguousarray(waveform, dtype=np.float32)
