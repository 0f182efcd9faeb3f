"""The neural VAD (Silero VAD v6 on ONNX Runtime, app/audio/vad.py): speech found in real speech, none in
noise, tones, hum, music or silence; its regions; and the committed graph is the one its README names."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio import vad
from tests.support.data import REPO_ROOT, SAMPLE_RATE, non_speech_signals, speech_files, speech_paths

VAD_DIR = REPO_ROOT / "app" / "assets" / "vad"


def real_speech(seconds: float) -> np.ndarray:
    """``seconds`` of continuous read speech (VCTK p225, from 1.5 s into the recording)."""
    wave, _ = sf.read(speech_files()["vctk_p225"][0], dtype="float32")
    start = int(1.5 * SAMPLE_RATE)
    return np.asarray(wave[start : start + int(seconds * SAMPLE_RATE)], dtype=np.float32)


@pytest.mark.parametrize("name", sorted(non_speech_signals()))
def test_no_speech_in_non_speech(name: str) -> None:
    signal = non_speech_signals()[name]
    assert vad.speech_regions(signal) == []
    assert vad.speech_seconds(signal) == 0.0


def test_speech_is_found_in_every_real_recording() -> None:
    for path in speech_paths()[::5]:
        wave, _ = sf.read(path, dtype="float32")
        seconds = vad.speech_seconds(wave)
        duration = wave.size / SAMPLE_RATE
        # Read speech: most of a recording is speech, never more than all of it.
        assert 0.5 * duration < seconds <= duration, path.name


def test_mostly_noise_counts_only_its_speech() -> None:
    rng = np.random.default_rng(3)
    speech = real_speech(1.5)
    noise = lambda s: (0.03 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32)  # noqa: E731
    mixed = np.concatenate([noise(4.0), speech + noise(1.5), noise(4.0)])
    regions = vad.speech_regions(mixed)
    seconds = vad.regions_seconds(regions)
    assert 1.0 < seconds < 2.0  # 1.5 s of speech (and its padding), not 9.5 s of "energy"
    start, end = regions[0][0], regions[-1][1]
    assert start > 3.7 * SAMPLE_RATE
    assert end < 5.8 * SAMPLE_RATE


def test_regions_are_sorted_disjoint_and_inside_the_recording() -> None:
    silence = np.zeros(SAMPLE_RATE, np.float32)
    wave = np.concatenate([silence, real_speech(2.0), silence, real_speech(1.0), silence])
    regions = vad.speech_regions(wave)
    assert len(regions) >= 2
    assert all(0 <= a < b <= wave.size for a, b in regions)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(regions))
    joined = vad.speech_only(wave, regions)
    assert joined.size == sum(b - a for a, b in regions)
    assert vad.overlap_samples(regions, 0, wave.size) == joined.size


def test_blocks_of_frames_give_the_frame_by_frame_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recurrent state crosses session.run calls: any block size gives the same probabilities."""
    wave = real_speech(3.0)
    reference = vad.speech_probabilities(wave)
    monkeypatch.setattr(vad, "FRAMES_PER_CALL", 7)
    np.testing.assert_allclose(vad.speech_probabilities(wave), reference, atol=1e-5)
    assert reference.size == -(-wave.size // vad.FRAME_SAMPLES)


def test_short_and_empty_input() -> None:
    assert vad.speech_probabilities(np.zeros(0, np.float32)).size == 0
    assert vad.speech_seconds(np.zeros(100, np.float32)) == 0.0
    with pytest.raises(ValueError, match="16000"):
        vad.speech_seconds(np.zeros(8000, np.float32), 8000)


def test_the_committed_graph_is_the_one_its_readme_names() -> None:
    readme = (VAD_DIR / "README.md").read_text(encoding="utf-8")
    graph = VAD_DIR / vad.MODEL_FILE
    assert hashlib.sha256(graph.read_bytes()).hexdigest() in readme
    assert "MIT License" in (VAD_DIR / "LICENSE").read_text(encoding="utf-8")
    assert Path(vad.model_path()) == graph
