"""``EmbeddingEngine``: the API's entry point to inference (segmenting, batching, deadlines, readiness)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from app.audio import vad
from app.audio.recording import Recording, SpeechGate
from app.audio.vad import Region
from app.core.errors import (
    DeadlineExceeded,
    EngineUnavailable,
    InvalidAudio,
    InvalidRequest,
    Overloaded,
    RequestCancelled,
)
from app.core.settings import Settings
from app.core.vectors import l2_normalize
from app.engine.backend import EmbeddingBackend, OnnxBackend
from app.engine.batcher import DynamicBatcher, Ticket
from app.engine.config import BatcherConfig, EngineConfig
from app.engine.load import Load
from app.engine.manifest import ModelManifest
from app.engine.metrics import EngineMetrics
from app.engine.segments import SegmentPlan, SegmentPolicy, combine_segments, plan_segments
from app.engine.selfcheck import SelfCheckResult, run_selfcheck
from app.engine.speech import SpeechBackend, regions_of

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

# How often a waiting request asks whether its client is still connected.
DISCONNECT_POLL_S = 0.1
# Shorter input is refused: a few frames give no meaningful embedding and could break a batch.
MIN_SECONDS = 0.1
# Starting guess of an average request's audio, until real requests have been seen.
AVERAGE_REQUEST_SECONDS = 5.0
# Segment planning (VAD over the whole recording) moves off the event loop above this length.
INLINE_PLAN_MAX_SAMPLES = 16000 * 30
# Recordings per speech-detection batch (the VAD's work memory grows with it; see app.audio.vad).
SPEECH_MAX_BATCH = 64
# Speech detection's throughput until measured: 100x real time (one CPU thread does about 500x).
SPEECH_INITIAL_SAMPLES_PER_S = 100.0 * 16000


@dataclass(frozen=True)
class Waiting:
    """How long an operation may take, and how to tell that nobody waits for its answer any more."""

    deadline: float  # time.monotonic()
    is_disconnected: Callable[[], Awaitable[bool]] | None = None


@contextlib.contextmanager
def _outcome(metrics: EngineMetrics) -> Iterator[None]:
    """Count one request of a stage by how it ended (ok, overloaded, deadline_exceeded, cancelled, ...)."""
    status = "failed"
    try:
        yield
        status = "ok"
    except Overloaded:
        status = "overloaded"
        raise
    except DeadlineExceeded:
        status = "deadline_exceeded"
        raise
    except (RequestCancelled, asyncio.CancelledError):
        status = "cancelled"
        raise
    except EngineUnavailable:
        status = "unavailable"
        raise
    finally:
        metrics.requests.labels(outcome=status).inc()


class Engine(Protocol):
    """What the rest of the service uses of inference: the in-process ``EmbeddingEngine``, or a front-end
    worker's ``app.engine.remote.RemoteEngine`` in front of the inference process."""

    @property
    def manifest(self) -> ModelManifest: ...

    @property
    def provider(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    @property
    def selfcheck(self) -> SelfCheckResult | None: ...

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        """Where the engine's own metrics are, when /metrics must add them (None: already in the app's)."""
        ...

    def load(self) -> Load: ...

    async def analyze(
        self,
        recordings: Sequence[Recording],
        waiting: Waiting,
        *,
        gate: SpeechGate | None = None,
        drop_non_speech: bool | None = None,
    ) -> tuple[list[Recording], list[Float32Array]]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class EmbeddingEngine:
    def __init__(
        self,
        backend: EmbeddingBackend,
        manifest: ModelManifest,
        *,
        config: BatcherConfig | None = None,
        request_timeout_s: float = 30.0,
        warmup: bool = True,
        max_audio_seconds: float = 300.0,
        metrics: EngineMetrics | None = None,
        model_dir: Path | None = None,  # the bundle, whose probe the start-up self-check embeds
        speech: SpeechBackend | None = None,  # the VAD; by default on one CPU thread
    ) -> None:
        self.manifest = manifest
        self.backend = backend
        self.config = config or BatcherConfig()
        self.request_timeout_s = request_timeout_s
        self.policy = SegmentPolicy.from_manifest(manifest)
        self.metrics = metrics or EngineMetrics()
        self.metrics.provider.labels(provider=backend.provider).set(1)
        self._min_samples = max(1, round(MIN_SECONDS * manifest.sample_rate))
        seg = self.policy.segment_samples
        max_samples = seg if seg is not None else math.ceil(max_audio_seconds * manifest.sample_rate)
        self.selfcheck: SelfCheckResult | None = None

        def start_up() -> None:  # on the worker thread, before it takes requests
            if warmup:
                backend.warmup(
                    max_batch_size=self.config.max_batch_size,
                    max_samples=max_samples,
                    max_batch_samples=self.config.max_batch_samples,
                )
                # Admission estimates waits from the throughput: start from the one warm-up measured.
                self._batcher.assume_throughput(backend.measured_samples_per_s)
            self.selfcheck = run_selfcheck(backend, manifest, model_dir)  # raises: start-up fails

        self._batcher = DynamicBatcher(backend, self.config, self.metrics, warmup=start_up)
        speech = speech or SpeechBackend(vad.SpeechModel())
        self.speech_provider = speech.provider

        def start_speech() -> None:
            if warmup:
                speech.warmup(max_batch_size=0, max_samples=0, max_batch_samples=0)
                self._speech.assume_throughput(speech.measured_samples_per_s)

        speech_config = replace(self.config, max_batch_size=SPEECH_MAX_BATCH)
        self._speech_metrics = EngineMetrics(self.metrics.registry, prefix="voxgate_vad")
        self._speech = DynamicBatcher(
            speech,
            speech_config,
            self._speech_metrics,
            warmup=start_speech,
            initial_samples_per_s=SPEECH_INITIAL_SAMPLES_PER_S,
        )
        # Running average of the padded samples one embed() call brings (admission counts requests
        # whose audio is still being decoded at this size).
        self._request_samples = float(AVERAGE_REQUEST_SECONDS * manifest.sample_rate)
        self._started = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        model_dir: Path | None = None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> EmbeddingEngine:
        """Load graph + manifest (ManifestError / ProviderUnavailable on any mismatch); not started."""
        return cls.from_config(EngineConfig.from_settings(settings, model_dir), registry=registry)

    @classmethod
    def from_config(
        cls, config: EngineConfig, *, registry: CollectorRegistry | None = None
    ) -> EmbeddingEngine:
        backend = OnnxBackend.from_config(config)
        speech = SpeechBackend.from_options(config.backend)
        return cls(
            backend,
            backend.manifest,
            config=config.batcher(backend.manifest.sample_rate),
            request_timeout_s=config.request_timeout_s,
            warmup=config.warmup,
            max_audio_seconds=config.max_audio_seconds,
            metrics=EngineMetrics(registry),
            model_dir=config.model_dir,
            speech=speech,
        )

    # --- state -----------------------------------------------------------------------------------
    @property
    def provider(self) -> str:
        return self.backend.provider

    @property
    def ready(self) -> bool:
        return self._started and self._batcher.ready and self._speech.ready

    @property
    def metrics_registry(self) -> CollectorRegistry | None:
        return self.metrics.registry

    def queue_depth(self) -> int:
        """Items waiting for either stage (speech detection, embedding)."""
        return self._speech.depth() + self._batcher.depth()

    def load(self) -> Load:
        """Both stages' backlog and recent throughput, now."""
        return Load(
            speech_backlog=self._speech.backlog_samples(),
            speech_rate=self._speech.samples_per_second,
            embed_backlog=self._batcher.backlog_samples(),
            embed_rate=self._batcher.samples_per_second,
            request_samples=self._request_samples,
        )

    def expected_wait_s(self, *, extra_samples: int = 0, extra_requests: int = 0) -> float:
        return self.load().expected_wait_s(extra_samples=extra_samples, extra_requests=extra_requests)

    @property
    def batches_run(self) -> int:
        return self._batcher.batches_run

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Warm up on the worker thread (the loop keeps serving), then accept requests."""
        await asyncio.gather(
            asyncio.wrap_future(self._speech.start()), asyncio.wrap_future(self._batcher.start())
        )
        self._started = True
        log.info("inference engine started", extra={"provider": self.provider, "model": self.manifest.name})

    async def stop(self) -> None:
        """Refuse new requests, finish the accepted ones, stop the worker."""
        self._speech.stop()
        self._batcher.stop()
        await asyncio.to_thread(self._speech.join)
        await asyncio.to_thread(self._batcher.join)
        self._started = False

    # --- requests --------------------------------------------------------------------------------
    async def embed(
        self,
        waveform: np.ndarray,
        *,
        deadline: float | None = None,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        regions: Sequence[Region] | None = None,
    ) -> Float32Array:
        """Raw (not normalised) embedding [dim] of a mono float32 waveform at the model's sample rate.
        ``regions``: where its speech is, when the caller's VAD already found it (weights long audio's
        segments; without them the VAD runs when the audio is long enough to be segmented)."""
        with _outcome(self.metrics):
            return await self._embed(self._check_waveform(waveform), deadline, is_disconnected, regions)

    async def _embed(
        self,
        audio: Float32Array,
        deadline: float | None,
        is_disconnected: Callable[[], Awaitable[bool]] | None,
        regions: Sequence[Region] | None,
    ) -> Float32Array:
        """``embed`` of a waveform that ``_check_waveform`` passed."""
        self._check_running()
        limit = time.monotonic() + self.request_timeout_s
        deadline = limit if deadline is None else min(deadline, limit)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before inference")
        if is_disconnected is not None and await is_disconnected():
            raise RequestCancelled("client disconnected before inference")
        plan = await self._plan(audio, regions)
        self._admit(plan, deadline)
        ticket = self._batcher.submit(plan.cut(audio), deadline, asyncio.get_running_loop())
        embeddings = await self._wait(self._batcher, ticket, deadline, is_disconnected)
        return combine_segments(np.stack(embeddings), plan.weights)

    def _admit(self, plan: SegmentPlan, deadline: float) -> None:
        own = sum(self.backend.bucket(b - a) for a, b in plan.bounds)
        self._request_samples = 0.9 * self._request_samples + 0.1 * own
        self.refuse_unless_in_time(own, deadline)

    def refuse_unless_in_time(
        self,
        samples: int,
        deadline: float,
        *,
        before_s: float = 0.0,
        queued_before_s: float = 0.0,
        extra_samples: int = 0,
        extra_requests: int = 0,
    ) -> None:
        """``Load.refuse_unless_in_time`` on the engine's load now (a request may take request_timeout_s)."""
        self.load().refuse_unless_in_time(
            samples,
            deadline,
            before_s=before_s,
            queued_before_s=queued_before_s,
            extra_samples=extra_samples,
            extra_requests=extra_requests,
            budget_s=self.request_timeout_s,
        )

    def _check_running(self) -> None:
        for batcher in (self._speech, self._batcher):
            if batcher.dead is not None:
                raise EngineUnavailable(f"inference worker died: {batcher.dead!r}")
        if not self._started:
            raise EngineUnavailable("inference engine is not running")

    def _check_waveform(self, waveform: np.ndarray, min_samples: int | None = None) -> Float32Array:
        audio = np.ascontiguousarray(waveform, dtype=np.float32)
        if audio.ndim != 1:
            raise InvalidAudio(f"expected a mono waveform (1-D), got shape {audio.shape}")
        self._check_length(audio, min_samples)
        if not np.isfinite(audio).all():
            raise InvalidAudio("audio contains NaN or infinite samples")
        return audio

    def _check_length(self, audio: Float32Array, min_samples: int | None = None) -> Float32Array:
        if audio.shape[0] < (self._min_samples if min_samples is None else min_samples):
            raise InvalidAudio(f"audio shorter than {MIN_SECONDS} s")
        return audio

    async def _plan(self, audio: Float32Array, regions: Sequence[Region] | None) -> SegmentPlan:
        seg = self.policy.segment_samples
        if seg is None or audio.shape[0] <= seg:
            return SegmentPlan(bounds=((0, int(audio.shape[0])),), weights=(1.0,))
        if regions is not None or audio.shape[0] <= INLINE_PLAN_MAX_SAMPLES:
            return plan_segments(audio, self.policy, regions)
        return await asyncio.to_thread(plan_segments, audio, self.policy)

    async def _wait(
        self,
        batcher: DynamicBatcher,
        ticket: Ticket,
        deadline: float,
        is_disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> list[Float32Array]:
        """Each item's embedding, in order; a failure, the deadline or a disconnect cancels the rest."""
        waiting: set[asyncio.Future[Float32Array]] = set(ticket.futures)
        try:
            while waiting:
                timeout = deadline - time.monotonic()
                if is_disconnected is not None:
                    timeout = min(timeout, DISCONNECT_POLL_S)
                done, waiting = await asyncio.wait(
                    waiting, timeout=max(0.0, timeout), return_when=asyncio.FIRST_EXCEPTION
                )
                for future in done:
                    if future.exception() is not None:
                        batcher.cancel(ticket)
                        raise future.exception()  # type: ignore[misc]
                if not waiting:
                    break
                if time.monotonic() >= deadline:
                    batcher.cancel(ticket)
                    raise DeadlineExceeded(f"no result within the deadline ({self.request_timeout_s} s max)")
                if is_disconnected is not None and await is_disconnected():
                    batcher.cancel(ticket)
                    raise RequestCancelled("client disconnected while waiting for inference")
        except asyncio.CancelledError:
            batcher.cancel(ticket)
            raise
        finally:
            for future in ticket.futures:
                if not future.done():
                    future.cancel()
        return [future.result() for future in ticket.futures]

    async def find_speech(self, recordings: Sequence[Recording], waiting: Waiting) -> list[Recording]:
        """The recordings with their speech regions, detected together (one batch when they fit), and
        their waveforms as checked (mono float32, finite)."""
        if not recordings:
            raise InvalidRequest("no recordings")
        self._check_running()
        # Any length: a recording too short to embed has no speech either (422 no_speech, as the gate says).
        waveforms = [self._check_waveform(r.waveform, min_samples=1) for r in recordings]
        deadline = min(waiting.deadline, time.monotonic() + self.request_timeout_s)
        with _outcome(self._speech_metrics):
            ticket = self._speech.submit(waveforms, deadline, asyncio.get_running_loop())
            rows = await self._wait(self._speech, ticket, deadline, waiting.is_disconnected)
        return [
            replace(r, waveform=w, regions=tuple(regions_of(row, int(w.shape[0]))))
            for r, w, row in zip(recordings, waveforms, rows, strict=True)
        ]

    async def analyze(
        self,
        recordings: Sequence[Recording],
        waiting: Waiting,
        *,
        gate: SpeechGate | None = None,
        drop_non_speech: bool | None = None,
    ) -> tuple[list[Recording], list[Float32Array]]:
        """Speech detection, then unit-length embeddings of all recordings, submitted together so both
        stages can batch them: the one way recordings become embeddings, for the service and for
        ``voxgate eval``. ``gate`` refuses the whole call (its ``no_speech`` / ``not_enough_speech``)
        before any embedding when one recording has too little speech. Only the speech regions are
        embedded when the model's manifest says ``drop_non_speech``, or the caller does."""
        found = await self.find_speech(recordings, waiting)
        if gate is not None:
            for recording in found:
                gate.check(recording)
        trim = self.manifest.drop_non_speech if drop_non_speech is None else drop_non_speech

        async def one(recording: Recording) -> Float32Array:
            waveform, regions = recording.waveform, recording.regions or None
            if trim and regions:
                waveform = vad.speech_only(waveform, regions)
                regions = ((0, int(waveform.shape[0])),)  # all of it is speech now
            with _outcome(self.metrics):  # find_speech checked the waveform (mono, finite)
                raw = await self._embed(
                    self._check_length(waveform), waiting.deadline, waiting.is_disconnected, regions
                )
            try:
                return l2_normalize(raw)
            except ValueError as exc:  # a degenerate input the model maps to the zero vector
                raise InvalidAudio(
                    "the model produced no usable embedding for this recording", file=recording.name
                ) from exc

        # A TaskGroup cancels the sibling inferences as soon as one fails (e.g. 429): no wasted work.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(r)) for r in found]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return found, [task.result() for task in tasks]
