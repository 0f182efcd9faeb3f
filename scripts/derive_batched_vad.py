"""Derive ``app/assets/vad/silero_vad_16k_batched.onnx`` from Silero's ``silero_vad_16k_sequence.onnx``.

The sequence graph runs T frames of ONE recording per call: the frames are the convolutions' batch and
the LSTM sees them as a sequence of length T with batch 1. The derived graph takes B recordings at once
(``input`` [B*T, 576], frames of recording b at rows b*T..b*T+T-1; ``h``/``c`` [1, B, 128]) and gives
``speech_probs`` [B, T], in two steps:

1. ``batch_over_recordings``: two reshapes change, so every number is computed as before:
   * the transpose that turns the encoder's [T, 128, 1] into the LSTM's [T, 1, 128] becomes a reshape
     to [B, T, 128] (B read from ``h``) and a transpose to [T, B, 128]: the LSTM runs B sequences;
   * the last reshape gives [B, T] instead of [T].
2. ``convolutions_as_products``: each frame's convolutions (the STFT's, four encoder layers and the output
   layer) become one matrix product over all frames of the call, on the same weights. ONNX Runtime's CPU
   convolution runs one small product per frame (a frame has only 4, 2 or 1 time steps): one product
   over all of them is 3x less CPU. The frames are kept channels-last ([frames, time, channels]); a
   kernel-3 layer takes its three taps as slices of the time-padded input, side by side ("im2col").
   Only the order of the additions changes: probabilities within 2e-5 of the sequence graph's.

Needs the ``onnx`` package (the export extra). Usage:  python scripts/derive_batched_vad.py [--check]
(--check: exit 1 unless the committed file is what this script derives).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

VAD_DIR = Path(__file__).resolve().parents[1] / "app" / "assets" / "vad"
SOURCE = VAD_DIR / "silero_vad_16k_sequence.onnx"
TARGET = VAD_DIR / "silero_vad_16k_batched.onnx"
LSTM_INPUT = "/Transpose_output_0"  # the sequence graph's [T, 1, 128] LSTM input
ENCODER_OUTPUT = "/Relu_3_output_0"  # [frames, 128, 1]: the encoder's last output
LSTM_OUTPUT = "/Relu_4_output_0"  # [T, B, 128]: the LSTM's output after its ReLU
HIDDEN = 128
HOP = 128  # the STFT's stride; its window is 2 * HOP
STFT_STEPS = 4  # windows per frame that the graph keeps (Silero's STFT makes 5 and drops the first)
ENCODER_STRIDES = (1, 2, 2, 1)


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))


def batch_over_recordings(source: onnx.ModelProto) -> onnx.ModelProto:
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


class _Builder:
    """New nodes and their constant inputs (as initializers), named under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def weight(self, name: str, values: npt.ArrayLike) -> str:
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(values), self.prefix + name))
        return self.prefix + name

    def ints(self, name: str, values: list[int]) -> str:
        return self.weight(name, np.array(values, np.int64))

    def op(self, op_type: str, inputs: list[str], output: str, **attributes: Any) -> str:
        name = output if output.startswith("/") else self.prefix + output
        self.nodes.append(helper.make_node(op_type, inputs, [name], **attributes))
        return name


def convolutions_as_products(batched: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(batched)
    graph = model.graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    b = _Builder("/products/")
    # STFT. The sequence graph reflect-pads a frame [576] by 128 each side, convolves windows of 256 at
    # stride 128 and drops the first window: the windows it keeps read the frame and the first 64
    # samples of its right reflection, i.e. 5 blocks of 128, window k = blocks k and k + 1.
    padded = b.op("Pad", ["input", b.ints("stft_pads", [0, 0, 0, HOP // 2])], "padded", mode="reflect")
    blocks = b.op("Reshape", [padded, b.ints("blocks_shape", [-1, STFT_STEPS + 1, HOP])], "blocks")
    zero, steps, axis1 = b.ints("zero", [0]), b.ints("steps", [STFT_STEPS]), b.ints("axis1", [1])
    first = b.op("Slice", [blocks, zero, steps, axis1], "first_halves")
    second = b.op(
        "Slice", [blocks, b.ints("one", [1]), b.ints("last", [STFT_STEPS + 1]), axis1], "second_halves"
    )
    windows = b.op("Concat", [first, second], "windows", axis=2)  # [N, 4, 256]
    basis = weights["stft.forward_basis_buffer"][:, 0, :]  # [258, 256]: real rows, then imaginary rows
    bins = basis.shape[0] // 2
    spectrum = b.op("MatMul", [windows, b.weight("stft_basis", basis.T)], "spectrum")  # [N, 4, 258]
    axis2, half = b.ints("axis2", [2]), b.ints("half", [bins])
    real = b.op("Slice", [spectrum, zero, half, axis2], "real")
    imaginary = b.op("Slice", [spectrum, half, b.ints("all_bins", [2 * bins]), axis2], "imaginary")
    power = b.op(
        "Add",
        [b.op("Mul", [real, real], "real_squared"), b.op("Mul", [imaginary, imaginary], "imaginary_squared")],
        "power",
    )
    x = b.op("Sqrt", [power], "magnitude")  # [N, 4, 129]
    steps_in = STFT_STEPS
    for layer, stride in enumerate(ENCODER_STRIDES):
        w = weights[f"encoder.{layer}.weight"]  # [out, in, 3], padding 1
        out_channels, _, kernel = w.shape
        name = f"encoder{layer}_"
        x = b.op("Pad", [x, b.ints(name + "pads", [0, 1, 0, 0, 1, 0])], name + "padded")
        steps_out = (steps_in + 2 - kernel) // stride + 1
        step = b.ints(name + "stride", [stride])
        taps = []
        for j in range(kernel):  # tap j of output step t reads padded step j + stride * t
            begin, end = (
                b.ints(f"{name}from{j}", [j]),
                b.ints(f"{name}to{j}", [j + stride * (steps_out - 1) + 1]),
            )
            taps.append(b.op("Slice", [x, begin, end, axis1, step], f"{name}tap{j}"))
        x = b.op("Concat", taps, name + "taps", axis=2)  # [N, steps_out, 3 * in]
        product = b.op(
            "MatMul",
            [x, b.weight(name + "weight", w.transpose(2, 1, 0).reshape(-1, out_channels))],
            name + "product",
        )
        biased = b.op(
            "Add", [product, b.weight(name + "bias", weights[f"encoder.{layer}.bias"])], name + "biased"
        )
        x = b.op("Relu", [biased], ENCODER_OUTPUT if layer == len(ENCODER_STRIDES) - 1 else name + "out")
        steps_in = steps_out
    if steps_in != 1:
        raise ValueError(f"the encoder should end with one step per frame, not {steps_in}")
    # [N, 1, 128] has the order of the sequence graph's [N, 128, 1]: the batched reshape after it holds.
    nodes = list(graph.node)
    (start,) = [i for i, n in enumerate(nodes) if n.output[0] == "/batched/h_shape"]
    middle = nodes[start:]
    # The output layer (128 -> 1 per frame, then a sigmoid) on the LSTM's [T, B, 128], then [B, T].
    (last,) = [n for n in middle if n.output[0] == "speech_probs"]
    replaced = {"/Transpose_1_output_0", "/output/Conv_output_0", "/Sigmoid_output_0", "speech_probs"}
    middle = [n for n in middle if n.output[0] not in replaced]
    front = len(b.nodes)
    output_weight = b.weight("output_weight", weights["output.weight"][:, :, 0].T)  # [128, 1]
    product = b.op("MatMul", [LSTM_OUTPUT, output_weight], "output_product")
    logit = b.op("Add", [product, b.weight("output_bias", weights["output.bias"])], "logit")
    probability = b.op("Sigmoid", [logit], "probability")
    last.input[0] = b.op("Transpose", [probability], "by_recording", perm=[1, 0, 2])
    nodes = b.nodes[:front] + middle + b.nodes[front:] + [last]
    used = {name for n in nodes for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + b.weights)
    onnx.checker.check_model(model)
    return model


def derive(source: onnx.ModelProto) -> onnx.ModelProto:
    return convolutions_as_products(batch_over_recordings(source))


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
