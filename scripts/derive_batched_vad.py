"""Derive ``app/assets/vad/silero_vad_16k_batched.onnx`` from Silero's ``silero_vad_16k_sequence.onnx``.

The sequence graph runs T frames of ONE recording per call: the frames are the convolutions' batch and
the LSTM sees them as a sequence of length T with batch 1. The derived graph takes B recordings at once
(``input`` [B*T, 576], frames of recording b at rows b*T..b*T+T-1; ``h``/``c`` [1, B, 128]) and gives
``speech_probs`` [B, T]: two nodes change, nothing else, so every number is computed as before.

* the transpose that turns the encoder's [T, 128, 1] into the LSTM's [T, 1, 128] becomes a reshape to
  [B, T, 128] (B read from ``h``) and a transpose to [T, B, 128]: the LSTM runs B sequences;
* the last reshape gives [B, T] instead of [T].

Needs the ``onnx`` package (the export extra). Usage:  python scripts/derive_batched_vad.py [--check]
(--check: exit 1 unless the committed file is what this script derives).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

VAD_DIR = Path(__file__).resolve().parents[1] / "app" / "assets" / "vad"
SOURCE = VAD_DIR / "silero_vad_16k_sequence.onnx"
TARGET = VAD_DIR / "silero_vad_16k_batched.onnx"
LSTM_INPUT = "/Transpose_output_0"  # the sequence graph's [T, 1, 128] LSTM input
HIDDEN = 128


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))


def derive(source: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(source)
    graph = model.graph
    nodes = list(graph.node)
    (at,) = [i for i, n in enumerate(nodes) if n.output[0] == LSTM_INPUT]
    encoder_out = nodes[at].input[0]  # [B*T, 128, 1]
    nodes[at : at + 1] = [
        helper.make_node("Shape", ["h"], ["/batched/h_shape"]),
        _const("/batched/one", [1]),
        _const("/batched/two", [2]),
        helper.make_node("Slice", ["/batched/h_shape", "/batched/one", "/batched/two"], ["/batched/B"]),
        _const("/batched/frames_hidden", [-1, HIDDEN]),
        helper.make_node("Concat", ["/batched/B", "/batched/frames_hidden"], ["/batched/bth"], axis=0),
        helper.make_node("Reshape", [encoder_out, "/batched/bth"], ["/batched/by_recording"]),
        helper.make_node("Transpose", ["/batched/by_recording"], [LSTM_INPUT], perm=[1, 0, 2]),
    ]
    (last,) = [n for n in nodes if n.output[0] == "speech_probs"]
    nodes.remove(last)
    nodes += [
        _const("/batched/all_frames", [-1]),
        helper.make_node("Concat", ["/batched/B", "/batched/all_frames"], ["/batched/bt"], axis=0),
    ]
    last.input[1] = "/batched/bt"
    nodes.append(last)
    # The sequence graph's own [-1] shape constant is no longer used.
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] == "/Constant_output_0")]
    del graph.node[:]
    graph.node.extend(nodes)
    dims = {i.name: i for i in [*graph.input, *graph.output]}
    dims["input"].type.tensor_type.shape.dim[0].dim_param = "batch_x_frames"
    for name in ("h", "c", "hn", "cn"):
        dims[name].type.tensor_type.shape.dim[1].dim_param = "batch"
    probs = dims["speech_probs"].type.tensor_type.shape
    del probs.dim[:]
    probs.dim.add().dim_param = "batch"
    probs.dim.add().dim_param = "frames"
    onnx.checker.check_model(model)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead")
    args = parser.parse_args()
    derived = derive(onnx.load(SOURCE)).SerializeToString(deterministic=True)
    if args.check:
        same = TARGET.is_file() and TARGET.read_bytes() == derived
        print(f"{TARGET}: {'as derived' if same else 'differs from what the script derives'}")
        return 0 if same else 1
    TARGET.write_bytes(derived)
    print(f"wrote {TARGET} ({len(derived)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
