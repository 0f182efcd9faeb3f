"""One measurement of a model on labelled trials, shared by ``voxgate eval`` and ``voxgate calibrate``:
its files embedded through the service's path (``app.accuracy.trials``) with the settings of the
environment (``VOXGATE_*``), so the figures describe the service as it is configured; and its report
(a dict for ``--json``, lines for people, the DET plot, the per-trial scores file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from app.accuracy.metrics import Metrics, compute_metrics
from app.accuracy.plots import plot_det
from app.accuracy.trials import Embedded, TrialScores, embed_files, read_trials, score_trials
from app.core.logs import configure_logging
from app.core.settings import Settings
from app.engine.engine import EmbeddingEngine
from app.engine.manifest import ModelManifest, load_manifest
from app.speakers.policy import Policy, decision_threshold
from app.speakers.scoring import Cohort, CohortError, ScoreType

T = TypeVar("T")


def tool_settings(model_dir: Path) -> Settings:
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


async def with_engine(settings: Settings, work: Callable[[EmbeddingEngine], Awaitable[T]]) -> T:
    configure_logging(settings)
    engine = EmbeddingEngine.from_settings(settings, settings.model_dir)
    await engine.start()
    try:
        return await work(engine)
    finally:
        await engine.stop()


def measuring_policy(settings: Settings, manifest: ModelManifest, min_speech: float | None) -> Policy:
    plain = settings.model_copy(update={"score_normalization": "none", "calibrated_scores": False})
    policy = Policy.from_settings(plain, manifest, settings.model_dir)
    if min_speech is not None:
        policy = replace(policy, min_speech_seconds=min_speech)
    return policy


def load_cohort(settings: Settings, manifest: ModelManifest) -> Cohort:
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
    settings = tool_settings(model_dir)
    manifest = load_manifest(model_dir)
    if drop_non_speech is not None:  # measured as if the manifest said so (the report's model key too)
        manifest = manifest.model_copy(update={"drop_non_speech": drop_non_speech})
    trials = read_trials(trials_file)
    root = root if root is not None else trials_file.parent
    names = sorted({t.a for t in trials} | {t.b for t in trials})
    policy = measuring_policy(settings, manifest, min_speech)
    cohort = load_cohort(settings, manifest) if asnorm else None

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

    embedded = asyncio.run(with_engine(settings, work))
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


def percent(x: float) -> str:
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
        lines.append(f"  EER                {percent(s['eer']):>9}   threshold {s['eer_threshold']:.4f}")
        for p, d in s["min_dcf"].items():
            lines.append(f"  minDCF p={p:<9}{d['value']:>9.4f}   threshold {d['threshold']:.4f}")
        for far, d in s["frr_at_far"].items():
            note = (
                ""
                if d["measurable"]
                else f"  (FAR resolution {percent(s['far_resolution'])}: no false accept)"
            )
            at = f"{percent(d['frr']):>9}   threshold {d['threshold']:.4f}"
            lines.append(f"  FRR @ FAR {percent(float(far)):<8} {at}{note}")
        t = s["threshold"]
        if t is not None:
            lines.append(
                f"  at threshold {t['value']:.4f} ({t['source']}): "
                f"FAR {percent(t['far'])}, FRR {percent(t['frr'])}"
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
