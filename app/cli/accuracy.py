"""``voxgate eval``, ``voxgate calibrate`` and ``voxgate cohort build``: measuring the service on your speech
(``app.accuracy``). Progress goes to stderr, results to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli import args


def add_parser(sub: Any) -> None:
    trials_help = "trials, one per line: '1|0 path_a path_b' (1 = same speaker)"
    root_help = "folder the trial paths are relative to (default: the trials file's folder)"
    gate_help = "net speech a file needs (default: the service's minimum, settings and manifest); 0 = none"
    ev = sub.add_parser(
        "eval",
        help="EER, minDCF, FRR at FAR and refusals of a model on labelled trials (as the service scores)",
    )
    ev.set_defaults(run=run)
    ev.add_argument("--trials", type=Path, required=True, metavar="FILE", help=trials_help)
    ev.add_argument("--root", type=Path, metavar="DIR", help=root_help)
    ev.add_argument("--model", type=Path, help="model directory (default: models/default)")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ev.add_argument(
        "--plot", type=args.writable_file, metavar="FILE.png", help="DET curve and score histograms"
    )
    ev.add_argument("--asnorm", action="store_true", help="also AS-Norm scores (the model's cohort)")
    ev.add_argument("--min-speech", type=args.seconds, metavar="SECONDS", help=gate_help)
    ev.add_argument(
        "--scores", type=args.writable_file, metavar="FILE.tsv", help="write every trial's scores"
    )
    ev.add_argument(
        "--drop-non-speech",
        action="store_true",
        help="embed only the VAD's speech regions (to measure whether the model should)",
    )
    cal = sub.add_parser(
        "calibrate",
        help="measure a threshold (and an LLR calibration) on trials and write it into the model's manifest",
    )
    cal.set_defaults(run=run)
    cal.add_argument("--trials", type=Path, required=True, metavar="FILE", help=trials_help)
    cal.add_argument("--root", type=Path, metavar="DIR", help=root_help)
    cal.add_argument("--model", type=Path, required=True, help="model directory (its manifest is updated)")
    goal = cal.add_mutually_exclusive_group(required=True)
    goal.add_argument(
        "--target-far",
        type=args.rate,
        metavar="RATE",
        help="threshold for this false-accept rate (0 < RATE < 1)",
    )
    goal.add_argument("--eer", action="store_true", help="threshold at the equal error rate")
    cal.add_argument("--asnorm", action="store_true", help="calibrate AS-Norm scores (the model's cohort)")
    cal.add_argument("--min-speech", type=args.seconds, metavar="SECONDS", help=gate_help)
    cal.add_argument("--json", action="store_true")
    cohort_parser = sub.add_parser("cohort", help="the AS-Norm cohort of a model")
    cohort_parser.set_defaults(run=run)
    cohort = cohort_parser.add_subparsers(dest="cohort_command", required=True)
    build = cohort.add_parser(
        "build", help="embed one folder per speaker and store their mean embeddings with the model"
    )
    build.add_argument("--root", type=Path, required=True, metavar="DIR", help="one sub-folder per speaker")
    build.add_argument("--model", type=Path, required=True, help="model directory (cohort.npy is written)")
    build.add_argument(
        "--top-n", type=args.at_least_one, default=100, help="cohort scores AS-Norm averages (default 100)"
    )
    build.add_argument(
        "--min-files", type=args.at_least_one, default=1, help="recordings a speaker needs (default 1)"
    )
    build.add_argument("--json", action="store_true")


def _fail(message: str) -> int:
    print(f"voxgate: {message}", file=sys.stderr)
    return 2


# --- voxgate eval --------------------------------------------------------------------------------------
def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'voxgate[eval]'") from exc


def run_eval(
    *,
    trials: Path,
    root: Path | None,
    model_dir: Path | None,
    as_json: bool,
    plot: Path | None,
    asnorm: bool,
    min_speech: float | None,
    scores: Path | None,
    drop_non_speech: bool = False,
) -> int:
    from app.accuracy.measurement import draw, format_report, measure, report, write_scores
    from app.accuracy.trials import TrialsError
    from app.core.paths import DEFAULT_MODEL_DIR
    from app.engine.manifest import ManifestError
    from app.speakers.scoring import CohortError

    try:
        if plot is not None:
            _check_plotting()  # before minutes of embedding
        m = measure(
            trials,
            root,
            model_dir or DEFAULT_MODEL_DIR,
            asnorm=asnorm,
            min_speech=min_speech,
            drop_non_speech=True if drop_non_speech else None,
        )
    except (OSError, TrialsError, ManifestError, CohortError, ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    result = report(m)
    if not result["scores"]:
        print(json.dumps(result, indent=2) if as_json else format_report(result))
        print("voxgate: no trial of both classes could be scored", file=sys.stderr)
        return 1
    if plot is not None:
        try:
            draw(m, plot)
        except RuntimeError as exc:
            return _fail(str(exc))
        result["plot"] = str(plot)
    if scores is not None:
        write_scores(m, scores)
        result["scores_file"] = str(scores)
    print(json.dumps(result, indent=2) if as_json else format_report(result))
    return 0


# --- voxgate calibrate ---------------------------------------------------------------------------------
def run_calibrate(
    *,
    trials: Path,
    root: Path | None,
    model_dir: Path,
    target_far: float | None,
    asnorm: bool,
    min_speech: float | None,
    as_json: bool,
) -> int:
    from app.accuracy.calibration import CalibrationError, calibrate
    from app.accuracy.measurement import measure, percent
    from app.accuracy.trials import TrialsError
    from app.core.paths import unwritable
    from app.engine.manifest import MANIFEST_FILE, ManifestError
    from app.speakers.scoring import CohortError, ScoreType

    score_type: ScoreType = "asnorm" if asnorm else "cosine"
    if (why := unwritable(model_dir / MANIFEST_FILE)) is not None:
        return _fail(why)
    try:
        m = measure(trials, root, model_dir, asnorm=asnorm, min_speech=min_speech)
        done = calibrate(m, model_dir, trials, target_far, score_type)
    except (OSError, TrialsError, ManifestError, CohortError, CalibrationError, ValueError) as exc:
        return _fail(str(exc))
    calibration, llr, non = done.calibration, done.llr, done.nontarget_trials
    summary = {
        "model": done.model_key,
        "manifest": str(model_dir / MANIFEST_FILE),
        "calibration": calibration.model_dump(mode="json"),
        "far_resolution": 1.0 / non,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{done.model_key}: {score_type} threshold {calibration.threshold:.4f} ({calibration.target}) "
            f"written to {model_dir / MANIFEST_FILE}\n"
            f"  on {calibration.target_trials} same-speaker + {non} different-speaker trials: "
            f"FAR {percent(calibration.far)}, FRR {percent(calibration.frr)}, "
            f"EER {percent(calibration.eer)}\n"
            f"  llr = {llr.scale:.4f} * score + {llr.offset:.4f}"
        )
    if target_far is not None and target_far < 1.0 / non:
        print(
            f"voxgate: warning: {non} different-speaker trials cannot measure a FAR of {target_far:g} "
            f"(resolution {1.0 / non:.4f}): the threshold only guarantees no false accept on them",
            file=sys.stderr,
        )
    return 0


# --- voxgate cohort build ------------------------------------------------------------------------------
def run_cohort_build(*, root: Path, model_dir: Path, top_n: int, min_files: int, as_json: bool) -> int:
    from app.accuracy.calibration import (
        COHORT_ADVISED_SPEAKERS,
        COHORT_FILE,
        CalibrationError,
        build_cohort,
        cohort_files,
    )
    from app.core.paths import unwritable
    from app.engine.manifest import MANIFEST_FILE, ManifestError, load_manifest

    try:
        load_manifest(model_dir)
        speakers = cohort_files(root)
    except (OSError, ManifestError) as exc:
        return _fail(str(exc))
    for written in (model_dir / COHORT_FILE, model_dir / MANIFEST_FILE):
        if (why := unwritable(written)) is not None:
            return _fail(why)
    if len(speakers) < 2:
        return _fail(f"{root}: a cohort needs at least 2 speaker folders with audio, found {len(speakers)}")
    try:
        built = build_cohort(root, model_dir, speakers, top_n, min_files)
    except CalibrationError as exc:
        return _fail(str(exc))
    info = built.info
    summary = {
        "model": built.model_key,
        "cohort": info.model_dump(mode="json"),
        "refused": built.refused,
        "dropped_asnorm_calibration": built.dropped_asnorm_calibration,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{built.model_key}: cohort of {info.speakers} speakers ({info.recordings} recordings) "
            f"written to {built.path}"
            + (
                " (the asnorm calibration was dropped: calibrate again)"
                if built.dropped_asnorm_calibration
                else ""
            )
        )
    if info.speakers < COHORT_ADVISED_SPEAKERS:
        print(
            f"voxgate: warning: {info.speakers} cohort speakers; AS-Norm needs hundreds (at least "
            f"{COHORT_ADVISED_SPEAKERS}) of speakers unlike the ones it will score to help "
            "(docs/accuracy.md)",
            file=sys.stderr,
        )
    return 0


def run(parsed: argparse.Namespace) -> int:
    """``voxgate eval | calibrate | cohort build``."""
    if parsed.command == "eval":
        return run_eval(
            trials=parsed.trials,
            root=parsed.root,
            model_dir=parsed.model,
            as_json=parsed.json,
            plot=parsed.plot,
            asnorm=parsed.asnorm,
            min_speech=parsed.min_speech,
            scores=parsed.scores,
            drop_non_speech=parsed.drop_non_speech,
        )
    if parsed.command == "calibrate":
        return run_calibrate(
            trials=parsed.trials,
            root=parsed.root,
            model_dir=parsed.model,
            target_far=None if parsed.eer else parsed.target_far,
            asnorm=parsed.asnorm,
            min_speech=parsed.min_speech,
            as_json=parsed.json,
        )
    if parsed.command == "cohort" and parsed.cohort_command == "build":
        return run_cohort_build(
            root=parsed.root,
            model_dir=parsed.model,
            top_n=parsed.top_n,
            min_files=parsed.min_files,
            as_json=parsed.json,
        )
    raise AssertionError(parsed.command)
