"""The self-check probe every exported bundle carries (checked at start-up by ``app.engine.selfcheck``).

The probe audio is real speech shipped inside the package (``app/assets/probe/probe.flac``: two
LibriSpeech utterances, CC BY 4.0, attribution in ``app/assets/probe/README.md``), so an exporter run
from an installed package finds it. ``write_probe`` copies it beside the graph and records, per clip, the
embedding of the float32 model that made the graph; ``copy_probe`` carries it over to a graph derived
from that bundle (int8), and ``add_condition_clips`` gives an int8 bundle's probe each clip in the
telephone band too (``INT8_PROBE_CONDITIONS``). No torch at import: ``app.export.quantize`` uses both.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app.audio.conditions import TELEPHONE, derive
from app.core.paths import sha256_file
from app.engine.manifest import PROBE_FILE, ManifestError, ModelManifest, ProbeClip, ProbeInfo
from app.engine.selfcheck import read_probe_clips

if TYPE_CHECKING:
    import torch

Float32Array = npt.NDArray[np.float32]
# One clip alone (16 kHz mono float32) -> its embedding [D], as the float32 reference model computes it.
EmbedClip = Callable[[Float32Array], npt.ArrayLike]

PROBE_SAMPLE_RATE = 16000
PROBE_ASSET_SHA256 = "c367d15ea8bdc50832af6d4b3db7a3711039e82bfcfd378053c5fbd402a7f832"
# (first sample, one past the last, source) of each clip in the asset: two whole utterances, unchanged.
PROBE_CLIPS = (
    (0, 45360, "LibriSpeech test-other 1688-142285-0002 (LibriVox reader 1688, male, 2.835 s)"),
    (45360, 92480, "LibriSpeech test-other 1998-15444-0008 (LibriVox reader 1998, female, 2.945 s)"),
)
# The conditions an int8 bundle's probe adds to its clips: the export calibrates and gates on every
# condition, and the telephone band is the one whose activations a wideband calibration would not cover.
INT8_PROBE_CONDITIONS = (TELEPHONE,)
PROBE_ATTRIBUTION = (
    "LibriSpeech (c) 2014 by Vassil Panayotov, licensed under CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/); two test-other utterances, samples unchanged "
    "(details: app/assets/probe/README.md in the VoxGate package)"
)


def probe_asset() -> Path:
    """The packaged probe audio (a real file: the package is installed unzipped)."""
    path = Path(str(resources.files("app.assets") / "probe" / PROBE_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"the packaged self-check probe is missing: {path}")
    return path


def write_probe(out_dir: Path, embed_clip: EmbedClip, *, reference_model: str) -> ProbeInfo:
    """Copy the probe audio into ``out_dir`` and compute each clip's reference embedding.

    The result goes into the bundle's manifest (``ModelManifest.probe``). ``embed_clip`` must be the
    float32 model that made the graph (PyTorch, eager), run on one clip at a time.
    """
    asset = probe_asset()
    if sha256_file(asset) != PROBE_ASSET_SHA256:
        raise ManifestError(f"{asset}: not the probe audio this exporter was written for (sha256 differs)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PROBE_FILE
    shutil.copyfile(asset, target)
    waves = read_probe_clips(target, PROBE_SAMPLE_RATE, [(start, end) for start, end, _ in PROBE_CLIPS])
    clips = [
        ProbeClip(start=start, end=end, source=source, reference=_reference(embed_clip, wave, source))
        for (start, end, source), wave in zip(PROBE_CLIPS, waves, strict=True)
    ]
    return ProbeInfo(
        sha256=sha256_file(target),
        sample_rate=PROBE_SAMPLE_RATE,
        clips=tuple(clips),
        reference_model=reference_model,
        attribution=PROBE_ATTRIBUTION,
    )


def _reference(embed_clip: EmbedClip, wave: Float32Array, source: str) -> tuple[float, ...]:
    embedding = np.asarray(embed_clip(wave), dtype=np.float32).reshape(-1)
    if not np.isfinite(embedding).all():
        raise ManifestError(f"the reference model's embedding of probe clip {source!r} is not finite")
    # 9 significant digits: every float32 survives the trip through JSON exactly.
    return tuple(float(f"{x:.9g}") for x in embedding.tolist())


def add_condition_clips(
    probe_dir: Path,
    probe: ProbeInfo,
    embed_clip: EmbedClip,
    *,
    conditions: Sequence[str] = INT8_PROBE_CONDITIONS,
    reference: str,
) -> ProbeInfo:
    """``probe`` (its audio in ``probe_dir``) with each clip as stored also in each of ``conditions``.

    A derived clip names its condition and the same samples; the self-check derives it from them with
    ``app.audio.conditions``, as this does. ``embed_clip`` computes its reference (the float32 graph,
    described by ``reference``: it goes into each derived clip's ``source``).
    """
    stored = [clip for clip in probe.clips if clip.condition is None]
    waves = read_probe_clips(probe_dir / probe.file, probe.sample_rate, [(c.start, c.end) for c in stored])
    derived = []
    for condition in conditions:
        for clip, wave in zip(stored, waves, strict=True):
            source = f"{clip.source}; {condition} (derived); reference: {reference}"
            derived.append(
                clip.model_copy(
                    update={
                        "source": source,
                        "condition": condition,
                        "reference": _reference(embed_clip, derive(condition, wave), source),
                    }
                )
            )
    return probe.model_copy(update={"clips": (*stored, *derived)})


def copy_probe(src_dir: Path, dst_dir: Path, manifest: ModelManifest) -> None:
    """Give a graph derived from the bundle in ``src_dir`` (e.g. its int8 graph) the same probe.

    The derived manifest keeps ``manifest.probe`` (references from the float32 model); this copies the
    audio it names. A bundle without a probe has nothing to copy.
    """
    if manifest.probe is None:
        return
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_dir / manifest.probe.file, dst_dir / manifest.probe.file)


def torch_reference(module: torch.nn.Module) -> EmbedClip:
    """``embed_clip`` for a VoxGate ``forward(audio [B, N], lengths [B])`` module: eager, float32, alone."""
    import torch

    module = module.eval()
    if any(p.dtype != torch.float32 for p in module.parameters()):
        raise ManifestError("the probe's reference model must hold float32 weights")

    def embed(wave: Float32Array) -> npt.ArrayLike:
        audio = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None, :]
        lengths = torch.tensor([wave.shape[0]], dtype=torch.int64)
        with torch.no_grad():
            out = module(audio, lengths)
        result: npt.ArrayLike = out[0].numpy()
        return result

    return embed
