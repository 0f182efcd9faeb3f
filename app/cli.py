"""The ``voxgate`` command: ``serve``, ``export``, ``embed``, ``selfcheck``, the operator commands, and
``eval`` / ``calibrate`` / ``cohort build`` (accuracy).

Each sub-command imports its implementation lazily, so ``voxgate serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from app.paths import unwritable

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
    _add_admin_parsers(sub)
    _add_accuracy_parsers(sub)
    return parser


# --- argument types: a value that cannot mean anything is refused by the parser, in one line --------------
def _rate(text: str) -> float:
    """A false-accept rate: a fraction strictly between 0 and 1 (0.01 = 1 %)."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate strictly between 0 and 1 (0.01 = 1 %)")
    return value


def _seconds(text: str) -> float:
    value = _number(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration >= 0 s")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _writable_file(text: str) -> Path:
    """An output file that can be written, checked before minutes of embedding."""
    if (why := unwritable(Path(text))) is not None:
        raise argparse.ArgumentTypeError(why)
    return Path(text)


def _add_accuracy_parsers(sub: Any) -> None:
    """Measuring accuracy on labelled speech (app.accuracy_commands)."""
    trials_help = "trials, one per line: '1|0 path_a path_b' (1 = same speaker)"
    root_help = "folder the trial paths are relative to (default: the trials file's folder)"
    gate_help = "net speech a file needs (default: the service's minimum, settings and manifest); 0 = none"
    ev = sub.add_parser(
        "eval",
        help="EER, minDCF, FRR at FAR and refusals of a model on labelled trials (as the service scores)",
    )
    ev.add_argument("--trials", type=Path, required=True, metavar="FILE", help=trials_help)
    ev.add_argument("--root", type=Path, metavar="DIR", help=root_help)
    ev.add_argument("--model", type=Path, help="model directory (default: models/default)")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ev.add_argument("--plot", type=_writable_file, metavar="FILE.png", help="DET curve and score histograms")
    ev.add_argument("--asnorm", action="store_true", help="also AS-Norm scores (the model's cohort)")
    ev.add_argument("--min-speech", type=_seconds, metavar="SECONDS", help=gate_help)
    ev.add_argument("--scores", type=_writable_file, metavar="FILE.tsv", help="write every trial's scores")
    ev.add_argument(
        "--drop-non-speech",
        action="store_true",
        help="embed only the VAD's speech regions (to measure whether the model should)",
    )
    cal = sub.add_parser(
        "calibrate",
        help="measure a threshold (and an LLR calibration) on trials and write it into the model's manifest",
    )
    cal.add_argument("--trials", type=Path, required=True, metavar="FILE", help=trials_help)
    cal.add_argument("--root", type=Path, metavar="DIR", help=root_help)
    cal.add_argument("--model", type=Path, required=True, help="model directory (its manifest is updated)")
    goal = cal.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-far", type=_rate, metavar="RATE", help="threshold for this false-accept rate (0 < RATE < 1)"
    )
    goal.add_argument("--eer", action="store_true", help="threshold at the equal error rate")
    cal.add_argument("--asnorm", action="store_true", help="calibrate AS-Norm scores (the model's cohort)")
    cal.add_argument("--min-speech", type=_seconds, metavar="SECONDS", help=gate_help)
    cal.add_argument("--json", action="store_true")
    cohort = sub.add_parser("cohort", help="the AS-Norm cohort of a model").add_subparsers(
        dest="cohort_command", required=True
    )
    build = cohort.add_parser(
        "build", help="embed one folder per speaker and store their mean embeddings with the model"
    )
    build.add_argument("--root", type=Path, required=True, metavar="DIR", help="one sub-folder per speaker")
    build.add_argument("--model", type=Path, required=True, help="model directory (cohort.npy is written)")
    build.add_argument(
        "--top-n", type=_at_least_one, default=100, help="cohort scores AS-Norm averages (default 100)"
    )
    build.add_argument(
        "--min-files", type=_at_least_one, default=1, help="recordings a speaker needs (default 1)"
    )
    build.add_argument("--json", action="store_true")


def _add_admin_parsers(sub: Any) -> None:
    """Operator commands on the service's Redis (app.admin)."""
    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="a new key for a tenant (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", help="a label for people (e.g. which client uses it)")
    create.add_argument(
        "--rate", type=float, help="requests per second (default: VOXGATE_RATE_LIMIT_RPS; 0 = none)"
    )
    create.add_argument("--burst", type=int, help="requests at once (default: VOXGATE_RATE_LIMIT_BURST)")
    create.add_argument("--json", action="store_true")
    listing = keys.add_parser("list", help="key ids, tenants, labels, limits, times (never a secret)")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke", help="revoke a key (at once, on every replica)")
    revoke.add_argument("key_id")

    audit = sub.add_parser("audit", help="a tenant's audit trail (enrollments, deletions, refusals)")
    audit.add_argument(
        "--tenant", required=True, help="tenant, or _unauthenticated for requests without a valid key"
    )
    audit.add_argument("--since", help="ISO date/time or a duration (90m, 12h, 7d)")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--json", action="store_true")

    tenants = sub.add_parser("tenants", help="list tenants, or erase one").add_subparsers(
        dest="tenants_command", required=True
    )
    tenants.add_parser("list", help="tenants with stored voiceprints")
    erase = tenants.add_parser("erase", help="delete a tenant's data keys (crypto-erasure), data and keys")
    erase.add_argument("tenant")
    erase.add_argument("--yes", action="store_true", help="really erase")

    reencrypt = sub.add_parser(
        "reencrypt",
        help="encrypt the store under VOXGATE_VOICEPRINT_KEY (rotating from VOXGATE_OLD_VOICEPRINT_KEY); "
        "resumable",
    )
    reencrypt.add_argument("--batch", type=int, default=500, help="voiceprints per batch")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("keys", "audit", "tenants", "reencrypt"):
        from app.admin import run_admin

        return run_admin(args)
    if args.command in ("eval", "calibrate", "cohort"):
        from app.accuracy_commands import run_accuracy

        return run_accuracy(args)
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
