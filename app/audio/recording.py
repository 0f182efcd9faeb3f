"""``Recording``: one decoded upload, and where its speech is once the VAD has run; ``SpeechGate``: the
rule that a recording holds enough speech to be used.

``decode_recording`` is the one way from an upload's bytes to a Recording, for the service's intake and
for the command-line tools. The VAD itself runs in the inference engine, batched across recordings
(``EmbeddingEngine.analyze``), which fills in the regions and applies the gate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from app.audio import vad
from app.audio.decode import DecodedAudio, OpenedUpload
from app.core.errors import NoSpeech, NotEnoughSpeech

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """16 kHz mono samples of one upload; ``regions``: where the VAD found speech (samples), None until
    it has run."""

    name: str
    waveform: Float32Array
    regions: tuple[vad.Region, ...] | None = None

    @property
    def speech_seconds(self) -> float:
        return vad.regions_seconds(list(self.regions or ()))

    def with_regions(self, regions: Sequence[vad.Region]) -> Recording:
        return replace(self, regions=tuple(regions))


@dataclass(frozen=True)
class SpeechGate:
    """``no_speech`` when the VAD found none, ``not_enough_speech`` below ``min_seconds``."""

    min_seconds: float

    def check(self, recording: Recording) -> None:
        if recording.regions is None:
            raise ValueError(f"{recording.name}: speech not measured yet")
        seconds = recording.speech_seconds
        if seconds <= 0.0:
            raise NoSpeech("no speech found in the recording", file=recording.name)
        if seconds < self.min_seconds:
            raise NotEnoughSpeech(
                f"{seconds:.2f} s of speech found; at least {self.min_seconds:g} s needed",
                file=recording.name,
                speech_seconds=round(seconds, 3),
                min_speech_seconds=self.min_seconds,
            )


def decode_recording(
    upload: bytes | OpenedUpload,
    name: str,
    *,
    content_type: str | None = None,
    max_seconds: float | None = None,
    should_stop: Callable[[], None] | None = None,
    on_decoded: Callable[[DecodedAudio], None] | None = None,
) -> Recording:
    """Decode an upload, its bytes or an upload already opened to read its header (blocking: callers run
    it off the event loop). ``on_decoded`` sees the decoded audio (the intake accounts for its memory
    there); ``should_stop`` runs between decoded blocks and may raise."""
    opened = (
        upload
        if isinstance(upload, OpenedUpload)
        else OpenedUpload(upload, content_type=content_type, max_seconds=max_seconds)
    )
    audio = opened.decode(should_stop)
    if on_decoded is not None:
        on_decoded(audio)
    return Recording(name, audio.waveform)
