"""The committed default model (models/default: Resemblyzer's GE2E encoder) run by ONNX Runtime on CPU.

"Same audio" for the Resemblyzer comparison: the graph gets the raw 16 kHz waveform as read from the WAV
(float32 in [-1, 1)); Resemblyzer's ``VoiceEncoder.embed_utterance`` gets that waveform after
``resemblyzer.audio.normalize_volume(wav, -30 dBFS, increase_only=True)``, i.e. ``preprocess_wav`` without
its webrtcvad ``trim_long_silences`` step, because the graph does the volume normalisation itself and
leaves silence trimming out (models/README.md says why).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import soundfile as sf

from app.core.paths import sha256_file
from app.engine.manifest import (
    AUDIO_INPUT,
    EMBEDDING_OUTPUT,
    GRAPH_FILE,
    LENGTHS_INPUT,
    ModelManifest,
    check_graph_io,
    load_manifest,
)
from tests.support.data import DEFAULT_MODEL_DIR, SPEECH_SUFFIX

Waveform = npt.NDArray[np.float32]
SAMPLE_RATE = 16000


def _pretrained_path() -> Path:
    # find_spec locates the package without importing it (importing pulls in webrtcvad).
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        pytest.skip("resemblyzer (the `reference` extra) is not installed")
    return Path(spec.origin).parent / "pretrained.pt"


def _embed(session: ort.InferenceSession, waves: list[Waveform], pad_noise: bool = False) -> np.ndarray:
    """One padded batch through the graph; ``pad_noise`` fills the padding with noise instead of zeros."""
    width = max(w.size for w in waves)
    rng = np.random.default_rng(1)
    if pad_noise:
        audio = (0.3 * rng.standard_normal((len(waves), width))).astype(np.float32)
    else:
        audio = np.zeros((len(waves), width), dtype=np.float32)
    for i, w in enumerate(waves):
        audio[i, : w.size] = w
    lengths = np.array([w.size for w in waves], dtype=np.int64)
    (out,) = session.run([EMBEDDING_OUTPUT], {AUDIO_INPUT: audio, LENGTHS_INPUT: lengths})
    return np.asarray(out)


def _eer(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the threshold where false-accept and false-reject rates are closest.

    Candidate thresholds are the midpoints between consecutive distinct scores (plus the ends), so with
    separable scores the threshold is the middle of the gap between the classes.
    """
    ordered = np.unique(scores)
    candidates = np.concatenate([[ordered[0] - 1e-6], (ordered[:-1] + ordered[1:]) / 2, [ordered[-1] + 1e-6]])
    best: tuple[float, float, float] | None = None
    for th in candidates:
        far = float(np.mean(scores[labels == 0] >= th))
        frr = float(np.mean(scores[labels == 1] < th))
        if best is None or abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2, float(th))
    assert best is not None
    return best[1], best[2]


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return load_manifest(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="module")
def session(manifest: ModelManifest) -> ort.InferenceSession:
    return ort.InferenceSession(str(DEFAULT_MODEL_DIR / GRAPH_FILE), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def waves(speech_dir: Path) -> dict[str, Waveform]:
    out: dict[str, Waveform] = {}
    for path in sorted(speech_dir.glob(f"*/*{SPEECH_SUFFIX}")):
        wav, sr = sf.read(path, dtype="float32")
        assert sr == SAMPLE_RATE
        out[path.relative_to(speech_dir).as_posix()] = wav
    assert len(out) >= 50
    return out


@pytest.fixture(scope="module")
def graph_embeddings(session: ort.InferenceSession, waves: dict[str, Waveform]) -> dict[str, np.ndarray]:
    return {name: _embed(session, [w])[0] for name, w in waves.items()}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    # Two contended cores: torch's default two threads make Resemblyzer's LSTM several times slower.
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_committed_graph_matches_manifest(manifest: ModelManifest, session: ort.InferenceSession) -> None:
    # load_manifest (fixture) already verified graph_sha256 against model.onnx.
    check_graph_io(
        manifest,
        [(i.name, i.shape) for i in session.get_inputs()],
        [(o.name, o.shape) for o in session.get_outputs()],
    )
    assert manifest.name == "resemblyzer-ge2e"
    assert manifest.architecture == "ge2e-lstm"
    assert manifest.embedding_dim == 256
    assert manifest.sample_rate == SAMPLE_RATE
    assert manifest.precision == "fp32"
    assert manifest.license == "Apache-2.0"
    assert manifest.attribution is not None
    assert "Resemblyzer" in manifest.attribution
    assert (DEFAULT_MODEL_DIR / "LICENSE").is_file()
    # A few MB: LSTM 3x256 + linear (1.4 M weights) and the 400-tap DFT basis.
    assert (DEFAULT_MODEL_DIR / GRAPH_FILE).stat().st_size < 8_000_000


def test_manifest_source_is_the_installed_pretrained_weights(manifest: ModelManifest) -> None:
    assert manifest.source_sha256 == sha256_file(_pretrained_path())


def test_window_counts_match_compute_partial_slices() -> None:
    pytest.importorskip("resemblyzer")
    torch = pytest.importorskip("torch")
    from resemblyzer import VoiceEncoder

    from app.modeling.ge2e import FRAME_STEP, window_counts

    lengths = list(range(0, 80_000, 53)) + list(range(160_000, 200_000, 37))
    counts = window_counts(torch.tensor(lengths, dtype=torch.int64)).tolist()
    for n, count in zip(lengths, counts, strict=True):
        _, mel_slices = VoiceEncoder.compute_partial_slices(n, rate=1.3, min_coverage=0.75)
        assert count == len(mel_slices), n
        assert [s.start for s in mel_slices] == [k * FRAME_STEP for k in range(count)]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_matches_resemblyzer_embed_utterance(
    waves: dict[str, Waveform], graph_embeddings: dict[str, np.ndarray]
) -> None:
    pytest.importorskip("resemblyzer")
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume
    from resemblyzer.hparams import audio_norm_target_dBFS

    encoder = VoiceEncoder("cpu", verbose=False)
    cosines = {}
    for name, wav in waves.items():
        reference = encoder.embed_utterance(normalize_volume(wav, audio_norm_target_dBFS, increase_only=True))
        cosines[name] = float(np.dot(reference, graph_embeddings[name]))
    values = np.array(list(cosines.values()))
    print(f"cosine to Resemblyzer over {values.size} files: min {values.min():.7f} mean {values.mean():.7f}")
    worst = min(cosines, key=cosines.__getitem__)
    assert values.min() >= 0.995, f"{worst}: cosine {cosines[worst]:.5f}"


def test_eer_on_shared_trials(
    speech_dir: Path, graph_embeddings: dict[str, np.ndarray], manifest: ModelManifest
) -> None:
    trials = [line.split() for line in (speech_dir / "trials.txt").read_text().splitlines() if line]
    labels = np.array([int(label) for label, _, _ in trials])
    scores = np.array([float(np.dot(graph_embeddings[a], graph_embeddings[b])) for _, a, b in trials])
    eer, threshold = _eer(labels, scores)
    print(
        f"EER {eer:.4f} at cosine {threshold:.4f} over {labels.size} trials; same-speaker min "
        f"{scores[labels == 1].min():.4f}, different-speaker max {scores[labels == 0].max():.4f}"
    )
    # Resemblyzer with its own webrtcvad trimming gets 0.5 % here; a broken front end lands far above 2 %.
    assert eer <= 0.02
    # The manifest's threshold is this EER threshold rounded to 2 decimals (its threshold_source says so).
    assert manifest.default_threshold == pytest.approx(round(threshold, 2))
    far = float(np.mean(scores[labels == 0] >= manifest.default_threshold))
    frr = float(np.mean(scores[labels == 1] < manifest.default_threshold))
    assert max(far, frr) <= 0.02


def test_batch_and_padding_invariance(session: ort.InferenceSession, waves: dict[str, Waveform]) -> None:
    names = sorted(waves, key=lambda n: waves[n].size)
    # Shortest, longest, a middle one, and a 0.9 s clip (one zero-padded window).
    picked = [waves[names[0]], waves[names[-1]], waves[names[len(names) // 2]], waves[names[3]][:14_400]]
    alone = np.concatenate([_embed(session, [w]) for w in picked])
    batched = _embed(session, picked, pad_noise=True)
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    reordered = _embed(session, picked[::-1], pad_noise=True)[::-1]
    np.testing.assert_allclose(reordered, alone, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)


def test_silence_and_empty_input_give_finite_embeddings(session: ort.InferenceSession) -> None:
    out = _embed(session, [np.zeros(SAMPLE_RATE, dtype=np.float32), np.zeros(1, dtype=np.float32)])
    assert out.shape == (2, 256)
    assert np.isfinite(out).all()
    empty = session.run(None, {AUDIO_INPUT: np.zeros((1, 0), np.float32), LENGTHS_INPUT: np.array([0])})[0]
    assert np.isfinite(empty).all()


def test_lengths_past_the_padded_width_count_as_the_width(
    session: ort.InferenceSession, waves: dict[str, Waveform]
) -> None:
    wav = next(iter(waves.values()))[None]
    too_long = np.array([wav.shape[1] + 50_000], dtype=np.int64)
    (out,) = session.run(None, {AUDIO_INPUT: wav, LENGTHS_INPUT: too_long})
    np.testing.assert_allclose(out, _embed(session, [wav[0]]), atol=1e-6)


@pytest.mark.slow
def test_reexport_gives_the_committed_embeddings(
    tmp_path: Path, session: ort.InferenceSession, manifest: ModelManifest, waves: dict[str, Waveform]
) -> None:
    torch = pytest.importorskip("torch")
    from app.export.resemblyzer_export import export_resemblyzer, load_pretrained

    pretrained = _pretrained_path()
    fresh = export_resemblyzer(pretrained, tmp_path)
    assert fresh.model_dump(exclude={"graph_sha256", "exporter", "probe"}) == manifest.model_dump(
        exclude={"graph_sha256", "exporter", "probe"}
    )
    # The self-check probe: the same audio; its references recomputed by Resemblyzer on this CPU.
    assert fresh.probe is not None
    assert manifest.probe is not None
    unversioned = {"clips", "reference_model"}  # reference_model names the torch build, as exporter does
    assert fresh.probe.model_dump(exclude=unversioned) == manifest.probe.model_dump(exclude=unversioned)
    assert fresh.probe.reference_model.startswith("resemblyzer 0.1.4 VoiceEncoder")
    for new, old in zip(fresh.probe.clips, manifest.probe.clips, strict=True):
        assert (new.start, new.end, new.source) == (old.start, old.end, old.source)
        np.testing.assert_allclose(new.reference, old.reference, atol=1e-5)
    fresh_session = ort.InferenceSession(str(tmp_path / GRAPH_FILE), providers=["CPUExecutionProvider"])
    picked = [w for _, w in sorted(waves.items())[::9]]
    committed = _embed(session, picked)
    np.testing.assert_allclose(_embed(fresh_session, picked), committed, atol=1e-4)

    model = load_pretrained(pretrained)
    width = max(w.size for w in picked)
    audio = torch.zeros(len(picked), width)
    for i, w in enumerate(picked):
        audio[i, : w.size] = torch.from_numpy(w)
    lengths = torch.tensor([w.size for w in picked], dtype=torch.int64)
    with torch.no_grad():
        eager = model(audio, lengths).numpy()
    np.testing.assert_allclose(eager, committed, atol=1e-4)


def test_fp16_export_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from app.export.resemblyzer_export import export_resemblyzer

    with pytest.raises(ValueError, match="fp16"):
        export_resemblyzer(tmp_path / "unused.pt", tmp_path, precision="fp16")
    assert not (tmp_path / GRAPH_FILE).exists()


def test_front_end_constants_match_librosa() -> None:
    pytest.importorskip("torch")
    librosa = pytest.importorskip("librosa")
    from app.modeling.ge2e import HOP, N_FFT, dft_kernel, mel_basis

    np.testing.assert_allclose(
        mel_basis(), librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=40), atol=1e-8
    )
    # The conv basis applied to frames equals librosa's centred, zero-padded STFT.
    rng = np.random.default_rng(0)
    y = rng.standard_normal(4000).astype(np.float32)
    stft = librosa.stft(y, n_fft=N_FFT, hop_length=HOP, center=True, pad_mode="constant")
    padded = np.pad(y, N_FFT // 2)
    frames = np.stack([padded[t * HOP : t * HOP + N_FFT] for t in range(stft.shape[1])])
    kernel = dft_kernel()[:, 0, :].astype(np.float64)
    parts = frames @ kernel.T  # [T, 2 * 201]
    np.testing.assert_allclose(parts[:, :201].T, stft.real, atol=1e-3)
    np.testing.assert_allclose(parts[:, 201:].T, stft.imag, atol=1e-3)
