"""Helpers shared by the API tests: settings with private key namespaces, a small real ONNX model,
audio encoders and a snapshot of everything a test namespace holds in Redis."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import redis
import soundfile as sf
from onnx import TensorProto, helper

from app.manifest import ModelManifest, sha256_file, write_manifest
from app.settings import Settings
from tests.conftest import DEFAULT_MODEL_DIR, SPEECH_DIR

TINY_DIM = 8


def build_tiny_model(model_dir: Path, name: str = "tiny-test") -> Path:
    """A small real ONNX graph with the VoxGate interface: audio [B, T], lengths [B] -> embedding [B, 8].

    The embedding is an affine map of a few loudness statistics — useless for speakers, but a real
    graph that ONNX Runtime loads and runs, so the service path is exercised without the big model.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, TINY_DIM)).astype(np.float32)
    bias = rng.standard_normal(TINY_DIM).astype(np.float32)
    nodes = [
        helper.make_node("Abs", ["audio"], ["abs"]),
        helper.make_node("ReduceMean", ["abs"], ["mean_abs"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["audio", "audio"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["mean_sq"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["len_f", "one_axis"], ["len_col"]),
        helper.make_node("Mul", ["len_col", "tiny_scale"], ["len_scaled"]),
        helper.make_node("Concat", ["mean_abs", "mean_sq", "len_scaled"], ["feats"], axis=1),
        helper.make_node("MatMul", ["feats", "weight"], ["proj"]),
        helper.make_node("Add", ["proj", "bias"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", TINY_DIM])],
        initializer=[
            helper.make_tensor("weight", TensorProto.FLOAT, [3, TINY_DIM], weight.flatten().tolist()),
            helper.make_tensor("bias", TensorProto.FLOAT, [TINY_DIM], bias.tolist()),
            helper.make_tensor("one_axis", TensorProto.INT64, [1], [1]),
            helper.make_tensor("tiny_scale", TensorProto.FLOAT, [], [1e-7]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    graph_path = model_dir / "model.onnx"
    onnx.save(model, graph_path)
    write_manifest(
        model_dir,
        ModelManifest(
            name=name,
            architecture="tiny-test",
            source="tests/api_support.py (random init)",
            graph_sha256=sha256_file(graph_path),
            embedding_dim=TINY_DIM,
            opset=17,
            default_threshold=0.5,
            threshold_source="arbitrary (test graph)",
            min_speech_seconds=0.5,
            exporter="onnx.helper",
        ),
    )
    return model_dir


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        raise FileNotFoundError(f"default model missing at {DEFAULT_MODEL_DIR} (make setup exports it)")
    return DEFAULT_MODEL_DIR


def settings_for(redis_url: str, model_dir: Path, **overrides: Any) -> Settings:
    """Settings with a private Redis namespace, so tests never see each other's keys."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_namespace": f"test-{uuid.uuid4().hex[:10]}",
        "model_dir": model_dir,
        "warmup": False,
        "intra_op_threads": 1,
        "index_sync_interval_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


def speech_files() -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.wav")) for d in sorted(SPEECH_DIR.iterdir()) if d.is_dir()}


def encode(
    samples: np.ndarray, sample_rate: int = 16000, fmt: str = "WAV", subtype: str | None = None
) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def redis_snapshot(redis_url: str, namespace: str) -> dict[bytes, bytes | None]:
    """Every key of the namespace with its serialised value: equal snapshots = nothing changed."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {key: client.dump(key) for key in sorted(client.scan_iter(match=f"{namespace}:*"))}
    finally:
        client.close()
