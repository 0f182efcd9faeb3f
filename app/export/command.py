"""``voxgate export``: dispatch to the exporter for each source kind (torch needed from here on)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _export_float(args: argparse.Namespace, out: Path, precision: str) -> None:
    if args.resemblyzer:
        from app.export.resemblyzer_export import export_resemblyzer

        export_resemblyzer(args.resemblyzer, out, precision=precision, name=args.name)
    elif args.nemo:
        from app.export.nemo_export import export_nemo_checkpoint

        export_nemo_checkpoint(args.nemo, out, precision=precision, name=args.name)
    elif args.pretrained:
        from app.export.pretrained import export_pretrained

        export_pretrained(args.pretrained, out, precision=precision, cache_dir=args.cache_dir)
    else:
        from app.export.nemo_export import export_random_init

        export_random_init(args.arch, out, precision=precision, name=args.name)


def _export_int8(args: argparse.Namespace) -> int:
    from app.export.quantize import QuantizationError, load_recordings, quantize_bundle, split_calibration

    try:
        recordings = load_recordings(args.calibration_audio)
        print(
            f"calibration audio: {len(recordings)} usable recordings under {args.calibration_audio}",
            file=sys.stderr,
        )
        heldout = None
        if args.heldout_audio is not None:
            heldout = load_recordings(args.heldout_audio)
            print(
                f"held-out audio: {len(heldout)} usable recordings under {args.heldout_audio}",
                file=sys.stderr,
            )
        # Enough usable recordings? Checked before the float32 export, which takes a while.
        split = split_calibration(recordings, heldout)
        with tempfile.TemporaryDirectory(prefix="voxgate-fp32-") as tmp:
            _export_float(args, Path(tmp), "fp32")
            manifest = quantize_bundle(Path(tmp), args.out, split, min_cosine=args.min_cosine)
    except QuantizationError as exc:
        print(f"voxgate export: {exc}", file=sys.stderr)
        return 1
    info = manifest.quantization
    assert info is not None
    held = f"{info.heldout_recordings} held-out recordings of " + (
        f"speakers {', '.join(info.heldout_speakers)}"
        if info.heldout_speakers
        else "the calibration speakers"
    )
    print(
        f"int8 ({info.scheme}): {info.quantized_nodes} convolutions quantised; cosine to fp32 on {held}: "
        f"min {info.min_cosine_to_fp32:.6f}, mean {info.mean_cosine_to_fp32:.6f}; worst by condition: "
        + ", ".join(f"{name} {value:.6f}" for name, value in info.min_cosine_by_condition.items())
        + f"; largest score change {info.max_score_change:.4f}"
        + (f"; kept in float32: {', '.join(info.float32_nodes)}" if info.float32_nodes else "")
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    if args.arch and not args.random_init:
        print("voxgate export: --arch needs --random-init (no weights otherwise)", file=sys.stderr)
        return 2
    if args.random_init and not args.arch:
        print("voxgate export: --random-init needs --arch", file=sys.stderr)
        return 2
    if args.precision == "int8":
        if args.resemblyzer:
            print(
                "voxgate export: int8 is for the convolutional NeMo models; the Resemblyzer GE2E graph "
                "(an LSTM) is exported in fp32 only",
                file=sys.stderr,
            )
            return 2
        if args.calibration_audio is None:
            print(
                "voxgate export: --precision int8 needs --calibration-audio DIR (a few dozen speech "
                "recordings like the ones you will serve)",
                file=sys.stderr,
            )
            return 2
        code = _export_int8(args)
    else:
        for given, option in (
            (args.calibration_audio, "--calibration-audio"),
            (args.heldout_audio, "--heldout-audio"),
        ):
            if given is not None:
                print(f"voxgate export: {option} is only used with --precision int8", file=sys.stderr)
                return 2
        _export_float(args, args.out, args.precision)
        code = 0
    if code == 0:
        print(f"wrote {args.out}/model.onnx and {args.out}/manifest.json")
    return code
