"""The neural VAD (Silero VAD v6 on ONNX Runtime, app/audio/vad.py): speech found in real speech, none in
noise, tones, hum, music or silence; its regions; and the committed graph is the one its README names."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio import vad
from tests.support.data import REPO_ROOT, SAMPLE_RATE, non_speech_signals, speech_files, speech_paths

VAD_DIR = REPO_ROOT / "app" / "assets" / "vad"
SEQUENCE_GRAPH = "silero_vad_16k_sequence.onnx"  # Silero's file, which the batched graph is derived from
# The batched graph's convolutions are matrix products: only the order of additions differs from Silero's
# graph (1.3e-5 at most on the repository's speech, whose probabilities lie 1e-4 or more from the
# thresholds, so the regions are the same).
SEQUENCE_TOLERANCE = 5e-5


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
    monkeypatch.setattr(vad, "MAX_FRAMES_PER_RECORDING_CALL", 7)
    monkeypatch.setattr(vad, "MIN_FRAMES_PER_RECORDING_CALL", 7)
    np.testing.assert_allclose(vad.speech_probabilities(wave), reference, atol=1e-5)
    assert reference.size == -(-wave.size // vad.FRAME_SAMPLES)


def test_short_and_empty_input() -> None:
    assert vad.speech_probabilities(np.zeros(0, np.float32)).size == 0
    assert vad.speech_seconds(np.zeros(100, np.float32)) == 0.0
    with pytest.raises(ValueError, match="16000"):
        vad.speech_seconds(np.zeros(8000, np.float32), 8000)


def _sequence_graph_probabilities(wave: np.ndarray) -> np.ndarray:
    """Silero's own "sequence" graph, one recording and one call: the reference of the batched graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(VAD_DIR / SEQUENCE_GRAPH), providers=["CPUExecutionProvider"])
    n = -(-wave.size // vad.FRAME_SAMPLES)
    frames = np.zeros((n, vad.FRAME_SAMPLES), np.float32)
    frames.reshape(-1)[: wave.size] = wave
    rows = np.zeros((n, vad.CONTEXT_SAMPLES + vad.FRAME_SAMPLES), np.float32)
    rows[:, vad.CONTEXT_SAMPLES :] = frames
    rows[1:, : vad.CONTEXT_SAMPLES] = frames[:-1, -vad.CONTEXT_SAMPLES :]
    state = np.zeros((1, 1, vad.STATE_SIZE), np.float32)
    (probs,) = session.run(["speech_probs"], {"input": rows, "h": state, "c": state})
    return np.asarray(probs)


def test_a_batch_of_recordings_gives_each_recordings_own_probabilities() -> None:
    """The batched graph, several recordings of different lengths in one batch (zero-padded as the
    engine pads them), gives every recording the probabilities Silero's sequence graph gives it alone."""
    waves = [
        w[: round(s * SAMPLE_RATE)]
        for w, s in zip(_speech_waves(6), (1.1, 7.3, 3.0, 2.2, 5.0, 4.4), strict=True)
    ]
    lengths = [w.size for w in waves]
    batch = np.zeros((len(waves), max(lengths) + 1000), np.float32)
    for row, wave in enumerate(waves):
        batch[row, : wave.size] = wave
    batch[0, lengths[0] :] = 0.3  # what lies past a recording's length must not matter
    probs = vad.SpeechModel().probabilities(batch, lengths)
    for row, wave in enumerate(waves):
        own = probs[row, : vad.frames_of(wave.size)]
        np.testing.assert_allclose(own, _sequence_graph_probabilities(wave), atol=SEQUENCE_TOLERANCE)


def test_every_recording_gets_the_sequence_graph_s_probabilities_and_regions() -> None:
    """On all the repository's speech, the service's graph finds exactly the regions Silero's own graph
    finds, from probabilities within the stated tolerance."""
    paths = speech_paths()
    assert len(paths) >= 50
    for path in paths:
        wave = sf.read(path, dtype="float32")[0]
        reference = _sequence_graph_probabilities(wave)
        probs = vad.speech_probabilities(wave)
        np.testing.assert_allclose(probs, reference, atol=SEQUENCE_TOLERANCE, err_msg=str(path))
        assert vad.regions_from_probabilities(probs, wave.size) == vad.regions_from_probabilities(
            reference, wave.size
        ), path


def _speech_waves(count: int) -> list[np.ndarray]:
    return [sf.read(path, dtype="float32")[0] for path in speech_paths()[:count]]


def test_the_batched_graph_is_derived_from_silero_s_by_the_committed_script() -> None:
    pytest.importorskip("onnx")
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "derive_batched_vad.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_committed_graph_is_the_one_its_readme_names() -> None:
    readme = (VAD_DIR / "README.md").read_text(encoding="utf-8")
    graph = VAD_DIR / vad.MODEL_FILE
    assert hashlib.sha256(graph.read_bytes()).hexdigest() in readme
    assert hashlib.sha256((VAD_DIR / SEQUENCE_GRAPH).read_bytes()).hexdigest() in readme
    assert "MIT License" in (VAD_DIR / "LICENSE").read_text(encoding="utf-8")
    assert Path(vad.model_path()) == graph
