"""``voxgate eval``, ``voxgate calibrate`` and ``voxgate cohort build``: measuring the service on your speech.

All three embed files through the service's own path (``app.evaluation.embed_files``: decoding, VAD,
speech gate, the batching engine) with the settings of the environment (``VOXGATE_*``), so the figures
describe the service as it is configured. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app import __version__
from app.accuracy.evaluation import (
    Embedded,
    Metrics,
    TrialScores,
    TrialsError,
    compute_metrics,
    embed_files,
    file_sha256,
    frr_at_far,
    plot_det,
    read_trials,
    score_trials,
)
from app.accuracy.evaluation import eer as equal_error_rate
from app.core.logs import configure_logging
from app.core.paths import DEFAULT_MODEL_DIR, unwritable
from app.core.settings import Settings
from app.core.vectors import normalize_rows
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import (
    MANIFEST_FILE,
    CohortInfo,
    ManifestError,
    ModelManifest,
    ScoreCalibration,
    load_manifest,
    sha256_file,
    write_manifest,
)
from app.speakers.operations import Policy, decision_threshold
from app.speakers.scoring import Cohort, CohortError, ScoreType, fit_llr

T = TypeVar("T")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3")
# Below this many cohort speakers AS-Norm statistics are noise (WeSpeaker uses the top 100 of thousands).
COHORT_ADVISED_SPEAKERS = 200
TOOL = f"voxgate {__version__}"


def _settings(model_dir: Path) -> Settings:
    base = Settings.model_validate({})
    # No warm-up (nothing waits for readiness here), a deadline long enough for a queue of files, and
    # plain warnings only on stderr (the results go to stdout).
    return base.model_copy(
        update={
            "model_dir": model_dir,
            "warmup": False,
            "request_timeout_s": 3600.0,
            "log_level": "WARNING",
            "log_json": False,
        }
    )


async def _with_engine(settings: Settings, work: Callable[[EmbeddingEngine], Awaitable[T]]) -> T:
    configure_logging(settings)
    engine = EmbeddingEngine.from_settings(settings, settings.model_dir)
    await engine.start()
    try:
        return await work(engine)
    finally:
        await engine.stop()


def _policy(settings: Settings, manifest: ModelManifest, min_speech: float | None) -> Policy:
    plain = settings.model_copy(update={"score_normalization": "none", "calibrated_scores": False})
    policy = Policy.from_settings(plain, manifest, settings.model_dir)
    if min_speech is not None:
        policy = replace(policy, min_speech_seconds=min_speech)
    return policy


def _load_cohort(settings: Settings, manifest: ModelManifest) -> Cohort:
    if manifest.cohort is None:
        raise CohortError(
            f"the model in {settings.model_dir} has no cohort: voxgate cohort build --model "
            f"{settings.model_dir} --root DIR"
        )
    return Cohort.load(settings.model_dir, manifest.cohort, settings.asnorm_top_n)


def _threshold_in_use(
    settings: Settings, manifest: ModelManifest, score_type: ScoreType
) -> tuple[float, str] | None:
    try:
        return decision_threshold(settings, manifest, score_type)
    except ValueError:
        return None


# --- the shared measurement --------------------------------------------------------------------------
@dataclass
class Measurement:
    settings: Settings
    manifest: ModelManifest
    policy: Policy
    trials_file: Path
    root: Path
    embedded: Embedded
    scores: TrialScores
    cohort: Cohort | None

    def metrics(self, score_type: ScoreType) -> Metrics:
        tar, non = self.scores.split(score_type)
        current = _threshold_in_use(self.settings, self.manifest, score_type)
        return compute_metrics(
            score_type, tar, non, current[0] if current else None, current[1] if current else None
        )

    @property
    def score_types(self) -> list[ScoreType]:
        return list(self.scores.scores)


def measure(
    trials_file: Path,
    root: Path | None,
    model_dir: Path,
    *,
    asnorm: bool,
    min_speech: float | None = None,
    drop_non_speech: bool | None = None,
    progress: bool | None = None,
) -> Measurement:
    settings = _settings(model_dir)
    manifest = load_manifest(model_dir)
    if drop_non_speech is not None:  # measured as if the manifest said so (the report's model key too)
        manifest = manifest.model_copy(update={"drop_non_speech": drop_non_speech})
    trials = read_trials(trials_file)
    root = root if root is not None else trials_file.parent
    names = sorted({t.a for t in trials} | {t.b for t in trials})
    policy = _policy(settings, manifest, min_speech)
    cohort = _load_cohort(settings, manifest) if asnorm else None

    async def work(engine: EmbeddingEngine) -> Embedded:
        return await embed_files(
            engine,
            names,
            root,
            policy,
            settings,
            progress=progress,
            drop_non_speech=drop_non_speech,
        )

    embedded = asyncio.run(_with_engine(settings, work))
    return Measurement(
        settings,
        manifest,
        policy,
        trials_file,
        root,
        embedded,
        score_trials(trials, embedded, cohort),
        cohort,
    )


def _refused_files(embedded: Embedded) -> list[dict[str, Any]]:
    return [
        {"file": r.path, "code": r.refused, "detail": r.detail, "speech_seconds": round(r.speech_seconds, 3)}
        for r in embedded.files.values()
        if r.refused
    ]


def report(m: Measurement) -> dict[str, Any]:
    files = m.embedded.files
    labels = m.scores.labels
    out: dict[str, Any] = {
        "model": m.manifest.model_key(),
        "model_dir": str(m.settings.model_dir),
        "trials_file": str(m.trials_file),
        "root": str(m.root),
        "min_speech_seconds": m.policy.min_speech_seconds,
        "drop_non_speech": m.manifest.drop_non_speech,
        "files": {
            "total": len(files),
            "embedded": sum(1 for r in files.values() if r.embedding is not None),
            "refused": m.embedded.refused_counts(),
            "refused_files": _refused_files(m.embedded),
        },
        "trials": {
            "total": len(m.scores.kept) + m.scores.skipped,
            "scored": len(m.scores.kept),
            "target": int(labels.sum()),
            "nontarget": int((~labels).sum()),
            "skipped": m.scores.skipped,
        },
        "scores": {},
    }
    if m.cohort is not None:
        out["cohort"] = {"speakers": m.cohort.size, "top_n": m.cohort.effective_top_n}
    if labels.any() and (~labels).any():
        out["scores"] = {t: m.metrics(t).as_dict() for t in m.score_types}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def format_report(r: dict[str, Any]) -> str:
    files, trials = r["files"], r["trials"]
    refused = ", ".join(f"{code} {n}" for code, n in files["refused"].items()) or "none"
    lines = [
        f"model {r['model']} ({r['model_dir']}); speech gate {r['min_speech_seconds']:g} s"
        + ("; non-speech dropped" if r["drop_non_speech"] else ""),
        f"files: {files['total']} ({files['embedded']} embedded; refused: {refused})",
        f"trials: {trials['scored']} scored ({trials['target']} same-speaker, {trials['nontarget']} "
        f"different-speaker); {trials['skipped']} skipped (a file was refused)",
    ]
    if "cohort" in r:
        lines.append(f"AS-Norm cohort: {r['cohort']['speakers']} speakers, top {r['cohort']['top_n']}")
    for score_type, s in r["scores"].items():
        lines.append(f"[{score_type}]")
        lines.append(f"  EER                {_pct(s['eer']):>9}   threshold {s['eer_threshold']:.4f}")
        for p, d in s["min_dcf"].items():
            lines.append(f"  minDCF p={p:<9}{d['value']:>9.4f}   threshold {d['threshold']:.4f}")
        for far, d in s["frr_at_far"].items():
            note = (
                "" if d["measurable"] else f"  (FAR resolution {_pct(s['far_resolution'])}: no false accept)"
            )
            at = f"{_pct(d['frr']):>9}   threshold {d['threshold']:.4f}"
            lines.append(f"  FRR @ FAR {_pct(float(far)):<8} {at}{note}")
        t = s["threshold"]
        if t is not None:
            lines.append(
                f"  at threshold {t['value']:.4f} ({t['source']}): FAR {_pct(t['far'])}, FRR {_pct(t['frr'])}"
            )
    for item in files["refused_files"]:
        lines.append(f"refused {item['file']}: {item['code']} ({item['detail']})")
    return "\n".join(lines)


def draw(m: Measurement, path: Path) -> None:
    curves = []
    histograms = []
    for score_type in m.score_types:
        tar, non = m.scores.split(score_type)
        metrics = m.metrics(score_type)
        curves.append((score_type, tar, non, metrics.threshold))
        histograms.append((score_type, tar, non, metrics.threshold.threshold if metrics.threshold else None))
    title = (
        f"{m.manifest.model_key()} on {m.trials_file.name}: {int(m.scores.labels.sum())} same-speaker, "
        f"{int((~m.scores.labels).sum())} different-speaker trials"
    )
    plot_det(path, curves, histograms, title)


def write_scores(m: Measurement, path: Path) -> None:
    """One row per scored trial: label, paths, each score type, and both files' net speech (s)."""
    header = ["label", "a", "b", *m.score_types, "speech_a", "speech_b"]
    rows = ["\t".join(header)]
    files = m.embedded.files
    for i, trial in enumerate(m.scores.kept):
        values = [f"{m.scores.scores[t][i]:.6f}" for t in m.score_types]
        speech = [f"{files[trial.a].speech_seconds:.3f}", f"{files[trial.b].speech_seconds:.3f}"]
        rows.append("\t".join([str(int(trial.target)), trial.a, trial.b, *values, *speech]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


COHORT_FILE = "cohort.npy"


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
def choose_threshold(
    target: np.ndarray, nontarget: np.ndarray, target_far: float | None
) -> tuple[float, str]:
    if target_far is None:
        _, threshold = equal_error_rate(target, nontarget)
        return threshold, "eer"
    return frr_at_far(target, nontarget, target_far).threshold, f"far={target_far:g}"


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
    score_type: ScoreType = "asnorm" if asnorm else "cosine"
    if (why := unwritable(model_dir / MANIFEST_FILE)) is not None:
        return _fail(why)
    try:
        m = measure(trials, root, model_dir, asnorm=asnorm, min_speech=min_speech)
    except (OSError, TrialsError, ManifestError, CohortError, ValueError) as exc:
        return _fail(str(exc))
    tar, non = m.scores.split(score_type)
    if tar.size == 0 or non.size == 0:
        return _fail("calibration needs same-speaker and different-speaker trials that could be scored")
    threshold, target = choose_threshold(tar, non, target_far)
    metrics = compute_metrics(score_type, tar, non, threshold, target)
    assert metrics.threshold is not None
    llr = fit_llr(tar, non)
    manifest = load_manifest(model_dir)  # as on disk (measure() may have copied it)
    key = manifest.model_key()
    calibration = ScoreCalibration(
        score_type=score_type,
        threshold=round(threshold, 6),
        target=target,
        far=metrics.threshold.far,
        frr=metrics.threshold.frr,
        eer=metrics.eer,
        llr_scale=llr.scale,
        llr_offset=llr.offset,
        llr_prior=0.5,
        trials_file=str(trials),
        trials_sha256=file_sha256(trials),
        target_trials=int(tar.size),
        nontarget_trials=int(non.size),
        skipped_trials=m.scores.skipped,
        refused_files=m.embedded.refused_counts(),
        min_speech_seconds=m.policy.min_speech_seconds,
        asnorm_top_n=m.cohort.effective_top_n if m.cohort is not None else None,
        cohort_sha256=manifest.cohort.sha256 if asnorm and manifest.cohort is not None else None,
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        tool=TOOL,
    )
    updates: dict[str, Any] = {"calibration": {**manifest.calibration, score_type: calibration}}
    if score_type == "cosine":
        updates["default_threshold"] = calibration.threshold
        updates["threshold_source"] = (
            f"voxgate calibrate ({target}) on {trials} ({tar.size} same-speaker + {non.size} "
            f"different-speaker trials, {calibration.created}); see calibration.cosine"
        )
    updated = ModelManifest.model_validate({**manifest.model_dump(), **updates})
    if updated.model_key() != key:  # calibration changes no embedding, so never the namespace
        raise AssertionError(f"model key changed: {key} -> {updated.model_key()}")
    write_manifest(model_dir, updated)
    summary = {
        "model": key,
        "manifest": str(model_dir / MANIFEST_FILE),
        "calibration": calibration.model_dump(mode="json"),
        "far_resolution": 1.0 / non.size,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{key}: {score_type} threshold {calibration.threshold:.4f} ({target}) written to "
            f"{model_dir / MANIFEST_FILE}\n"
            f"  on {tar.size} same-speaker + {non.size} different-speaker trials: "
            f"FAR {_pct(calibration.far)}, FRR {_pct(calibration.frr)}, EER {_pct(calibration.eer)}\n"
            f"  llr = {llr.scale:.4f} * score + {llr.offset:.4f}"
        )
    if target_far is not None and target_far < 1.0 / non.size:
        print(
            f"voxgate: warning: {non.size} different-speaker trials cannot measure a FAR of {target_far:g} "
            f"(resolution {1.0 / non.size:.4f}): the threshold only guarantees no false accept on them",
            file=sys.stderr,
        )
    return 0


# --- voxgate cohort build ------------------------------------------------------------------------------
def cohort_files(root: Path) -> dict[str, list[str]]:
    """Each immediate sub-folder of ``root`` is a speaker; its audio files (recursively), relative to root."""
    speakers: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found = sorted(
            f.relative_to(root).as_posix()
            for f in folder.rglob("*")
            if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
        )
        if found:
            speakers[folder.name] = found
    return speakers


def speaker_means(
    embedded: Embedded, speakers: Mapping[str, Sequence[str]], min_files: int
) -> dict[str, np.ndarray]:
    means = {}
    for speaker, names in speakers.items():
        vectors = [e for n in names if (e := embedded.embedding(n)) is not None]
        if len(vectors) >= min_files:
            means[speaker] = normalize_rows(np.mean(np.stack(vectors), axis=0))[0]
    return means


def run_cohort_build(*, root: Path, model_dir: Path, top_n: int, min_files: int, as_json: bool) -> int:
    try:
        settings = _settings(model_dir)
        manifest = load_manifest(model_dir)
        speakers = cohort_files(root)
    except (OSError, ManifestError) as exc:
        return _fail(str(exc))
    for written in (model_dir / COHORT_FILE, model_dir / MANIFEST_FILE):
        if (why := unwritable(written)) is not None:
            return _fail(why)
    if len(speakers) < 2:
        return _fail(f"{root}: a cohort needs at least 2 speaker folders with audio, found {len(speakers)}")
    names = [n for files in speakers.values() for n in files]
    policy = _policy(settings, manifest, None)

    async def work(engine: EmbeddingEngine) -> Embedded:
        return await embed_files(engine, names, root, policy, settings)

    embedded = asyncio.run(_with_engine(settings, work))
    means = speaker_means(embedded, speakers, min_files)
    if len(means) < 2:
        return _fail("fewer than 2 speakers had usable recordings")
    matrix = np.stack([means[s] for s in sorted(means)]).astype(np.float32)
    info = CohortInfo(
        file=COHORT_FILE,
        sha256="",
        speakers=matrix.shape[0],
        recordings=sum(1 for r in embedded.files.values() if r.embedding is not None),
        top_n=top_n,
        source=str(root),
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        tool=TOOL,
    )
    path = model_dir / info.file
    np.save(path, matrix, allow_pickle=False)
    info = info.model_copy(update={"sha256": sha256_file(path)})
    key = manifest.model_key()
    # An AS-Norm threshold measured with another cohort no longer holds: dropped (calibrate again).
    calibration = {k: v for k, v in manifest.calibration.items() if k != "asnorm"}
    updated = ModelManifest.model_validate(
        {**manifest.model_dump(), "cohort": info, "calibration": calibration}
    )
    assert updated.model_key() == key
    write_manifest(model_dir, updated)
    summary = {
        "model": key,
        "cohort": info.model_dump(mode="json"),
        "refused": embedded.refused_counts(),
        "dropped_asnorm_calibration": "asnorm" in manifest.calibration,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{key}: cohort of {info.speakers} speakers ({info.recordings} recordings) written to {path}"
            + (
                " (the asnorm calibration was dropped: calibrate again)"
                if summary["dropped_asnorm_calibration"]
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


def run_accuracy(args: Any) -> int:
    """Dispatch of ``voxgate eval | calibrate | cohort build`` (parsed by ``app.cli``)."""
    if args.command == "eval":
        return run_eval(
            trials=args.trials,
            root=args.root,
            model_dir=args.model,
            as_json=args.json,
            plot=args.plot,
            asnorm=args.asnorm,
            min_speech=args.min_speech,
            scores=args.scores,
            drop_non_speech=args.drop_non_speech,
        )
    if args.command == "calibrate":
        return run_calibrate(
            trials=args.trials,
            root=args.root,
            model_dir=args.model,
            target_far=None if args.eer else args.target_far,
            asnorm=args.asnorm,
            min_speech=args.min_speech,
            as_json=args.json,
        )
    if args.command == "cohort" and args.cohort_command == "build":
        return run_cohort_build(
            root=args.root,
            model_dir=args.model,
            top_n=args.top_n,
            min_files=args.min_files,
            as_json=args.json,
        )
    raise AssertionError(args.command)
