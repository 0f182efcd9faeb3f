"""The ONNX Runtime backend and the engine on real sessions: provider choice, the graph contract checked
at load, padding/bucketing invariance, and batched == alone for random concurrent mixes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from prometheus_client import CollectorRegistry

from app.core.settings import Settings
from app.engine.backend import CPU, CUDA, OnnxBackend, ProviderUnavailable, resolve_providers
from app.engine.config import BatcherConfig, EngineConfig
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import MANIFEST_FILE, ManifestError, load_manifest
from app.engine.metrics import EngineMetrics
from app.engine.segments import SegmentPolicy, embed_waveforms
from tests.support.data import DEFAULT_MODEL_DIR, SAMPLE_RATE, speech_paths
from tests.support.models import TOY_DIM, stats_graph, toy_waveform, write_model_dir

SR = SAMPLE_RATE
TOL = 1e-4
HAS_CUDA_EP = CUDA in ort.get_available_providers()


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy-model")
    write_model_dir(out, segment_seconds=3.0, overlap_seconds=0.5)
    return out


@pytest.fixture(scope="module")
def toy_backend(toy_dir: Path) -> OnnxBackend:
    return OnnxBackend(toy_dir, load_manifest(toy_dir), providers=["cpu"], intra_op_threads=1)


def settings_for(model_dir: Path, **overrides: object) -> Settings:
    return Settings(model_dir=model_dir, **overrides)  # type: ignore[arg-type]


# --- providers ------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime build has CUDA")
def test_auto_picks_cpu_without_cuda(toy_dir: Path) -> None:
    assert resolve_providers("auto") == [CPU]
    engine = EmbeddingEngine.from_settings(settings_for(toy_dir), registry=CollectorRegistry())
    assert engine.provider == "CPUExecutionProvider"


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime build has CUDA")
def test_preference_order_skips_what_is_missing(toy_dir: Path) -> None:
    assert resolve_providers(["tensorrt", "cuda", "cpu"]) == [CPU]
    with pytest.raises(ProviderUnavailable, match="cuda"):
        EmbeddingEngine.from_settings(settings_for(toy_dir, providers=["cuda"]))


# --- the contract, checked at load ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("graph_kwargs", "manifest_dim", "message"),
    [
        ({"input_names": ("wave", "lengths")}, TOY_DIM, "inputs"),
        ({"output_name": "emb"}, TOY_DIM, "outputs"),
        ({}, TOY_DIM + 1, "dim"),
        ({"lengths_type": TensorProto.INT32}, TOY_DIM, "int64"),
    ],
)
def test_graph_disagreeing_with_manifest_fails_at_load(
    tmp_path: Path, graph_kwargs: dict[str, object], manifest_dim: int, message: str
) -> None:
    write_model_dir(tmp_path, stats_graph(TOY_DIM, **graph_kwargs), dim=manifest_dim)  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match=message):
        EmbeddingEngine.from_settings(settings_for(tmp_path))


def test_graph_hash_mismatch_fails_at_load(tmp_path: Path) -> None:
    write_model_dir(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["graph_sha256"] = "f" * 64
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="sha256"):
        EmbeddingEngine.from_settings(settings_for(tmp_path))


def test_missing_model_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        EmbeddingEngine.from_settings(settings_for(tmp_path))


# --- backend numerics -----------------------------------------------------------------------------
def test_bucketing_and_padding_do_not_change_embeddings(toy_backend: OnnxBackend) -> None:
    waves = [toy_waveform(s, seed=i) for i, s in enumerate((0.37, 1.0, 2.71))]
    alone = [toy_backend.embed(w[None, :], np.array([w.size], np.int64))[0] for w in waves]
    longest = max(w.size for w in waves)
    assert toy_backend.bucket(longest) % toy_backend.bucket_step == 0
    for extra in (0, 17, SR):  # unbucketed width, odd width, a whole second of padding
        batch = np.zeros((len(waves), longest + extra), np.float32)
        for i, w in enumerate(waves):
            batch[i, : w.size] = w
        out = toy_backend.embed(batch, np.array([w.size for w in waves], np.int64))
        assert out.shape == (3, TOY_DIM)
        for got, want in zip(out, alone, strict=True):
            np.testing.assert_allclose(got, want, atol=TOL)


def test_warmup_covers_smallest_and_largest_bucket(toy_backend: OnnxBackend) -> None:
    shapes = toy_backend.warmup_shapes(max_batch_size=32, max_samples=3 * SR, max_batch_samples=240 * SR)
    lengths = {n for _, n in shapes}
    assert min(lengths) == toy_backend.bucket_step
    assert max(lengths) == toy_backend.bucket(3 * SR)
    assert toy_backend.warmup(max_batch_size=32, max_samples=3 * SR, max_batch_samples=240 * SR) == len(
        shapes
    )


# --- engine on a real session: batched == alone ---------------------------------------------------
def run_engine(
    backend: OnnxBackend, waves: list[npt.NDArray[np.float32]], **config: float
) -> list[np.ndarray]:
    cfg: dict[str, float] = {"max_batch_size": 8, "max_batch_samples": 60 * SR, "max_wait_s": 0.005}
    cfg.update(config)
    engine = EmbeddingEngine(
        backend,
        backend.manifest,
        config=BatcherConfig(**cfg),  # type: ignore[arg-type]
        warmup=False,
        metrics=EngineMetrics(CollectorRegistry()),
    )

    async def scenario() -> list[np.ndarray]:
        await engine.start()
        try:
            return list(await asyncio.gather(*(engine.embed(w) for w in waves)))
        finally:
            await engine.stop()

    return asyncio.run(scenario())


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    durations=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=12),
    seed=st.integers(0, 10_000),
    max_batch_size=st.integers(1, 8),
    max_wait_ms=st.sampled_from([0.0, 2.0, 20.0]),
)
def test_concurrent_random_mix_matches_each_alone(
    toy_backend: OnnxBackend, durations: list[float], seed: int, max_batch_size: int, max_wait_ms: float
) -> None:
    waves = [toy_waveform(d, seed=seed + i) for i, d in enumerate(durations)]
    policy = SegmentPolicy.from_manifest(toy_backend.manifest)
    alone = [embed_waveforms(toy_backend, [w], policy)[0] for w in waves]
    batched = run_engine(toy_backend, waves, max_batch_size=max_batch_size, max_wait_s=max_wait_ms / 1000)
    for got, want in zip(batched, alone, strict=True):
        assert got.shape == (TOY_DIM,)
        assert np.abs(got - want).max() <= TOL


def test_engine_and_cli_helper_agree_on_long_audio(toy_backend: OnnxBackend) -> None:
    # 8 s > segment_seconds: segmented, weighted by speech; both paths share app.engine.segments.
    waves = [toy_waveform(8.0, seed=3), toy_waveform(1.5, seed=4)]
    policy = SegmentPolicy.from_manifest(toy_backend.manifest)
    together = embed_waveforms(toy_backend, waves, policy, max_batch_size=4)
    via_engine = run_engine(toy_backend, waves)
    for a, b in zip(together, via_engine, strict=True):
        np.testing.assert_allclose(a, b, atol=TOL)
    # Segmenting really happened: the whole 8 s in one piece is a different vector.
    whole = toy_backend.embed(waves[0][None, :], np.array([waves[0].size], np.int64))[0]
    assert np.abs(whole - together[0]).max() > 1e-3


def test_engine_from_settings_starts_warm_and_reports_provider(toy_dir: Path) -> None:
    registry = CollectorRegistry()
    engine = EmbeddingEngine.from_settings(settings_for(toy_dir, max_wait_ms=1.0), registry=registry)

    async def scenario() -> np.ndarray:
        await engine.start()
        assert engine.ready
        out = await engine.embed(toy_waveform(2.0, seed=9))
        await engine.stop()
        assert not engine.ready
        return out

    out = asyncio.run(scenario())
    assert out.shape == (TOY_DIM,)
    assert engine.provider == CPU or HAS_CUDA_EP
    assert registry.get_sample_value("voxgate_engine_requests_total", {"outcome": "ok"}) == 1


# --- the real default model, when it has been exported --------------------------------------------
def speech_files(limit: int, step: int = 5) -> list[npt.NDArray[np.float32]]:
    waves = []
    for path in speech_paths()[::step][:limit]:
        data, rate = sf.read(path, dtype="float32")
        assert rate == SR
        waves.append(np.asarray(data, dtype=np.float32))
    return waves


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.onnx").is_file(), reason="models/default not exported")
def test_default_model_batched_matches_alone() -> None:
    backend = OnnxBackend.from_config(EngineConfig(model_dir=DEFAULT_MODEL_DIR))
    waves = speech_files(6)
    policy = SegmentPolicy.from_manifest(backend.manifest)
    alone = [embed_waveforms(backend, [w], policy)[0] for w in waves]
    batched = run_engine(backend, waves, max_batch_size=8, max_wait_s=0.05)
    for got, want in zip(batched, alone, strict=True):
        assert got.shape == (backend.dim,)
        assert np.abs(got - want).max() <= TOL


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.onnx").is_file(), reason="models/default not exported")
def test_default_model_long_audio_is_segmented_like_the_cli_helper() -> None:
    backend = OnnxBackend.from_config(EngineConfig(model_dir=DEFAULT_MODEL_DIR))
    seg = backend.manifest.segment_seconds
    if seg is None:
        pytest.skip("default model does not segment")
    waves = speech_files(20, step=1)
    long = np.concatenate(waves)[: int((seg + 4.5) * SR)]
    assert long.size > seg * SR  # at least two segments
    policy = SegmentPolicy.from_manifest(backend.manifest)
    want = embed_waveforms(backend, [long], policy)[0]
    got, short = run_engine(backend, [long, waves[0]])
    assert np.abs(got - want).max() <= TOL
    assert np.abs(short - embed_waveforms(backend, [waves[0]], policy)[0]).max() <= TOL
