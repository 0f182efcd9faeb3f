"""The measurements behind docs/accuracy.md, on the repository's real speech (tests/data/speech).

    python -m bench.accuracy_report vad                    # the VAD on speech and non-speech; its cost
    python -m bench.accuracy_report conditions --out DIR   # voxgate eval on degraded test recordings
    python -m bench.accuracy_report agreement              # the unlike-voiceprint (mutual agreement) scores
    python -m bench.accuracy_report asnorm                 # AS-Norm with leave-two-speakers-out cohorts

``conditions`` writes the degraded recordings and one trials file per condition under DIR, then runs
``voxgate eval`` (the CLI, in a subprocess) on each, with and without ``--drop-non-speech``, and prints a
Markdown table; ``--plots DIR`` also draws the DET figures of the docs. The other sections embed through
``app.accuracy.trials.embed_files`` (the service's path) and print Markdown. Nothing is asserted: see
tests/accuracy/test_accuracy.py for the checks. Everything is deterministic (fixed seeds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.accuracy.measurement import measuring_policy, tool_settings, with_engine
from app.accuracy.metrics import compute_metrics, eer
from app.accuracy.plots import plot_det
from app.accuracy.trials import embed_files, read_trials
from app.audio import vad
from app.core.vectors import normalize_rows
from app.engine.manifest import load_manifest
from app.speakers.scoring import asnorm as as_norm

REPO = Path(__file__).resolve().parent.parent
SPEECH = REPO / "tests" / "data" / "speech"
DEFAULT_MODEL = REPO / "models" / "default"
SR = 16000


# --- signals ---------------------------------------------------------------------------------------------
def white(seconds: float, seed: int = 0, level: float = 0.1) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def pink(seconds: float, seed: int = 0, level: float = 0.1) -> np.ndarray:
    n = int(seconds * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return np.asarray(level * x / x.std(), dtype=np.float32)


def tones(seconds: float, freqs: tuple[float, ...] = (220, 440, 880, 1760, 3520)) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    seg = len(t) // len(freqs)
    for i, f in enumerate(freqs):
        out[i * seg : (i + 1) * seg] = np.sin(2 * np.pi * f * t[i * seg : (i + 1) * seg])
    return (0.3 * out).astype(np.float32)


def hum(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wave = np.zeros_like(t)
    for k in range(1, 8):
        wave += np.sin(2 * np.pi * 50 * k * t) / k
    return np.asarray(0.2 * wave, dtype=np.float32)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Piano-like notes (6 decaying harmonics): chords and a melody, 4 notes a second, a noise-burst drum."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    for i in range(int(seconds / 0.25)):
        start = int(i * 0.25 * SR)
        d = np.arange(n - start) / SR
        root = 48 + int(rng.choice(scale))
        notes = [0, 4, 7] if i % 4 == 0 else [12 + int(rng.choice(scale))]
        for semi in notes:
            f = 440 * 2 ** ((root + semi - 69) / 12)
            tone = sum(np.exp(-3 * k * d) * np.sin(2 * np.pi * f * k * d) / k for k in range(1, 7))
            out[start:] += 0.3 * tone * np.exp(-2.5 * d)
        if i % 2 == 0:
            m = min(n - start, int(0.05 * SR))
            out[start : start + m] += 0.5 * rng.standard_normal(m) * np.exp(-np.arange(m) / 200)
    return np.asarray(0.3 * out / np.abs(out).max(), dtype=np.float32)


def dtmf(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    pairs = [(697, 1209), (770, 1336), (852, 1477), (941, 1633)]
    for i in range(int(seconds / 0.2)):
        a, b = pairs[i % 4]
        m = (t >= i * 0.2) & (t < i * 0.2 + 0.12)
        out[m] = np.sin(2 * np.pi * a * t[m]) + np.sin(2 * np.pi * b * t[m])
    return (0.15 * out).astype(np.float32)


NON_SPEECH: dict[str, Callable[[], np.ndarray]] = {
    "digital silence": lambda: np.zeros(5 * SR, np.float32),
    "white noise (-20 dBFS)": lambda: white(5),
    "white noise (-6 dBFS)": lambda: white(5, level=0.5),
    "pink noise": lambda: pink(5),
    "5 steady tones": lambda: tones(5),
    "50 Hz hum + harmonics": lambda: hum(5),
    "DTMF tones": lambda: dtmf(5),
    "synthetic music (piano + drum)": lambda: music(10, seed=3),
}


def speech_files() -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.flac")) for d in sorted(SPEECH.iterdir()) if d.is_dir()}


def load(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32")
    assert rate == SR
    return np.asarray(data, dtype=np.float32)


# --- vad -------------------------------------------------------------------------------------------------
def _energy_vad() -> Callable[[np.ndarray], float] | None:
    """The energy VAD the service used before (git history), for comparison, when git can show it."""
    try:
        source = subprocess.run(
            ["git", "show", "6397989:app/audio/vad.py"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    namespace: dict[str, object] = {"__name__": "energy_vad"}
    exec(compile(source, "energy_vad", "exec"), namespace)
    measure = namespace["speech_seconds"]
    return lambda x: float(measure(x, SR))  # type: ignore[operator]


def _work_peak_mb(seconds: int) -> float | None:
    """Peak resident memory a VAD call adds for ``seconds`` of noise (Linux: VmHWM after a reset)."""
    code = (
        "import numpy as np\nfrom app.audio import vad\n"
        f"x = (0.1 * np.random.default_rng(0).standard_normal({seconds} * 16000)).astype(np.float32)\n"
        "vad.speech_seconds(x[:16000])\n"
        "def status(k):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\nbase = status('VmRSS')\nvad.speech_seconds(x)\n"
        "print((status('VmHWM') - base) / 1024)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return float(done.stdout.strip())


def report_vad() -> None:
    energy = _energy_vad()
    print("| signal | seconds | energy VAD: speech s | Silero VAD: speech s | max speech probability |")
    print("| --- | --- | --- | --- | --- |")
    for name, make in NON_SPEECH.items():
        x = make()
        old = f"{energy(x):.2f}" if energy else "-"
        print(
            f"| {name} | {x.size / SR:.0f} | {old} | {vad.speech_seconds(x):.2f} | "
            f"{float(vad.speech_probabilities(x).max()):.2f} |"
        )
    files = [f for fs in speech_files().values() for f in fs]
    total = old_total = new_total = 0.0
    fractions = []
    for f in files:
        x = load(f)
        total += x.size / SR
        new = vad.speech_seconds(x)
        new_total += new
        fractions.append(new / (x.size / SR))
        if energy:
            old_total += energy(x)
    print()
    print(
        f"speech set: {len(files)} files, {total:.1f} s; energy VAD {old_total:.1f} s "
        f"({old_total / total:.0%}); Silero {new_total:.1f} s ({new_total / total:.0%}); per file "
        f"{min(fractions):.0%} to {max(fractions):.0%}"
    )
    speech = load(speech_files()["vctk_p225"][0])
    piece = speech[SR : SR + int(1.5 * SR)]
    mix = np.concatenate([white(4, 1, 0.05), piece, white(4, 2, 0.05)])
    old = f"{energy(mix):.2f}" if energy else "-"
    print(
        f"8 s of white noise around 1.5 s of speech: energy VAD {old} s, "
        f"Silero {vad.speech_seconds(mix):.2f} s"
    )
    for seconds in (30, 300):
        x = white(seconds, seed=5)
        vad.speech_seconds(x[:SR])
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            vad.speech_seconds(x)
            runs.append(time.perf_counter() - start)
        peak = _work_peak_mb(seconds)
        memory = f"; work memory peak {peak:.1f} MB" if peak is not None else ""
        print(
            f"{seconds} s of audio: {1000 * min(runs) / seconds:.2f} ms per second of audio (best of 3, one "
            f"thread){memory}"
        )


# --- conditions ------------------------------------------------------------------------------------------
def cut(x: np.ndarray, seconds: float) -> np.ndarray:
    """``seconds`` of the recording from where its speech starts."""
    regions = vad.speech_regions(x)
    start = regions[0][0] if regions else 0
    return x[start : start + int(seconds * SR)]


def telephone(x: np.ndarray) -> np.ndarray:
    narrow = soxr.resample(x, SR, 8000, quality="HQ")
    return np.asarray(soxr.resample(narrow, 8000, SR, quality="HQ")[: x.size], dtype=np.float32)


def mix_at(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    gain = np.sqrt(
        np.mean(x.astype(np.float64) ** 2) / (np.mean(noise.astype(np.float64) ** 2) * 10 ** (snr_db / 10))
    )
    y = x + gain * noise
    peak = float(np.abs(y).max())
    return np.asarray(y / peak * 0.99 if peak > 0.99 else y, dtype=np.float32)


def babble(n: int, speaker: str, clean: dict[str, np.ndarray], seed: int, talkers: int = 5) -> np.ndarray:
    """``talkers`` recordings of other speakers of the set, each at unit power, summed."""
    others = sorted(k for k in clean if k.split("/")[0] != speaker)
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=np.float64)
    for i in rng.choice(len(others), talkers, replace=False):
        y = clean[others[int(i)]]
        y = np.tile(y, -(-n // y.size))[:n]
        out += y / (y.std() + 1e-9)
    return out.astype(np.float32)


def conditions(clean: dict[str, np.ndarray]) -> dict[str, Callable[[str, np.ndarray], np.ndarray]]:
    def seed(name: str) -> int:
        return sum(name.encode()) * 7919 % 100_000

    conds: dict[str, Callable[[str, np.ndarray], np.ndarray]] = {"clean": lambda n, x: x}
    for s in (1.0, 1.5, 2.0, 3.0, 4.0):
        conds[f"cut {s:g} s"] = lambda n, x, s=s: cut(x, s)  # type: ignore[misc]
    conds["telephone 8 kHz"] = lambda n, x: telephone(x)
    for snr in (20, 10, 5):
        conds[f"white noise {snr} dB"] = lambda n, x, snr=snr: mix_at(
            x, white(x.size / SR, seed(n), 1.0), snr
        )  # type: ignore[misc]
    for snr in (20, 10, 5):
        conds[f"babble {snr} dB"] = lambda n, x, snr=snr: mix_at(  # type: ignore[misc]
            x, babble(x.size, n.split("/")[0], clean, seed(n)), snr
        )
    return conds


def slug(name: str) -> str:
    return name.replace(" ", "-").replace(".", "_")


def build_conditions(out: Path) -> dict[str, Path]:
    """Degraded test sides under ``out``/<condition>/, the clean enrollment side under ``out``/clean/, and
    one trials file per condition (the second path of every trial degraded)."""
    trials = read_trials(SPEECH / "trials.txt")
    names = sorted({t.a for t in trials} | {t.b for t in trials})
    clean = {n: load(SPEECH / n) for n in names}
    files: dict[str, Path] = {}
    for cond, fn in conditions(clean).items():
        folder = slug(cond)
        for n in names:
            path = out / folder / n
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, fn(n, clean[n]), SR, format="FLAC", subtype="PCM_16")
        listing = out / f"{folder}.trials"
        listing.write_text("".join(f"{int(t.target)} clean/{t.a} {folder}/{t.b}\n" for t in trials))
        files[cond] = listing
    return files


def voxgate_eval(trials: Path, root: Path, model: Path, *extra: str) -> dict[str, object]:
    command = [sys.executable, "-m", "app.cli", "eval", "--trials", str(trials), "--root", str(root)]
    command += ["--model", str(model), "--json", *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1) or not done.stdout.strip():  # 1: printed, but nothing scored
        raise RuntimeError(f"{' '.join(command)}: {done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def report_conditions(out: Path, model: Path, plots: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    listings = build_conditions(out)
    print(f"trials: {SPEECH / 'trials.txt'} with the second recording of each trial degraded; model {model}")
    print()
    print(
        "| test recordings | EER | threshold at the EER | FRR at the default threshold | FAR there "
        "| minDCF 0.01 | refused by the gate | EER, non-speech dropped |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    curves = []
    for cond, listing in listings.items():
        gated = voxgate_eval(listing, out, model)
        refused = gated["files"]["refused"]  # type: ignore[index]
        refused_text = ", ".join(f"{n} {k}" for k, n in refused.items()) or "none"
        # Short cuts are measured without the speech gate (what the gate would refuse is the column).
        extra = ["--min-speech", "0"] if cond.startswith("cut") else []
        scores = out / f"{slug(cond)}.scores.tsv"
        r = voxgate_eval(listing, out, model, *extra, "--scores", str(scores))
        trimmed = voxgate_eval(listing, out, model, *extra, "--drop-non-speech")
        s = r["scores"]["cosine"]  # type: ignore[index]
        t = trimmed["scores"]["cosine"]  # type: ignore[index]
        print(
            f"| {cond} | {100 * s['eer']:.2f} % | {s['eer_threshold']:.3f} | "
            f"{100 * s['threshold']['frr']:.2f} % | "
            f"{100 * s['threshold']['far']:.2f} % | {s['min_dcf']['0.01']['value']:.3f} | {refused_text} | "
            f"{100 * t['eer']:.2f} % |"
        )
        rows = [line.split("\t") for line in scores.read_text().splitlines()[1:]]
        labels = np.array([r[0] == "1" for r in rows])
        values = np.array([float(r[3]) for r in rows])
        curves.append((cond, values[labels], values[~labels], s["threshold"]))
        sys.stdout.flush()
    by_speech(out, [c for c in listings if c.startswith("cut")], model)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        from app.accuracy.metrics import OperatingPoint

        def points(group: list[Any]) -> list[Any]:
            return [(c, tar, non, OperatingPoint(t["value"], t["far"], t["frr"])) for c, tar, non, t in group]

        by = {c[0]: c for c in curves}
        noise = [
            by[k]
            for k in (
                "clean",
                "telephone 8 kHz",
                "white noise 20 dB",
                "white noise 10 dB",
                "white noise 5 dB",
                "babble 20 dB",
                "babble 10 dB",
                "babble 5 dB",
            )
        ]
        durations = [by[k] for k in by if k.startswith("cut")] + [by["clean"]]
        for name, group in (("accuracy-det-noise.png", noise), ("accuracy-det-duration.png", durations)):
            plot_det(
                plots / name, points(group), [], f"{load_manifest(model).model_key()}: test side degraded"
            )
            print(f"\nwrote {plots / name}")


SPEECH_BINS = ((0.0, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 2.5), (2.5, 3.0), (3.0, 99.0))


def by_speech(out: Path, conds: list[str], model: Path) -> None:
    """The cut conditions' trials (no gate) pooled and grouped by the test recording's net speech."""
    threshold = load_manifest(model).default_threshold
    rows = []
    for cond in conds:
        lines = (out / f"{slug(cond)}.scores.tsv").read_text().splitlines()
        header = lines[0].split("\t")
        for line in lines[1:]:
            row = dict(zip(header, line.split("\t"), strict=True))
            rows.append((row["label"] == "1", float(row["cosine"]), float(row["speech_b"])))
    print()
    print(f"Pooled over {', '.join(conds)} (no speech gate), by the test recording's net speech (VAD):")
    print()
    print(
        "| net speech of the test recording | same-speaker trials | different-speaker | EER "
        "| FRR at the default threshold |"
    )
    print("| --- | --- | --- | --- | --- |")
    for lo, hi in SPEECH_BINS:
        tar = np.array([s for t, s, sp in rows if t and lo <= sp < hi])
        non = np.array([s for t, s, sp in rows if not t and lo <= sp < hi])
        if tar.size == 0 or non.size == 0:
            continue
        label = f"{lo:g}-{hi:g} s" if hi < 99 else f">= {lo:g} s"
        print(
            f"| {label} | {tar.size} | {non.size} | {100 * eer(tar, non)[0]:.2f} % | "
            f"{100 * float(np.mean(tar < threshold)):.2f} % |"
        )


# --- agreement --------------------------------------------------------------------------------------------
def _embed_all(paths: dict[str, Path], model: Path) -> dict[str, np.ndarray]:
    """Unit embeddings of files (name -> path, all under one root) through the service's path, no gate."""
    settings = tool_settings(model)
    manifest = load_manifest(model)
    policy = measuring_policy(settings, manifest, 0.0)
    root = Path("/")
    names = [str(p.resolve()).lstrip("/") for p in paths.values()]

    async def work(engine):
        return await embed_files(engine, names, root, policy, settings)

    embedded = asyncio.run(with_engine(settings, work))
    out = {}
    for key, name in zip(paths, names, strict=True):
        e = embedded.embedding(name)
        if e is not None:
            out[key] = e
    return out


def report_agreement(model: Path, out: Path) -> None:
    spk = speech_files()
    paths = {f"{s}/{f.name}": f for s, fs in spk.items() for f in fs}
    # Degraded enrollment recordings of the same speakers (what a noisy upload looks like).
    out.mkdir(parents=True, exist_ok=True)
    clean = {k: load(p) for k, p in paths.items()}
    for k, x in clean.items():
        for tag, y in (
            ("babble5", mix_at(x, babble(x.size, k.split("/")[0], clean, 11), 5)),
            ("white5", mix_at(x, white(x.size / SR, 12, 1.0), 5)),
        ):
            p = out / tag / k
            if not p.is_file():
                p.parent.mkdir(parents=True, exist_ok=True)
                sf.write(p, y, SR, format="FLAC", subtype="PCM_16")
            paths[f"{tag}:{k}"] = p
    emb = _embed_all(paths, model)
    manifest = load_manifest(model)
    rng = np.random.default_rng(0)
    print(f"model {manifest.model_key()}, cosine threshold {manifest.default_threshold}")
    print()
    print(
        "| voiceprint of | new recording | trials | min | 1st pct | 5th pct | median | 95th pct | max | "
        "below the threshold |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (1, 2, 4, 6):
        rows: dict[str, list[float]] = {
            "same speaker": [],
            "same speaker, babble 5 dB": [],
            "same speaker, white noise 5 dB": [],
            "another speaker": [],
        }
        for speaker, files in spk.items():
            keys = [f"{speaker}/{f.name}" for f in files]
            others = [f"{s}/{f.name}" for s, fs in spk.items() if s != speaker for f in fs]
            for _ in range(30):
                pick = rng.choice(len(keys), size + 1, replace=False)
                voiceprint = normalize_rows(np.sum([emb[keys[i]] for i in pick[:size]], axis=0))[0]
                new = keys[pick[size]]
                rows["same speaker"].append(float(emb[new] @ voiceprint))
                rows["same speaker, babble 5 dB"].append(float(emb[f"babble5:{new}"] @ voiceprint))
                rows["same speaker, white noise 5 dB"].append(float(emb[f"white5:{new}"] @ voiceprint))
                rows["another speaker"].append(
                    float(emb[others[int(rng.integers(len(others)))]] @ voiceprint)
                )
        for what, values in rows.items():
            v = np.array(values)
            below = float(np.mean(v < manifest.default_threshold))
            print(
                f"| {size} | {what} | {v.size} | {v.min():.3f} | {np.percentile(v, 1):.3f} | "
                f"{np.percentile(v, 5):.3f} | {np.median(v):.3f} | {np.percentile(v, 95):.3f} | "
                f"{v.max():.3f} | {100 * below:.1f} % |"
            )


# --- asnorm -----------------------------------------------------------------------------------------------
ASNORM_CONDITIONS = ("clean", "telephone 8 kHz", "babble 10 dB", "white noise 10 dB")


def report_asnorm(model: Path, out: Path) -> None:
    """AS-Norm on the 378 trials (test side clean or degraded, as ``conditions`` writes it), each trial's
    cohort being the mean clean embeddings of the 5 speakers not in the trial (leave two speakers out)."""
    spk = speech_files()
    build_conditions(out)
    trials = read_trials(SPEECH / "trials.txt")
    names = sorted({t.a for t in trials} | {t.b for t in trials})
    paths = {f"{slug(c)}/{n}": out / slug(c) / n for c in ASNORM_CONDITIONS for n in names}
    emb = _embed_all(paths, model)
    means = {
        s: normalize_rows(np.mean([emb[f"clean/{s}/{f.name}"] for f in fs], axis=0))[0]
        for s, fs in spk.items()
    }
    labels = np.array([t.target for t in trials])
    print(
        "| test recordings | cohort | top N | cosine EER | AS-Norm EER | cosine minDCF 0.01 "
        "| AS-Norm minDCF 0.01 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for cond in ASNORM_CONDITIONS:
        a_side = [emb[f"clean/{t.a}"] for t in trials]
        b_side = [emb[f"{slug(cond)}/{t.b}"] for t in trials]
        raw = np.array([float(x @ y) for x, y in zip(a_side, b_side, strict=True)])
        m_cos = compute_metrics("cosine", raw[labels], raw[~labels])
        for label, exclude in (("5 speakers not in the trial", True), ("all 7 (the trial's own too)", False)):
            for top_n in (3, 5):
                normed = []
                for t, x, y, s in zip(trials, a_side, b_side, raw, strict=True):
                    speakers = {t.a.split("/")[0], t.b.split("/")[0]}
                    cohort = np.stack([m for name, m in means.items() if not (exclude and name in speakers)])
                    n = min(top_n, cohort.shape[0])

                    def stats(
                        v: np.ndarray, cohort: np.ndarray = cohort, n: int = n
                    ) -> tuple[np.ndarray, np.ndarray]:
                        top = np.sort(cohort @ v)[::-1][:n].astype(np.float64)
                        return np.array([top.mean()]), np.array([max(top.std(), 1e-6)])

                    normed.append(float(as_norm(s, stats(x), stats(y))[0]))
                a = np.array(normed)
                m_as = compute_metrics("asnorm", a[labels], a[~labels])
                print(
                    f"| {cond} | {label} | {top_n} | {100 * m_cos.eer:.2f} % | {100 * m_as.eer:.2f} % | "
                    f"{m_cos.min_dcf[0.01][0]:.3f} | {m_as.min_dcf[0.01][0]:.3f} |"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="section", required=True)
    sub.add_parser("vad")
    c = sub.add_parser("conditions")
    c.add_argument("--out", type=Path, default=REPO / "data" / "accuracy")
    c.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    c.add_argument("--plots", type=Path, help="write the DET figures here (docs/)")
    a = sub.add_parser("agreement")
    a.add_argument("--out", type=Path, default=REPO / "data" / "accuracy")
    a.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    n = sub.add_parser("asnorm")
    n.add_argument("--out", type=Path, default=REPO / "data" / "accuracy")
    n.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    if args.section == "vad":
        report_vad()
    elif args.section == "conditions":
        report_conditions(args.out, args.model, args.plots)
    elif args.section == "agreement":
        report_agreement(args.model, args.out)
    else:
        report_asnorm(args.model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
