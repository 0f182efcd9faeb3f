"""The CUDA path of the engine: IO binding, length buckets, warm-up, batching (skipped without a GPU).

Run on a machine with onnxruntime-gpu and a CUDA device: `pytest -m gpu`.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from app.audio import vad
from app.core.settings import Settings
from app.engine.backend import CPU, CUDA, OnnxBackend, cuda_device_present, session_options
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import load_manifest
from tests.support.data import DEFAULT_MODEL_DIR, speech_paths

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _need_cuda() -> None:
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers() or not cuda_device_present():
        pytest.skip("no CUDAExecutionProvider with a visible CUDA device (needs onnxruntime-gpu and a GPU)")


def _speech(n: int) -> list[np.ndarray]:
    files = speech_paths()[:n]
    return [sf.read(f, dtype="float32")[0] for f in files]


def test_cuda_backend_matches_cpu_and_uses_io_binding() -> None:
    manifest = load_manifest(DEFAULT_MODEL_DIR)
    gpu = OnnxBackend(DEFAULT_MODEL_DIR, manifest, providers=["cuda"])
    cpu = OnnxBackend(DEFAULT_MODEL_DIR, manifest, providers=["cpu"])
    assert gpu.provider == CUDA
    assert cpu.provider == CPU
    waves = _speech(4)
    n = max(len(w) for w in waves)
    audio = np.zeros((len(waves), n), np.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    lengths = np.array([len(w) for w in waves], np.int64)
    on_gpu = gpu.embed(audio, lengths)
    on_cpu = cpu.embed(audio, lengths)
    assert np.abs(on_gpu - on_cpu).max() < 1e-3


def test_cuda_engine_batches_concurrent_requests_like_alone() -> None:
    settings = Settings(model_dir=DEFAULT_MODEL_DIR, providers=["cuda", "cpu"], max_wait_ms=20.0)
    waves = _speech(8)

    async def run() -> tuple[list[np.ndarray], list[np.ndarray]]:
        engine = EmbeddingEngine.from_settings(settings)
        await engine.start()
        try:
            assert engine.provider == CUDA
            together = await asyncio.gather(*(engine.embed(w) for w in waves))
            alone = [await engine.embed(w) for w in waves]
        finally:
            await engine.stop()
        return list(together), alone

    together, alone = asyncio.run(run())
    for a, b in zip(together, alone, strict=True):
        assert np.abs(a - b).max() < 1e-4


def test_speech_detection_runs_wholly_on_cuda_with_the_cpu_s_regions() -> None:
    """Every node of the VAD graph (its convolutions are matrix products) has a CUDA kernel: the session is
    built with the CPU fallback forbidden; a batch gives the CPU's probabilities and regions."""
    options = session_options(1)
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    on_gpu = vad.SpeechModel(providers=[CUDA], options=options)
    assert on_gpu.provider == CUDA
    waves = _speech(8)
    lengths = [len(w) for w in waves]
    audio = np.zeros((len(waves), max(lengths)), np.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    gpu_probs = on_gpu.probabilities(audio, lengths)
    cpu_probs = vad.SpeechModel().probabilities(audio, lengths)
    for row, n in enumerate(lengths):
        frames = vad.frames_of(n)
        assert np.abs(gpu_probs[row, :frames] - cpu_probs[row, :frames]).max() < 1e-4
        assert vad.regions_from_probabilities(gpu_probs[row, :frames], n) == vad.regions_from_probabilities(
            cpu_probs[row, :frames], n
        )
