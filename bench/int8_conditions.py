"""Which int8 export holds in every recording condition, per model: calibrated on wideband speech only,
or on every condition (what ``voxgate export --precision int8`` does), all-int8 or with the exporter's
float32 fallback. A measurement, not a test.

    python -m bench.int8_conditions [--models titanet-large ecapa_tdnn titanet-small \\
        titanet-large-reduced ecapa_tdnn-reduced SpeakerNet_verification_3x2x256-reduced] \\
        [--min-cosine 0.995] [--speech tests/data/speech] [--cache data/bench-models]

Models: a random-init architecture (full size, exported into ``--cache`` as ``bench.bench_engine``
does) or a reduced NeMo fixture of tests/data/nemo. The export sees five speakers (``EXPORT_SPEAKERS``):
its default split holds two of them out for the gate and calibrates on three. Two more speakers
(``UNSEEN_SPEAKERS``, one per corpus) it never hears. For each model and calibration:

* ``all-int8``: every encoder convolution in int8, no gate;
* ``gated``: the exporter's own procedure at ``--min-cosine`` (convolutions kept float32 until every
  condition of the held-out speakers reaches it; refused when half would have to be);

and, per graph, the worst cosine to float32 in each condition (``app.audio.conditions``) on the gate's
speakers and on the unseen ones. A last table measures the float32 reference itself: the cosine
between its embedding of a recording and of the same recording plus white noise at -100 dBFS, per
condition (inaudible; 16-bit audio has more). Where that is far from 1, float32's embedding depends on
details nobody hears, and no int8 graph can be held closer to it than it is to itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.audio.conditions import AS_RECORDED, CLIPPED, CONDITION_NAMES, QUIETER, derive
from app.core.paths import REPO_ROOT
from app.engine.manifest import GRAPH_FILE
from app.export.quantize import (
    DEFAULT_MIN_COSINE,
    QuantizationError,
    Recording,
    load_recordings,
    quantize_graph,
    split_calibration,
)
from bench.int8_check import cosines, embed_graphs

Float32Array = npt.NDArray[np.float32]

EXPORT_SPEAKERS = ("librispeech_1688", "librispeech_1998", "librispeech_3080", "librispeech_533", "vctk_p225")
UNSEEN_SPEAKERS = ("librispeech_2033", "vctk_p226")
# What int8 exports calibrated on before the telephone band and noise were added: the recording in
# three levels. The exporter now calibrates on every condition.
CALIBRATIONS: dict[str, tuple[str, ...]] = {
    "wideband levels": (AS_RECORDED, QUIETER, CLIPPED),
    "every condition": CONDITION_NAMES,
}
DITHER = 1e-5  # -100 dBFS white noise: the reference-stability probe, nothing the service derives
NEMO_FIXTURES = REPO_ROOT / "tests" / "data" / "nemo"


def fp32_bundle(spec: str, cache: Path) -> Path:
    """The float32 bundle of a random-init architecture or a reduced NeMo fixture (cached)."""
    fixture = NEMO_FIXTURES / spec / f"{spec}.nemo"
    if not fixture.is_file():
        from bench.bench_engine import prepare_model

        return prepare_model(spec, cache, "fp32")
    out = cache / spec
    if not (out / GRAPH_FILE).is_file():
        from app.export.nemo_export import export_nemo_checkpoint

        export_nemo_checkpoint(fixture, out, precision="fp32", name=None)
    return out


def worst_by_condition(fp32: Path, int8: Path, waves: Sequence[Float32Array]) -> list[float]:
    """The worst cosine, int8 to float32, of ``waves`` in each condition (in ``CONDITION_NAMES`` order)."""
    derived = [derive(condition, w) for condition in CONDITION_NAMES for w in waves]
    (reference, quantised), _ = embed_graphs([fp32, int8], derived)
    values = cosines(quantised, reference).reshape(len(CONDITION_NAMES), len(waves))
    return [float(v) for v in values.min(axis=1)]


def reference_stability(fp32: Path, waves: Sequence[Float32Array]) -> list[float]:
    """Worst cosine between float32's embedding of each derived recording and of it plus -100 dBFS noise."""
    rng = np.random.default_rng(1)
    derived = [derive(condition, w) for condition in CONDITION_NAMES for w in waves]
    dithered = [(w + DITHER * rng.standard_normal(w.size)).astype(np.float32) for w in derived]
    (embeddings,), _ = embed_graphs([fp32], [*derived, *dithered])
    values = cosines(embeddings[: len(derived)], embeddings[len(derived) :])
    values = values.reshape(len(CONDITION_NAMES), len(waves))
    return [float(v) for v in values.min(axis=1)]


def _row(*cells: object) -> str:
    return "| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=[
            "titanet-large",
            "ecapa_tdnn",
            "titanet-small",
            "titanet-large-reduced",
            "ecapa_tdnn-reduced",
            "SpeakerNet_verification_3x2x256-reduced",
        ],
    )
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE)
    p.add_argument("--speech", type=Path, default=REPO_ROOT / "tests" / "data" / "speech")
    p.add_argument("--cache", type=Path, default=REPO_ROOT / "data" / "bench-models")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    recordings = load_recordings(args.speech)
    split = split_calibration([r for r in recordings if r.speaker in EXPORT_SPEAKERS])
    unseen = [r.wave for r in recordings if r.speaker in UNSEEN_SPEAKERS]
    gate = [r.wave for r in split.heldout]
    print(
        f"# calibration: {_speakers(split.calibration)}; gate: {_speakers(split.heldout)}; "
        f"unseen: {len(unseen)} recordings of {', '.join(UNSEEN_SPEAKERS)}; --min-cosine {args.min_cosine}",
        flush=True,
    )
    rows, stability = [], []
    for spec in args.models:
        fp32 = fp32_bundle(spec, args.cache)
        graph = fp32 / GRAPH_FILE
        stability.append(_row(spec, *reference_stability(graph, unseen)))
        print(stability[-1], flush=True)
        for calibration, conditions in CALIBRATIONS.items():
            with tempfile.TemporaryDirectory(prefix="voxgate-int8-conditions-") as tmp:
                for kind, min_cosine in (("all-int8", -1.0), ("gated", args.min_cosine)):
                    out = Path(tmp) / f"{kind}.onnx"
                    started = time.perf_counter()
                    try:
                        result = quantize_graph(
                            graph,
                            out,
                            [r.wave for r in split.calibration],
                            gate,
                            min_cosine=min_cosine,
                            calibration_conditions=conditions,
                        )
                    except QuantizationError:
                        rows.append(_row(spec, calibration, kind, "refused (half kept float32)", *[""] * 10))
                        print(rows[-1], flush=True)
                        continue
                    seconds = time.perf_counter() - started
                    kept = f"{len(result.kept_float)} of {len(result.kept_float) + len(result.quantized)}"
                    rows.append(
                        _row(
                            spec,
                            calibration,
                            kind,
                            kept,
                            *result.scores.by_condition().values(),
                            *worst_by_condition(graph, out, unseen),
                        )
                    )
                    print(rows[-1] + f" {seconds:.0f} s", flush=True)
                    if kind == "all-int8" and result.scores.worst >= args.min_cosine:
                        rows.append(
                            _row(spec, calibration, "gated", "the all-int8 graph: passes", *[""] * 10)
                        )
                        break
    names = " / ".join(CONDITION_NAMES)
    print(
        f"\nint8 vs float32, worst cosine per condition ({names}): on the gate's speakers, then unseen ones"
    )
    print(_row("model", "calibrated on", "graph", "float32 convs", *CONDITION_NAMES, *CONDITION_NAMES))
    print(_row(*["---"] * 14))
    print("\n".join(rows))
    print(f"\nfloat32 vs float32 + white noise at -100 dBFS, unseen speakers, worst cosine ({names})")
    print(_row("model", *CONDITION_NAMES))
    print(_row(*["---"] * 6))
    print("\n".join(stability))
    return 0


def _speakers(recordings: Sequence[Recording]) -> str:
    speakers = sorted({r.speaker or "?" for r in recordings})
    return f"{len(recordings)} recordings of {', '.join(speakers)}"


if __name__ == "__main__":
    sys.exit(main())
