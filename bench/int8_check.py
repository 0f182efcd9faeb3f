"""Accuracy of int8 bundles on held-out speech, on this CPU and on emulated AVX2 kernels (QEMU).

ONNX Runtime picks its int8 kernels from the CPU's features at run time: VNNI (exact int32 dot products)
where AVX-512 VNNI or AVX-VNNI is present, otherwise AVX2 / AVX-512BW ``vpmaddubsw``, which saturates
pairs of u8 x s8 products at int16. An int8 graph must compute the same embeddings on both. A machine
with VNNI can still run the other kernels: QEMU's user-mode emulator (Debian ``qemu-user``) with
``-cpu Haswell`` makes CPUID report AVX2 without AVX-512 or VNNI, so MLAS dispatches its AVX2 kernels.
Emulation is slow (TitaNet-L: about 12 s per 3 s clip on one Zen 4 core) and says nothing about speed.

    python -m bench.int8_check --fp32 FP32_DIR --int8 INT8_DIR [--int8 ...] --speech tests/data/speech \
        [--unseen] [--emulate Haswell] [--seconds 3] [--per-speaker 4] [--join 30]

For each int8 bundle: the cosine of its embeddings to the float32 bundle's, on the recordings of the
speakers its manifest lists as held out (or all of ``--speech`` when it lists none), or with
``--unseen`` of the speakers it lists neither as calibration nor as held out (never heard by the
export), in each condition of the export's gate (``app.audio.conditions``); min and mean, natively and
(``--emulate``) under QEMU. float32 references are computed natively. ``--join 30`` joins each speaker's
recordings end to end into clips of 30 s (the longest input one pass of a NeMo bundle's graph sees):
the telephone band's edge values grow with the length.

The module doubles as the child process QEMU runs (``--child``): that path imports only numpy and
onnxruntime, so that it starts in seconds under emulation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # the QEMU child imports nothing of app: it has to start in seconds under emulation
    from app.export.quantize import Recording

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
QEMU = "qemu-x86_64"


def qemu_binary() -> str | None:
    """The user-mode x86-64 emulator, when installed (and the machine is x86-64 itself)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    return shutil.which(QEMU)


def _embed_native(graphs: Sequence[Path], waves: Sequence[Float32Array], threads: int) -> list[Float64Array]:
    import onnxruntime as ort

    results = []
    for graph in graphs:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        rows = [
            session.run(None, {"audio": w[None, :], "lengths": np.array([w.size], dtype=np.int64)})[0][0]
            for w in waves
        ]
        results.append(np.stack(rows).astype(np.float64))
    return results


def cpu_features() -> dict[str, bool]:
    """The SIMD features this process's CPU reports (numpy's run-time CPUID detection)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return {str(k): bool(v) for k, v in __cpu_features__.items()}


def embed_graphs(
    graphs: Sequence[Path],
    waves: Sequence[Float32Array],
    *,
    emulate_cpu: str | None = None,
    threads: int = 2,
    timeout_s: float = 3600.0,
) -> tuple[list[Float64Array], dict[str, bool]]:
    """Embeddings of ``waves`` (one at a time) by each graph on the CPU provider, and the CPU features
    the embedding process saw; with ``emulate_cpu`` (a QEMU CPU model, e.g. ``Haswell``) under QEMU."""
    if emulate_cpu is None:
        return _embed_native(graphs, waves, threads), cpu_features()
    qemu = qemu_binary()
    if qemu is None:
        raise RuntimeError(f"{QEMU} is not installed (Debian: apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="voxgate-emulated-") as tmp:
        inputs, outputs = Path(tmp) / "waves.npz", Path(tmp) / "out.npz"
        np.savez(inputs, *waves)
        cmd = [qemu, "-cpu", emulate_cpu, sys.executable, str(Path(__file__).resolve()), "--child"]
        cmd += [str(inputs), str(outputs), str(threads), *map(str, graphs)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"emulated run failed ({done.returncode}): {done.stderr[-2000:]}")
        with np.load(outputs) as data:
            embeddings = [np.asarray(data[f"graph{i}"], dtype=np.float64) for i in range(len(graphs))]
            features: dict[str, bool] = json.loads(str(data["features"]))
    return embeddings, features


def _child(argv: Sequence[str]) -> int:
    inputs, outputs, threads, *graphs = argv
    with np.load(inputs) as data:
        waves = [np.asarray(data[f"arr_{i}"], dtype=np.float32) for i in range(len(data.files))]
    embeddings = _embed_native([Path(g) for g in graphs], waves, int(threads))
    arrays: dict[str, Any] = {f"graph{i}": e for i, e in enumerate(embeddings)}
    np.savez(outputs, features=np.array(json.dumps(cpu_features())), **arrays)
    return 0


def cosines(a: Float64Array, b: Float64Array) -> Float64Array:
    """Row-wise cosine similarity."""
    result: Float64Array = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


def _joined(recordings: Sequence[Recording], samples: int) -> list[Recording]:
    """Each speaker's recordings end to end, cut into whole clips of ``samples`` (the rest dropped)."""
    from app.export.quantize import Recording

    clips = []
    for speaker in sorted({r.speaker or "" for r in recordings}):
        wave = np.concatenate([r.wave for r in recordings if (r.speaker or "") == speaker])
        for i in range(wave.size // samples):
            clips.append(Recording(wave[i * samples : (i + 1) * samples], speaker or None, f"{speaker}#{i}"))
    return clips


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, required=True, help="the float32 bundle the int8 ones came from")
    p.add_argument("--int8", type=Path, action="append", required=True, help="an int8 bundle (repeatable)")
    p.add_argument("--speech", type=Path, required=True, help="speech, one folder per speaker")
    p.add_argument("--unseen", action="store_true", help="the speakers the export never heard instead")
    p.add_argument("--emulate", metavar="CPU", help="also run the int8 graphs under QEMU -cpu CPU (Haswell)")
    p.add_argument("--seconds", type=float, default=30.0, help="first seconds of each recording (30)")
    p.add_argument("--per-speaker", type=int, default=0, help="first N recordings per speaker (0: all)")
    p.add_argument(
        "--join", type=float, metavar="SECONDS", help="each speaker's recordings joined, cut to clips"
    )
    p.add_argument("--as-recorded", action="store_true", help="only the recordings as recorded")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        return _child(sys.argv[2:])
    args = _parse(argv)
    from app.audio.conditions import AS_RECORDED, CONDITION_NAMES, derive
    from app.engine.manifest import GRAPH_FILE, load_manifest
    from app.export.quantize import load_recordings

    recordings = load_recordings(args.speech)
    rows = []
    for int8_dir in args.int8:
        info = load_manifest(int8_dir).quantization
        if info is None:
            raise SystemExit(f"{int8_dir}: not an int8 bundle")
        if args.unseen:
            heard = {*info.calibration_speakers, *info.heldout_speakers}
            chosen = [r for r in recordings if r.speaker is not None and r.speaker not in heard]
        else:
            speakers = set(info.heldout_speakers)
            chosen = [r for r in recordings if not speakers or r.speaker in speakers]
        if args.per_speaker:
            by_speaker: dict[str | None, int] = {}
            kept = []
            for r in chosen:
                by_speaker[r.speaker] = by_speaker.get(r.speaker, 0) + 1
                if by_speaker[r.speaker] <= args.per_speaker:
                    kept.append(r)
            chosen = kept
        if args.join:
            chosen = _joined(chosen, int(args.join * 16000))
        limit = int((args.join or args.seconds) * 16000)
        conditions = (AS_RECORDED,) if args.as_recorded else CONDITION_NAMES
        waves = [derive(condition, r.wave[:limit]) for condition in conditions for r in chosen]
        labels = [condition for condition in conditions for _ in chosen]
        (ref, native), _ = embed_graphs([args.fp32 / GRAPH_FILE, int8_dir / GRAPH_FILE], waves)
        runs = {"native": cosines(native, ref)}
        if args.emulate:
            (emulated,), features = embed_graphs([int8_dir / GRAPH_FILE], waves, emulate_cpu=args.emulate)
            seen = ", ".join(k for k in ("AVX2", "AVX512F", "AVX512BW", "AVX512VNNI") if features.get(k))
            print(f"# {int8_dir}: emulated CPU reports {seen or 'none of AVX2/AVX-512'}", file=sys.stderr)
            runs[f"emulated {args.emulate}"] = cosines(emulated, ref)
            runs["emulated vs native int8"] = cosines(emulated, native)
        speakers_text = ", ".join(sorted({r.speaker or "?" for r in chosen}))
        for run, values in runs.items():
            by_condition = [float(np.min(values[[lab == name for lab in labels]])) for name in conditions]
            rows.append(
                f"| {int8_dir.name} | {run} | {len(chosen)} of {speakers_text} | "
                f"{float(values.min()):.6f} | {float(values.mean()):.6f} | "
                + " / ".join(f"{v:.6f}" for v in by_condition)
                + " |"
            )
    names = " / ".join((AS_RECORDED,) if args.as_recorded else CONDITION_NAMES)
    print(f"| bundle | kernels | recordings | min cosine | mean cosine | min by condition ({names}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
