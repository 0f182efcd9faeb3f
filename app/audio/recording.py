"""``Recording``: one decoded upload and where its speech is. ``decode_recording`` is the one way from an
upload's bytes to a Recording (decoding, then speech detection), for the service's intake and for the
command-line tools (``voxgate eval``, ``calibrate``, ``cohort build``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.audio import vad
from app.audio.decode import TARGET_SAMPLE_RATE, DecodedAudio, decode_audio

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """One decoded upload: 16 kHz mono samples and the net speech the VAD found in them."""

    name: str
    waveform: Float32Array
    speech_seconds: float
    regions: Sequence[vad.Region] = ()  # where the VAD found the speech (samples)


def decode_recording(
    data: bytes,
    name: str,
    *,
    content_type: str | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], None] | None = None,
    on_decoded: Callable[[DecodedAudio], None] | None = None,
) -> Recording:
    """Decode an upload and find its speech (blocking: callers run it off the event loop). ``on_decoded``
    sees the decoded audio before speech detection (the intake accounts for its memory there);
    ``should_stop`` runs between decoded blocks and may raise."""
    audio = decode_audio(data, content_type=content_type, max_seconds=max_seconds, should_stop=should_stop)
    if on_decoded is not None:
        on_decoded(audio)
    regions = vad.speech_regions(audio.waveform, TARGET_SAMPLE_RATE)
    return Recording(name, audio.waveform, vad.regions_seconds(regions), regions)
