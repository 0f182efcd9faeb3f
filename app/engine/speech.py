"""Speech detection as a stage of the engine: the VAD network (``app.audio.vad.SpeechModel``) behind its
own ``DynamicBatcher``, so the recordings of concurrent requests are detected in one batch, on the
execution provider of the embedding graph (CUDA on a GPU host), on a worker thread beside the embedding
worker. The batcher sees it as a backend whose "embedding" of a recording is its row of frame
probabilities; the engine turns that row into speech regions."""

from __future__ import annotations

import logging
import time

import numpy as np
import numpy.typing as npt

from app.audio import vad
from app.core.process import available_cpus
from app.engine.backend import CPU, resolve_providers, session_options
from app.engine.config import BackendOptions

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]

# Length buckets of a VAD batch: whole frames, rounded up to 0.256 s (8 frames) so that recordings of
# similar length share a batch without much padding.
BUCKET_SAMPLES = 8 * vad.FRAME_SAMPLES
# The warm-up batch: what a light load brings (it also measures the first throughput estimate).
WARMUP_BATCH = 4
WARMUP_SECONDS = 3.0


class SpeechBackend:
    """The VAD as a batcher backend: ``embed(audio [B, N], lengths [B]) -> probabilities [B, frames]``."""

    def __init__(self, model: vad.SpeechModel) -> None:
        self._model = model
        self._measured_samples_per_s: float | None = None

    @classmethod
    def from_options(cls, options: BackendOptions) -> SpeechBackend:
        """On the providers the embedding graph is given (the VAD's few operators all run on CUDA)."""
        providers = resolve_providers(options.providers)
        # On a CPU one thread: a second one costs 10-20 % more CPU per second of audio for this small graph
        # (measured 1.93 vs 2.1-2.3 ms), and its batches are not worth splitting.
        threads = 1 if providers[0] == CPU else options.intra_op_threads or available_cpus()
        model = vad.SpeechModel(providers=providers, options=session_options(threads))
        log.info("speech detection ready", extra={"provider": model.provider, "intra_op_threads": threads})
        return cls(model)

    @property
    def dim(self) -> int:
        return 0  # rows have as many frames as the batch's longest recording

    @property
    def provider(self) -> str:
        return self._model.provider

    def bucket(self, n_samples: int) -> int:
        return max(BUCKET_SAMPLES, -(-n_samples // BUCKET_SAMPLES) * BUCKET_SAMPLES)

    def embed(self, audio: Float32Array, lengths: Int64Array) -> Float32Array:
        return self._model.probabilities(audio, [int(n) for n in lengths])

    def warmup(self, *, max_batch_size: int, max_samples: int, max_batch_samples: int) -> int:
        del max_batch_size, max_samples, max_batch_samples  # shape changes are cheap for this graph
        n = round(WARMUP_SECONDS * vad.SAMPLE_RATE)
        audio = (0.05 * np.random.default_rng(0).standard_normal((WARMUP_BATCH, n))).astype(np.float32)
        lengths = np.full(WARMUP_BATCH, n, dtype=np.int64)
        self.embed(audio[:1], lengths[:1])  # one-time costs
        t0 = time.perf_counter()
        self.embed(audio, lengths)
        self._measured_samples_per_s = WARMUP_BATCH * n / max(1e-9, time.perf_counter() - t0)
        return 2

    @property
    def measured_samples_per_s(self) -> float | None:
        return self._measured_samples_per_s


def regions_of(probabilities: Float32Array, n_samples: int) -> list[vad.Region]:
    """A recording's speech regions from its row of a batch's probabilities."""
    return vad.regions_from_probabilities(probabilities[: vad.frames_of(n_samples)], n_samples)
