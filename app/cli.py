"""The ``voxgate`` command: ``serve``, ``export``, ``embed`` and ``selfcheck``.

Each sub-command imports its implementation lazily, so ``voxgate serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

PRETRAINED_NAMES = ("titanet_large", "titanet_small", "ecapa_tdnn", "speakerverification_speakernet")
RANDOM_ARCHS = ("titanet-large", "titanet-medium", "titanet-small", "ecapa_tdnn", "speakernet")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced later)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Speaker verification service.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="bind address (default: settings, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: settings, 8000)")
    serve.add_argument("--model", type=Path, help="model directory (default: models/default)")

    export = sub.add_parser("export", help="export a speaker model to an ONNX graph + manifest")
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
        help="int8: speech recordings (WAV/FLAC/OGG/MP3, searched recursively) to calibrate on; "
        "every fourth is held out to measure accuracy",
    )
    export.add_argument(
        "--min-cosine",
        type=float,
        default=0.995,
        help="int8: fail unless every held-out recording's embedding has at least this cosine to the "
        "float32 graph's (default 0.995); the most sensitive convolutions stay float32 until it does",
    )
    export.add_argument("--cache-dir", type=Path, help="download cache for --pretrained")
    export.add_argument("--name", help="model name written to the manifest (default: derived)")

    embed = sub.add_parser("embed", help="print embeddings of audio files as JSON lines")
    embed.add_argument("--model", type=Path, help="model directory (default: models/default)")
    embed.add_argument("files", nargs="+", type=Path)

    selfcheck = sub.add_parser(
        "selfcheck",
        help="check that this host computes what the model's graph computed at export (exit 0/1)",
        description="Embed the bundle's probe on the execution provider the service would use and compare "
        "with the probe's reference embeddings, as `voxgate serve` does before it becomes ready.",
    )
    selfcheck.add_argument("--model", type=Path, help="model directory (default: models/default)")
    selfcheck.add_argument(
        "--providers",
        metavar="LIST",
        help='execution providers as VOXGATE_PROVIDERS takes them ("cuda,cpu", "auto", ...); '
        "default: the settings",
    )
    selfcheck.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from app.config_errors import InvalidSettings, load_settings

        try:
            load_settings()  # fail fast: one readable line per bad variable, no traceback
        except InvalidSettings as exc:
            print(f"voxgate: invalid settings\n{exc}", file=sys.stderr)
            return 2
        from app.server import serve

        return serve(host=args.host, port=args.port, model_dir=args.model)
    if args.command == "export":
        from app.export.command import run_export

        # Progress of long exports (downloads, int8 calibration and sensitivity passes) on stderr;
        # only VoxGate's own loggers, not the chatter of torch / onnxruntime.
        app_log = logging.getLogger("app")
        if not any(h.get_name() == "voxgate-export" for h in app_log.handlers):
            handler = _StderrHandler()
            handler.set_name("voxgate-export")
            handler.setFormatter(logging.Formatter("%(message)s"))
            app_log.addHandler(handler)
        app_log.setLevel(logging.INFO)

        return run_export(args)
    if args.command == "embed":
        from app.embed_command import run_embed

        return run_embed(model_dir=args.model, files=args.files)
    if args.command == "selfcheck":
        from app.selfcheck_command import run_selfcheck_command

        return run_selfcheck_command(model_dir=args.model, providers=args.providers, as_json=args.json)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
