"""Inference backends: the ``EmbeddingBackend`` protocol and its ONNX Runtime implementation.

A backend is used from ONE thread (the engine's worker); it is not required to be thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from app.core.process import available_cpus
from app.core.settings import CudnnConvAlgoSearch, ProviderName
from app.engine.config import EngineConfig
from app.engine.manifest import GRAPH_FILE, ManifestError, ModelManifest, check_graph_io, load_manifest
from app.engine.shapes import ShapePlan

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_PROVIDER_NAMES: dict[str, str] = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}

# Length buckets. On GPUs a small, fixed set of shapes (``app.engine.shapes.ShapePlan``: lengths in
# ~25 % steps, batch sizes in powers of two), so TensorRT profiles / cuDNN algorithm choices are reused
# and warm-up visits every shape. On CPU each padded sample is paid in compute and shape changes cost
# nothing, so the samples dimension is padded to a fine step (100 ms: <= 3 % waste on a 3 s utterance).
CPU_BUCKET_SECONDS = 0.1
# The longest length a GPU shape plan covers when the backend is given none (``max_samples``).
GPU_PLAN_DEFAULT_SECONDS = 30.0
# Without a setting: cuDNN's heuristic pick, no timed trials, so start-up and any unplanned shape stay
# cheap; gpu_check (bench/gpu_check.py) measures it against EXHAUSTIVE. See docs/performance.md.
DEFAULT_CUDNN_CONV_ALGO_SEARCH: CudnnConvAlgoSearch = "HEURISTIC"


class ProviderUnavailable(RuntimeError):
    """None of the requested execution providers can run here."""


@runtime_checkable
class EmbeddingBackend(Protocol):
    """``embed(audio [B, N] float32, lengths [B] int64) -> [B, dim] float32``, on one thread."""

    @property
    def dim(self) -> int: ...

    @property
    def provider(self) -> str: ...

    def bucket(self, n_samples: int) -> int:
        """Padded length (samples) a batch whose longest item has ``n_samples`` is run with."""
        ...

    def embed(self, audio: Float32Array, lengths: Int64Array) -> Float32Array: ...

    def warmup(self, *, max_batch_size: int, max_samples: int, max_batch_samples: int) -> int:
        """Run the shapes serving will use; returns how many warm-up batches ran."""
        ...

    @property
    def measured_samples_per_s(self) -> float | None:
        """Throughput seen during warm-up (padded samples per second), None when not measured."""
        ...


def pad_batch(waveforms: Sequence[Float32Array], padded_samples: int) -> tuple[Float32Array, Int64Array]:
    """Stack waveforms into a zero-padded [B, padded_samples] batch plus their true lengths."""
    audio = np.zeros((len(waveforms), padded_samples), dtype=np.float32)
    lengths = np.empty(len(waveforms), dtype=np.int64)
    for i, wave in enumerate(waveforms):
        audio[i, : wave.shape[0]] = wave
        lengths[i] = wave.shape[0]
    return audio, lengths


def run_padded(backend: EmbeddingBackend, waveforms: Sequence[Float32Array]) -> tuple[Float32Array, int]:
    """Embed waveforms as one batch padded to the backend's length bucket: [B, dim] and the padded length.

    The one place a batch is padded: the batcher and the synchronous path (``embed_waveforms``) both
    come through here, so a waveform gets the same padding, hence the same embedding, on either path.
    """
    padded = backend.bucket(max(int(w.shape[0]) for w in waveforms))
    audio, lengths = pad_batch(waveforms, padded)
    return backend.embed(audio, lengths), padded


def cuda_device_present() -> bool:
    """Is there a CUDA device the driver can see (without importing torch)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0:
        return False
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def resolve_providers(requested: Sequence[ProviderName] | str) -> list[str]:
    """Settings' provider preference -> ORT provider names that this onnxruntime build has.

    "auto" = CUDA (then CPU) when onnxruntime exposes CUDAExecutionProvider and a GPU is present,
    else CPU. An explicit list keeps its order and drops what this build lacks (logged); nothing
    left is an error, so asking only for "cuda" on a CPU build fails start-up instead of silently
    running on CPU.
    """
    available = set(ort.get_available_providers())
    if requested == "auto":
        if CUDA in available and cuda_device_present():
            return [CUDA, CPU]
        return [CPU]
    if isinstance(requested, str):
        raise ValueError(f"providers must be 'auto' or a list, got {requested!r}")
    chosen: list[str] = []
    for name in requested:
        ort_name = _PROVIDER_NAMES[name]
        if ort_name not in available:
            log.warning("execution provider %s not available in this onnxruntime build; skipped", ort_name)
            continue
        if ort_name in (CUDA, TENSORRT) and not cuda_device_present():
            log.warning("execution provider %s requested but no CUDA device is visible; skipped", ort_name)
            continue
        if ort_name not in chosen:
            chosen.append(ort_name)
    if not chosen:
        raise ProviderUnavailable(
            f"none of the requested execution providers {list(requested)} can run here "
            f"(onnxruntime {ort.__version__} offers {sorted(available)})"
        )
    return chosen


def session_options(threads: int) -> ort.SessionOptions:
    """How every session of the engine runs (the embedding graph and the VAD)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's CPU threads otherwise spin after each batch, taking the cores the event loop and
    # the decoding threads need: at twice the sustainable load, 429 p99 35 vs 43 ms and 5 % more
    # throughput without spinning (bench_load overload, 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's warnings about shape inference are noise here
    return options


class OnnxBackend:
    """One ONNX Runtime session over a VoxGate graph (``audio``, ``lengths`` -> ``embedding``)."""

    def __init__(
        self,
        model_dir: Path,
        manifest: ModelManifest,
        *,
        providers: Sequence[ProviderName] | str = "auto",
        intra_op_threads: int = 0,
        tensorrt_cache_dir: Path | None = None,
        max_batch_size: int = 32,
        max_samples: int | None = None,
        max_batch_samples: int | None = None,
        cudnn_conv_algo_search: CudnnConvAlgoSearch = DEFAULT_CUDNN_CONV_ALGO_SEARCH,
        plan_shapes: bool | None = None,
    ) -> None:
        """``plan_shapes``: run every batch as a shape of a ``ShapePlan``; None = on CUDA/TensorRT only
        (True on CPU shows what the plan's padding costs there, and lets tests run it)."""
        self.manifest = manifest
        self._dim = manifest.embedding_dim
        chosen = resolve_providers(providers)
        threads = intra_op_threads or available_cpus()
        options = session_options(threads)
        self._max_samples = max_samples
        self._measured_samples_per_s: float | None = None
        self._warm_samples = 0  # the largest batch (samples, all rows) the warm-up ran
        self._shrink_arena = ort.RunOptions()
        self._shrink_arena.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._cudnn_conv_algo_search = cudnn_conv_algo_search
        self._cpu_step = max(1, round(CPU_BUCKET_SECONDS * manifest.sample_rate))
        # GPU: the fixed set of shapes this session runs (None on CPU).
        self._plan: ShapePlan | None = None
        if plan_shapes or (plan_shapes is None and chosen[0] in (CUDA, TENSORRT)):
            top = max_samples or round(GPU_PLAN_DEFAULT_SECONDS * manifest.sample_rate)
            budget = max_batch_samples or max_batch_size * top
            self._plan = ShapePlan(manifest.sample_rate, top, max_batch_size, budget)
        provider_args = [
            (name, self._provider_options(name, tensorrt_cache_dir, max_batch_size, max_samples))
            for name in chosen
        ]
        graph = model_dir / GRAPH_FILE
        try:
            self._session = ort.InferenceSession(str(graph), sess_options=options, providers=provider_args)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ManifestError(f"{graph}: onnxruntime cannot load the graph: {exc}") from exc
        self._check_io()
        # ORT silently falls back when a provider fails to initialise; report what really runs.
        self._provider: str = self._session.get_providers()[0]
        self._use_io_binding = self._provider in (CUDA, TENSORRT)
        if self._provider == CPU and plan_shapes is None:
            self._plan = None  # fell back to CPU: its fine buckets, no planned shapes
        if self._provider != chosen[0]:
            log.warning("execution provider %s requested but session runs on %s", chosen[0], self._provider)
        if manifest.precision == "int8" and self._provider == CUDA:
            # The CUDA provider has no int8 convolution: each one would run dequantise -> float Conv.
            log.warning("int8 graph on the CUDA provider runs slower than fp32; serve an fp16 graph on GPUs")
        log.info(
            "inference backend ready",
            extra={
                "provider": self._provider,
                "providers": self._session.get_providers(),
                "intra_op_threads": threads,
                "bucket_samples": self.bucket_step,
                "planned_shapes": None if self._plan is None else len(self._plan.shapes),
                "cudnn_conv_algo_search": self._cudnn_conv_algo_search if self._provider == CUDA else None,
                "model": manifest.name,
            },
        )

    @classmethod
    def from_config(cls, config: EngineConfig) -> OnnxBackend:
        """Load ``config.model_dir``; fails clearly on any contract mismatch."""
        manifest = load_manifest(config.model_dir)
        longest = (
            manifest.segment_seconds if manifest.segment_seconds is not None else config.max_audio_seconds
        )
        options = config.backend
        return cls(
            config.model_dir,
            manifest,
            providers=options.providers,
            intra_op_threads=options.intra_op_threads,
            tensorrt_cache_dir=options.tensorrt_cache_dir,
            max_batch_size=options.max_batch_size,
            max_samples=math.ceil(longest * manifest.sample_rate),
            max_batch_samples=round(config.max_batch_audio_seconds * manifest.sample_rate),
            cudnn_conv_algo_search=options.cudnn_conv_algo_search,
        )

    def _provider_options(
        self, name: str, cache_dir: Path | None, max_batch_size: int, max_samples: int | None
    ) -> dict[str, Any]:
        if name == TENSORRT:
            opts: dict[str, Any] = {
                "trt_fp16_enable": self.manifest.precision == "fp16",
                # QDQ graphs carry their own scales; TensorRT needs int8 allowed to use them.
                "trt_int8_enable": self.manifest.precision == "int8",
            }
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                opts.update(
                    trt_engine_cache_enable=True,
                    trt_engine_cache_path=str(cache_dir),
                    trt_timing_cache_enable=True,
                    trt_timing_cache_path=str(cache_dir),
                )
            if max_samples is not None:
                # One explicit profile covering every bucket: no engine rebuild when a new shape shows up.
                top = self.bucket(max_samples)
                opts.update(
                    trt_profile_min_shapes=f"audio:1x{self.bucket_step},lengths:1",
                    trt_profile_opt_shapes=f"audio:{max_batch_size}x{top},lengths:{max_batch_size}",
                    trt_profile_max_shapes=f"audio:{max_batch_size}x{top},lengths:{max_batch_size}",
                )
            return opts
        if name == CUDA:
            # Searched once per convolution and input shape; the shape plan keeps those few.
            return {"cudnn_conv_algo_search": self._cudnn_conv_algo_search, "do_copy_in_default_stream": True}
        return {}

    def _check_io(self) -> None:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        check_graph_io(
            self.manifest,
            [(i.name, i.shape) for i in inputs],
            [(o.name, o.shape) for o in outputs],
        )
        want = {inputs[0].name: "tensor(float)", inputs[1].name: "tensor(int64)"}
        for arg in (*inputs, *outputs):
            expected = want.get(arg.name, "tensor(float)")
            if arg.type != expected:
                raise ManifestError(f"graph {arg.name!r} has type {arg.type}, the contract says {expected}")

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def bucket_step(self) -> int:
        """The smallest length bucket (CPU: every bucket is a multiple of it)."""
        return self._plan.lengths[0] if self._plan is not None else self._cpu_step

    @property
    def shape_plan(self) -> ShapePlan | None:
        """The shapes a GPU session runs (None on CPU)."""
        return self._plan

    def bucket(self, n_samples: int) -> int:
        if self._plan is not None:
            return self._plan.bucket(n_samples)
        step = self._cpu_step
        return max(step, -(-n_samples // step) * step)

    def embed(self, audio: Float32Array, lengths: Int64Array) -> Float32Array:
        if audio.ndim != 2 or lengths.shape != (audio.shape[0],):
            raise ValueError(f"bad batch shapes audio {audio.shape}, lengths {lengths.shape}")
        # Callers pad to ``bucket`` (``run_padded``); any width runs, the graph masks by ``lengths``.
        rows = audio.shape[0]
        if self._plan is not None:
            audio, lengths = self._to_planned_shape(audio, lengths)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if self._use_io_binding:
            out = self._run_bound(audio, lengths)
        else:
            # A batch larger than any warm-up ran grows ONNX Runtime's memory arena, which keeps what it
            # grows by: shrink it back after such a run, so RSS returns to its warm-up size (about 1 %
            # slower for that one run; measured 62.4 vs 63.3 ms on 8 x 3 s with the default model).
            shrink = self._shrink_arena if audio.size > self._warm_samples else None
            out = self._session.run(None, {"audio": audio, "lengths": lengths}, shrink)[0]
        result = np.asarray(out, dtype=np.float32)
        if result.shape != (audio.shape[0], self._dim):
            raise ManifestError(f"graph returned {result.shape}, want {(audio.shape[0], self._dim)}")
        return result[:rows]

    def _to_planned_shape(self, audio: Float32Array, lengths: Int64Array) -> tuple[Float32Array, Int64Array]:
        """GPU: grow a batch to its planned shape (a shape warm-up ran), so no request pays a first-run
        cost (a cuDNN search): zero columns up to the length bucket, copies of the first row up to the
        planned batch size (their outputs are dropped). The graph masks by ``lengths``."""
        assert self._plan is not None
        rows, width = audio.shape
        want_rows, want_width = self._plan.run_shape(rows, width)
        if want_width > width:
            audio = np.pad(audio, ((0, 0), (0, want_width - width)))
        if want_rows > rows:
            extra = want_rows - rows
            audio = np.concatenate([audio, np.repeat(audio[:1], extra, axis=0)])
            lengths = np.concatenate([lengths, np.repeat(lengths[:1], extra)])
        return audio, lengths

    def _run_bound(self, audio: Float32Array, lengths: Int64Array) -> Float32Array:
        # Inputs copied host->device once, output left on the device and copied back once.
        binding = self._session.io_binding()
        binding.bind_cpu_input("audio", audio)
        binding.bind_cpu_input("lengths", lengths)
        binding.bind_output("embedding", "cuda")
        self._session.run_with_iobinding(binding)
        out: Float32Array = binding.copy_outputs_to_cpu()[0]
        return out

    @property
    def measured_samples_per_s(self) -> float | None:
        return self._measured_samples_per_s

    def warmup_shapes(
        self, *, max_batch_size: int, max_samples: int, max_batch_samples: int
    ) -> list[tuple[int, int]]:
        """(batch, samples) shapes to run before serving.

        GPU: every shape of the session's plan (``shape_plan``; 73 for a 30 s segment, batches of up
        to 32 and 240 s of padded audio) within these limits, largest first, so cuDNN/TensorRT choices
        are made now, not on a user request; ``embed`` runs every batch as one of them.
        CPU: shape changes are cheap, so only the smallest and the largest length, at batch 1 and 2,
        to grow the memory arena and let the thread pool spin up.
        """
        top = self.bucket(min(max_samples, self._max_samples or max_samples))
        if self._plan is None:
            lengths = sorted({self._cpu_step, top})
            return [(b, n) for n in lengths for b in sorted({1, min(2, max_batch_size)})]
        return [
            (b, n)
            for b, n in self._plan.shapes
            if n <= top and b <= max_batch_size and (b == 1 or b * n <= max_batch_samples)
        ]

    def warmup(self, *, max_batch_size: int, max_samples: int, max_batch_samples: int) -> int:
        shapes = self.warmup_shapes(
            max_batch_size=max_batch_size, max_samples=max_samples, max_batch_samples=max_batch_samples
        )
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        timed_samples, timed_seconds = 0, 0.0
        for i, (b, n) in enumerate(shapes):
            audio = (0.05 * rng.standard_normal((b, n))).astype(np.float32)
            t0 = time.perf_counter()
            self.embed(audio, np.full(b, n, dtype=np.int64))
            if i > 0:  # the first batch pays one-time costs (arena growth, thread start)
                timed_samples += b * n
                timed_seconds += time.perf_counter() - t0
        if timed_seconds > 0:
            self._measured_samples_per_s = timed_samples / timed_seconds
        self._warm_samples = max((b * n for b, n in shapes), default=0)
        log.info(
            "warm-up done",
            extra={
                "batches": len(shapes),
                "audio_seconds": round(sum(b * n for b, n in shapes) / self.manifest.sample_rate, 1),
                "seconds": round(time.perf_counter() - started, 2),
                "provider": self._provider,
                "cudnn_conv_algo_search": self._cudnn_conv_algo_search if self._provider == CUDA else None,
            },
        )
        return len(shapes)
