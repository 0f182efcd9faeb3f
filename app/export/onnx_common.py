"""Writing a model bundle: ``model.onnx`` with the fixed VoxGate interface, plus ``manifest.json``.

Every exporter (NeMo, Resemblyzer) builds a ``torch.nn.Module`` with signature
``forward(audio: float32 [B, N], lengths: int64 [B]) -> float32 [B, D]`` and hands it here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from app import __version__
from app.core.paths import sha256_file
from app.engine.manifest import (
    AUDIO_INPUT,
    EMBEDDING_OUTPUT,
    GRAPH_FILE,
    LENGTHS_INPUT,
    ModelManifest,
    write_manifest,
)

# Pinned: opset 17 has every operator the graphs use (Conv, LSTM, STFT-free DFT-as-conv, LayerNorm)
# and is supported by ONNX Runtime's CPU, CUDA and TensorRT providers.
OPSET = 17


def export_bundle(
    module: torch.nn.Module,
    out_dir: Path,
    *,
    example_seconds: tuple[float, ...] = (3.0, 2.0),
    sample_rate: int = 16000,
    **manifest_fields: Any,
) -> ModelManifest:
    """Export ``module`` to ``out_dir/model.onnx`` and write a manifest describing it.

    ``manifest_fields`` are the ModelManifest fields that only the caller knows (name, architecture,
    source, embedding_dim, default_threshold, ...); the graph hash, opset and names are filled here.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    graph_path = out_dir / GRAPH_FILE
    lengths = torch.tensor([int(s * sample_rate) for s in example_seconds], dtype=torch.int64)
    audio = torch.zeros(len(example_seconds), int(lengths.max()))
    generator = torch.Generator().manual_seed(0)
    for i, n in enumerate(lengths.tolist()):
        audio[i, :n] = 0.1 * torch.randn(n, generator=generator)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracing chatter
        torch.onnx.export(
            module,
            (audio, lengths),
            str(graph_path),
            input_names=[AUDIO_INPUT, LENGTHS_INPUT],
            output_names=[EMBEDDING_OUTPUT],
            dynamic_axes={
                AUDIO_INPUT: {0: "batch", 1: "samples"},
                LENGTHS_INPUT: {0: "batch"},
                EMBEDDING_OUTPUT: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: exact operator control, no onnxscript rewrites
        )
    onnx.checker.check_model(onnx.load(str(graph_path)))
    manifest = ModelManifest(
        graph_sha256=sha256_file(graph_path),
        opset=OPSET,
        sample_rate=sample_rate,
        exporter=f"voxgate {__version__} (torch {torch.__version__})",
        **manifest_fields,
    )
    write_manifest(out_dir, manifest)
    return manifest
