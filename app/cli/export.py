"""``voxgate export``: a speaker model to an ONNX graph, manifest and probe (``app.export``); the exporters
need torch, imported only once this command runs."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

PRETRAINED_NAMES = ("titanet_large", "titanet_small", "ecapa_tdnn", "speakerverification_speakernet")
RANDOM_ARCHS = ("titanet-large", "titanet-medium", "titanet-small", "ecapa_tdnn", "speakernet")


def add_parser(sub: Any) -> None:
    export = sub.add_parser("export", help="export a speaker model to an ONNX graph + manifest")
    export.set_defaults(run=run)
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--nemo", type=Path, metavar="FILE.nemo", help="a NeMo checkpoint")
    source.add_argument("--pretrained", choices=PRETRAINED_NAMES, help="download a NeMo checkpoint")
    source.add_argument("--arch", choices=RANDOM_ARCHS, help="build an untrained model (with --random-init)")
    source.add_argument("--resemblyzer", type=Path, metavar="pretrained.pt", help="Resemblyzer GE2E weights")
    export.add_argument("--random-init", action="store_true", help="with --arch: random weights")
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="fp16: GPU graphs; int8: CPU graphs, needs --calibration-audio (NeMo models only)",
    )
    export.add_argument(
        "--calibration-audio",
        type=Path,
        metavar="DIR",
        help="int8: speech recordings (WAV/FLAC/OGG/MP3, searched recursively), one folder per speaker; "
        "every fourth speaker is held out to measure accuracy (without --heldout-audio)",
    )
    export.add_argument(
        "--heldout-audio",
        type=Path,
        metavar="DIR",
        help="int8: speech never used for calibration (other speakers, ideally another corpus or "
        "recording condition) to measure accuracy on; then every --calibration-audio speaker calibrates",
    )
    export.add_argument(
        "--min-cosine",
        type=float,
        default=0.995,
        help="int8: fail unless every held-out recording's embedding, as recorded, in the telephone band, "
        "20 dB quieter, amplified until clipped and with noise at 10 dB SNR, has at least this cosine to "
        "the float32 graph's (default 0.995); the most sensitive convolutions stay float32 until it does",
    )
    export.add_argument("--cache-dir", type=Path, help="download cache for --pretrained")
    export.add_argument("--name", help="model name written to the manifest (default: derived)")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced later)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _log_progress() -> None:
    """Progress of long exports (downloads, int8 calibration and sensitivity passes) on stderr; only
    VoxGate's own loggers, not the chatter of torch / onnxruntime."""
    app_log = logging.getLogger("app")
    if not any(h.get_name() == "voxgate-export" for h in app_log.handlers):
        handler = _StderrHandler()
        handler.set_name("voxgate-export")
        handler.setFormatter(logging.Formatter("%(message)s"))
        app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)


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


def run(args: argparse.Namespace) -> int:
    _log_progress()
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
