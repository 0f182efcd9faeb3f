"""app.audio.decode: container sniffing, decoding of every supported format, resampling, limits."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf
import soxr

from app.audio.decode import (
    RESAMPLE_QUALITY,
    STREAM_HEAD_BYTES,
    TARGET_SAMPLE_RATE,
    check_declared_duration,
    decode_audio,
    sniff_format,
)
from app.audio.vad import speech_seconds
from app.core.errors import AudioTooLong, InvalidAudio, UnsupportedMediaType
from tests.support.data import short_speech, speech_files, wav_bytes

SPEECH_FILE = speech_files()["vctk_p225"][0]


def _speech() -> np.ndarray:
    data, sr = sf.read(SPEECH_FILE, dtype="float32")
    assert sr == TARGET_SAMPLE_RATE
    return data


def _encode(samples: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_wav_roundtrip_is_exact() -> None:
    audio = decode_audio(wav_bytes(SPEECH_FILE))
    reference = _speech()
    assert audio.format == "wav"
    assert audio.source_sample_rate == 16000
    assert audio.waveform.dtype == np.float32
    np.testing.assert_array_equal(audio.waveform, reference)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(subtype: str) -> None:
    reference = _speech()
    audio = decode_audio(_encode(reference, 16000, "WAV", subtype))
    tolerance = 1.0 / 64 if subtype == "PCM_U8" else 1e-4
    assert np.max(np.abs(audio.waveform - reference)) < tolerance


@pytest.mark.parametrize(
    ("fmt", "subtype", "expected", "max_err"),
    [
        ("FLAC", "PCM_16", "flac", 1e-4),
        ("OGG", "VORBIS", "ogg", None),
        ("OGG", "OPUS", "ogg", None),
        ("MP3", "MPEG_LAYER_III", "mp3", None),
    ],
)
def test_compressed_formats_decode(fmt: str, subtype: str, expected: str, max_err: float | None) -> None:
    reference = _speech()
    sample_rate = 48000 if subtype == "OPUS" else 16000  # Opus works at 48 kHz
    source = reference
    if sample_rate != 16000:
        import soxr

        source = soxr.resample(reference, 16000, sample_rate)
    audio = decode_audio(_encode(source, sample_rate, fmt, subtype))
    assert audio.format == expected
    assert audio.source_sample_rate == sample_rate
    # Lossy codecs add delay/padding: same length within 0.1 s, and the same signal by correlation.
    assert abs(audio.waveform.size - reference.size) < 0.1 * TARGET_SAMPLE_RATE
    if max_err is not None:
        assert np.max(np.abs(audio.waveform - reference)) < max_err
    n = min(audio.waveform.size, reference.size)
    lag_search = [np.corrcoef(audio.waveform[lag:n], reference[: n - lag])[0, 1] for lag in range(0, 1200, 8)]
    assert max(lag_search) > 0.9


def test_stereo_44k1_is_mixed_and_resampled() -> None:
    reference = _speech()
    import soxr

    at_44k1 = soxr.resample(reference, 16000, 44100)
    # Left = speech, right = speech at half volume: the mono mix is 0.75 x speech.
    stereo = np.stack([at_44k1, 0.5 * at_44k1], axis=1)
    audio = decode_audio(_encode(stereo, 44100, "WAV", "FLOAT"))
    assert audio.source_sample_rate == 44100
    assert audio.source_channels == 2
    assert abs(audio.waveform.size - reference.size) <= 2
    n = min(audio.waveform.size, reference.size)
    err = audio.waveform[:n] - 0.75 * reference[:n]
    # There and back again loses only the band edge near 8 kHz (about -30 dB here); a wrong mix
    # (one channel only, or a sum) would leave an error of 25 % or more.
    assert np.sqrt(np.mean(err**2)) < 0.05 * np.sqrt(np.mean(reference**2))


def test_sniffing() -> None:
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert sniff_format(b"fLaC\x00") == "flac"
    assert sniff_format(b"OggS\x00") == "ogg"
    assert sniff_format(b"ID3\x04") == "mp3"
    assert sniff_format(b"\xff\xfb\x90\x00") == "mp3"
    assert sniff_format(b"hello world, I am text") is None
    assert sniff_format(b"") is None


def test_text_named_wav_is_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_audio(b"this is a text file, not audio\n" * 10, content_type="audio/wav")


def test_non_audio_content_type_is_refused() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_audio(wav_bytes(SPEECH_FILE), content_type="text/plain")
    # generic or audio types defer to the bytes
    assert decode_audio(wav_bytes(SPEECH_FILE), content_type="application/octet-stream").format == "wav"


def test_empty_upload_is_invalid() -> None:
    with pytest.raises(InvalidAudio, match="empty"):
        decode_audio(b"")


@pytest.mark.parametrize("keep", [12, 30, 44, 20000])
def test_truncated_wav_is_invalid(keep: int) -> None:
    data = wav_bytes(SPEECH_FILE)
    assert len(data) > 20000
    with pytest.raises(InvalidAudio):
        decode_audio(data[:keep])


def _other_speech() -> np.ndarray:
    data, _ = sf.read(speech_files()["librispeech_1688"][0], dtype="float32")
    return data


@pytest.mark.parametrize(("fmt", "subtype", "rate"), [("OGG", "VORBIS", 16000), ("OGG", "OPUS", 48000)])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_ogg_is_invalid(fmt: str, subtype: str, rate: int, keep: float) -> None:
    # libsndfile decodes the pages a cut Ogg file still has, and takes its length from the last of them.
    import soxr

    data = _encode(soxr.resample(_speech(), 16000, rate), rate, fmt, subtype)
    assert decode_audio(data).duration_s > 2.0
    with pytest.raises(InvalidAudio, match="truncated or corrupt Ogg"):
        decode_audio(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.3, 0.8])
def test_truncated_mp3_is_invalid_and_never_filled_with_earlier_audio(keep: float) -> None:
    # libsndfile's MP3 header (Xing/LAME) declares more frames than a cut file decodes.
    # SoundFile.blocks() yields those missing frames from np.empty memory: samples decoded earlier,
    # possibly of another request, inside this upload's embedding.
    cut = _encode(_speech(), 16000, "MP3", "MPEG_LAYER_III")
    cut = cut[: int(len(cut) * keep)]
    for _ in range(3):
        decode_audio(_encode(_other_speech(), 16000, "WAV"))  # leaves its samples in freed memory
        with pytest.raises(InvalidAudio, match="truncated MP3: the header declares"):
            decode_audio(cut)


def test_mp3_cut_within_its_last_frame_decodes_only_what_it_holds() -> None:
    data = _encode(_speech(), 16000, "MP3", "MPEG_LAYER_III")
    whole = decode_audio(data).waveform
    decode_audio(_encode(_other_speech(), 16000, "WAV"))
    cut = decode_audio(data[:-40]).waveform  # inside the last frame: within the encoder slack
    assert whole.size - 1152 <= cut.size <= whole.size
    np.testing.assert_array_equal(cut[: cut.size - 2000], whole[: cut.size - 2000])


def _wav_with_leading_chunk(junk_bytes: int, sample_rate: int = 16000) -> bytes:
    """A valid WAV whose fmt chunk comes after a JUNK chunk of this size."""
    plain = wav_bytes(SPEECH_FILE)
    assert plain[12:16] == b"fmt "
    junk = b"JUNK" + struct.pack("<I", junk_bytes) + b"\x00" * (junk_bytes + (junk_bytes & 1))
    body = junk + plain[12:]
    if sample_rate != 16000:
        fmt_at = len(junk) + 8
        body = body[: fmt_at + 4] + struct.pack("<I", sample_rate) + body[fmt_at + 8 :]
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


@pytest.mark.parametrize("fmt_offset", range(STREAM_HEAD_BYTES - 24, STREAM_HEAD_BYTES - 6, 2))
def test_declared_duration_of_a_head_that_cuts_the_fmt_chunk(fmt_offset: int) -> None:
    # The head of a file still arriving can end anywhere in the fmt chunk: never an exception.
    data = _wav_with_leading_chunk(fmt_offset - 20)
    assert data.index(b"fmt ") == fmt_offset
    check_declared_duration(data[:STREAM_HEAD_BYTES], max_seconds=300)
    assert decode_audio(data).duration_s == pytest.approx(_speech().size / 16000)


def test_absurd_sample_rate_in_a_streamed_head_is_invalid_not_too_long() -> None:
    data = _wav_with_leading_chunk(100, sample_rate=2**31 - 1)
    with pytest.raises(InvalidAudio, match="unsupported sample rate 2147483647 Hz"):
        check_declared_duration(data[:STREAM_HEAD_BYTES], max_seconds=300)
    with pytest.raises(InvalidAudio, match="unsupported sample rate"):
        decode_audio(data)


def test_corrupt_flac_is_invalid() -> None:
    data = bytearray(_encode(_speech(), 16000, "FLAC"))
    data[4:200] = b"\x00" * 196  # destroy STREAMINFO
    with pytest.raises(InvalidAudio):
        decode_audio(bytes(data))


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("subtype", ["PCM_S8", "PCM_16", "PCM_24"])
def test_flac_decodes_to_libsndfiles_samples_exactly(rate: int, channels: int, subtype: str) -> None:
    """FLAC is decoded by dr_flac, the rest by libsndfile: the same file gives the same waveform."""
    rng = np.random.default_rng(rate + channels)
    data = _encode(np.clip(rng.standard_normal((rate, channels)) * 0.2, -1, 1), rate, "FLAC", subtype)
    ours = decode_audio(data, content_type="audio/flac")
    with sf.SoundFile(io.BytesIO(data)) as f:
        samples = f.read(dtype="float32", always_2d=True)
    mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]
    if rate != TARGET_SAMPLE_RATE:
        mono = soxr.resample(mono, rate, TARGET_SAMPLE_RATE, quality=RESAMPLE_QUALITY)
    assert (ours.source_sample_rate, ours.source_channels) == (rate, channels)
    np.testing.assert_array_equal(ours.waveform, np.clip(mono, -1.0, 1.0))


@pytest.mark.parametrize("where", ["streaminfo", "first frame", "middle", "cut"])
def test_damaged_flac_is_invalid_audio(where: str) -> None:
    data = bytearray(_encode(_speech()[:48000], 16000, "FLAC"))
    if where == "cut":
        del data[len(data) // 2 :]
    else:
        at = {"streaminfo": 8, "first frame": 60, "middle": len(data) // 2}[where]
        data[at : at + 64] = np.random.default_rng(at).integers(0, 256, 64, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidAudio):  # 400, whichever check sees it first
        decode_audio(bytes(data), content_type="audio/flac")


def test_too_long_is_refused_from_the_header() -> None:
    with pytest.raises(AudioTooLong) as info:
        decode_audio(wav_bytes(SPEECH_FILE), max_seconds=1.0)
    assert info.value.extra["max_seconds"] == 1.0


def test_speech_measure() -> None:
    """The VAD's net speech: none in silence or faint hiss, a fraction of a second in a 0.3 s snippet."""
    rng = np.random.default_rng(0)
    silence = decode_audio(_encode(np.zeros(16000 * 3, dtype=np.float32), 16000, "WAV"))
    assert speech_seconds(silence.waveform, TARGET_SAMPLE_RATE) == 0.0
    quiet_hiss = decode_audio(
        _encode((1e-4 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000, "WAV")
    )
    assert speech_seconds(quiet_hiss.waveform, TARGET_SAMPLE_RATE) == 0.0
    short = decode_audio(_encode(short_speech(0.3), 16000, "WAV"))
    assert 0.0 < speech_seconds(short.waveform, TARGET_SAMPLE_RATE) < 1.0
    full = decode_audio(wav_bytes(SPEECH_FILE))
    assert speech_seconds(full.waveform, TARGET_SAMPLE_RATE) > 1.0
