"""One typed settings class; every field is an environment variable prefixed with ``VOXGATE_``.

``REDIS_URL`` (no prefix) is also accepted, as most Redis deployments name it that way.
The README's settings table is checked against this class by a test.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.crypto import parse_key
from app.core.ids import TENANT_PATTERN
from app.core.limits import check_limits
from app.core.paths import DEFAULT_MODEL_DIR
from app.core.process import available_cpus

ProviderName = Literal["tensorrt", "cuda", "cpu"]

# Front-end processes at most; with "auto", hosts with this many cores or fewer run one process.
MAX_WORKERS = 64
AUTO_SINGLE_PROCESS_CORES = 2

# The one place the environment variables' prefix is written.
ENV_PREFIX = "VOXGATE_"


def is_loopback(host: str) -> bool:
    """Does binding to ``host`` keep the service to this machine (127.0.0.0/8, ::1, localhost)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_var(field: str) -> str:
    """The environment variable of a setting (``port`` -> ``VOXGATE_PORT``)."""
    return f"{ENV_PREFIX}{field.upper()}"


# How ONNX Runtime's CUDA provider picks each convolution's cuDNN algorithm for a new input shape.
CudnnConvAlgoSearch = Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    # --- HTTP ---
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")

    # --- HTTP connections ---
    max_connections: int = Field(
        2048,
        ge=1,
        description="Most open HTTP connections. A new one at the limit closes the connection idle longest; "
        "when none is idle it gets 503. Lowered at start-up (logged) to fit the open-file limit.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Request headers must be complete this long after the connection opens, or after the "
        "first byte of the next request on a kept-alive connection (not restarted by later bytes); else 408 "
        "and the connection is closed.",
    )
    body_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request body that brings no byte for this long ends the request: 408 (if no response "
        "had started) and the connection is closed. Also cuts off a client that reads no response byte "
        "for as long.",
    )
    body_min_rate_bytes_s: float = Field(
        1024.0,
        ge=0,
        description="After body_idle_timeout_s, a request body must keep arriving at this many bytes/s on "
        "average (time the server itself did not read excluded), else 408 and the connection is closed: "
        "a body trickled in byte by byte cannot hold a connection. 0 = no minimum.",
    )
    keepalive_timeout_s: float = Field(
        75.0,
        gt=0,
        description="An idle kept-alive connection is closed after this long. Longer than the 60 s idle "
        "timeout of common proxies and load balancers, so that they close first.",
    )
    drain_grace_s: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM, idle kept-alive connections stay open this long: a request that arrives "
        "is still served (with Connection: close), then they are closed.",
    )

    # --- model and inference ---
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Directory holding model.onnx and manifest.json.")
    providers: list[ProviderName] | Literal["auto"] = Field(
        "auto",
        description="ONNX Runtime execution providers in order of preference (JSON list, e.g. "
        '["cuda","cpu"]); "auto" = CUDA when onnxruntime-gpu sees a GPU, else CPU.',
    )
    intra_op_threads: int = Field(
        0, ge=0, description="CPU inference threads per session; 0 = number of cores available."
    )
    tensorrt_cache_dir: Path = Field(
        Path("./data/trt-cache"), description="Engine cache of the TensorRT provider (when used)."
    )
    cudnn_conv_algo_search: CudnnConvAlgoSearch = Field(
        "HEURISTIC",
        description="CUDA provider: how cuDNN picks each convolution's algorithm per new input shape. "
        "HEURISTIC = cuDNN's own choice, no trial runs (fast start-up); EXHAUSTIVE = time every algorithm "
        "(slow start-up, maybe faster inference); DEFAULT = one fixed algorithm. See docs/performance.md.",
    )
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Batch closes at this many segments. Larger = more throughput."
    )
    max_batch_audio_seconds: float = Field(
        240.0,
        gt=0,
        description="Batch closes at this much padded audio (seconds). Bounds memory and per-batch latency.",
    )
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        description="A batch closes this long after its first request even if not full. Higher = fuller "
        "batches under light load, but more latency.",
    )
    queue_size: int = Field(
        512, ge=1, description="Segments waiting for inference; beyond this requests get 429 overloaded."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of one request inside the engine (queue wait + inference)."
    )
    warmup: bool = Field(True, description="Run warm-up batches at start-up before reporting ready.")

    # --- audio limits ---
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest accepted upload per file, enforced while reading."
    )
    max_audio_seconds: float = Field(300.0, gt=0, description="Longest accepted recording (seconds).")
    min_speech_seconds: float = Field(
        1.5,
        ge=0,
        description="Net speech (VAD) needed for verify / identify / each enrollment recording; the model's "
        "manifest may ask for more. Below 1.5 s the default model's false rejects triple (docs/accuracy.md).",
    )
    enroll_speech_seconds: float = Field(
        8.0, ge=0, description="Net speech after which a speaker counts as enrolled."
    )
    max_enroll_files: int = Field(10, ge=1, le=100, description="Most recordings in one /enroll request.")
    max_metadata_bytes: int = Field(
        4096, ge=0, description="Largest speaker metadata JSON object accepted by /enroll (bytes, UTF-8)."
    )

    # --- admission: memory and time ---
    request_memory_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Bytes the process holds for requests at most (uploads as they are read, decoded audio, "
        "decoding work). A request that does not fit now gets 429, one larger than this 413, before its body "
        "is read. The default leaves room for the model and its buffers in a 6 GiB container.",
    )
    max_queue_wait_s: float = Field(
        0.75,
        gt=0,
        description="A request whose expected wait for inference (the engine's queued audio at its measured "
        "throughput) exceeds this is refused at once with 429 and Retry-After. Bounds the latency of the "
        "requests that are served under overload (about this plus one batch's inference: at twice the "
        "sustainable rate on 2 cores, 1.4-1.6 s at p99 with 0.75, 2.0-2.2 s with 1.0, for the same "
        "throughput).",
    )
    decode_workers: int = Field(
        0, ge=0, description="Threads decoding uploads, per process; 0 = number of cores."
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="Front-end processes (HTTP, keys, uploads, decoding, Redis, scoring) in front of one "
        "inference process that owns the model, speech detection and batching; 0 = one process does "
        "everything. auto = 0 on hosts with up to 2 cores (one process is faster there: "
        "docs/performance.md), else one per core but the one the inference process needs.",
    )

    # --- decisions ---
    threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="Default decision threshold, in the units of the score in use (cosine, or AS-Norm with "
        "VOXGATE_SCORE_NORMALIZATION=asnorm); unset = the model manifest's calibrated threshold (voxgate "
        "calibrate), else its default_threshold.",
    )

    # --- accuracy ---
    score_normalization: Literal["none", "asnorm"] = Field(
        "none",
        description="asnorm = /verify and /identify score with AS-Norm against the model's cohort (voxgate "
        "cohort build; it needs hundreds of speakers), and thresholds are AS-Norm scores (voxgate calibrate "
        "--asnorm, or VOXGATE_THRESHOLD); none = raw cosine.",
    )
    asnorm_top_n: int | None = Field(
        None, ge=2, description="Cohort scores AS-Norm averages per side; unset = the cohort's (manifest)."
    )
    calibrated_scores: bool = Field(
        False,
        description="Answers also carry `llr`, the score's log-likelihood ratio (natural log) from the "
        "model's logistic-regression calibration (voxgate calibrate); start-up fails without one.",
    )
    unlike_voiceprint: Literal["warn", "refuse"] = Field(
        "warn",
        description="An enrollment recording whose cosine to the rest of the voiceprint is below "
        "unlike_voiceprint_threshold: warn = stored, with an unlike_voiceprint warning; refuse = 409 "
        "unlike_voiceprint, nothing of the request stored.",
    )
    duplicate_enrollment: Literal["refuse", "warn"] = Field(
        "refuse",
        description="An enrollment recording whose decoded audio is already in the speaker's voiceprint "
        "(or twice in one request): refuse = 409 duplicate_audio, nothing of the request stored; warn = "
        "stored and counted again, with a duplicate_audio warning.",
    )
    unlike_voiceprint_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Cosine to the rest of the voiceprint below which an enrollment recording is unlike "
        "it; unset = the model's cosine decision threshold.",
    )

    @model_validator(mode="after")
    def _check_accuracy(self) -> Settings:
        if self.threshold is not None and self.score_normalization == "none" and abs(self.threshold) > 1.0:
            raise ValueError(
                "threshold must be in [-1, 1] for cosine scores (VOXGATE_SCORE_NORMALIZATION=none)"
            )
        return self

    # --- who may do what: keys, tenants, limits, audit, encryption, retention ---
    auth: Literal["required", "off"] | None = Field(
        None,
        description="API keys: required = every request but /healthz, /readyz, /metrics, /docs and "
        "/openapi.json needs a key (Authorization: Bearer or X-API-Key), which names its tenant; off = no "
        "keys, everything acts "
        "for VOXGATE_TENANT. Unset = required unless the service binds to a loopback address.",
    )
    rate_limit_rps: float = Field(
        20.0,
        ge=0,
        description="Requests per second per API key (0 = unlimited); `voxgate keys create --rate`.",
    )
    rate_limit_burst: int = Field(
        40, ge=1, description="Requests an idle API key may send at once; overridden per key."
    )
    voiceprint_key: SecretStr | None = Field(
        None,
        description="256-bit key-encryption key (64 hex digits or base64) from a Secret: with it every "
        "voiceprint is stored encrypted (AES-GCM) under a per-tenant data key. Unset = stored plain.",
    )
    retention_days: float = Field(
        1095.0,
        ge=0,
        description="A voiceprint not enrolled into nor successfully verified for this long is deleted "
        "(0 = kept until deleted).",
    )
    audit_max_events: int = Field(
        100_000,
        ge=100,
        description="Events kept per tenant in each audit stream (changes and operators' acts; decisions; "
        "refusals); older ones are trimmed. About 127 bytes per decision: the default holds 100 s of "
        "decisions at 1,000/s (docs/security.md); the voxgate.audit log lines are the complete record.",
    )

    lockout_failures: int = Field(
        5,
        ge=0,
        description="Failed verifications of one speaker within lockout_window_s after which verifications "
        "of that speaker are refused (423 speaker_locked) for lockout_s; 0 = no lockout. Counted on every "
        "replica together (Redis); cleared by a match or `voxgate lockout clear`.",
    )
    lockout_window_s: float = Field(
        600.0, gt=0, description="The window in which lockout_failures failed verifications lock a speaker."
    )
    lockout_s: float = Field(
        900.0, gt=0, description="How long a locked speaker stays locked (unless cleared by an operator)."
    )

    # --- Redis ---
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices(env_var("redis_url"), "REDIS_URL", "redis_url"),
        description="Redis server to use (REDIS_URL also accepted). Unset = start an embedded "
        "redis-server child with its data under data_dir.",
    )
    data_dir: Path = Field(Path("./data"), description="Data of the embedded redis-server (AOF on).")
    redis_namespace: str = Field(
        "voxgate", pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of every Redis key."
    )
    tenant: str = Field(
        "default",
        pattern=TENANT_PATTERN,  # the rule for tenants of keys: '_' names are the service's own
        description="The tenant every request acts for when keys are off (with keys: the key's tenant).",
    )
    index_sync_interval_s: float = Field(
        0.25, gt=0, description="How often the replica-local voiceprint matrix polls Redis for changes."
    )

    # --- logging ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="Structured JSON logs (false = plain text).")

    # The rule for every key's limits (app.access.ratelimit), the defaults included: NaN, infinities and rates
    # too small for a bucket are refused.
    @field_validator("rate_limit_rps")
    @classmethod
    def _bucket_rate(cls, value: float) -> float:
        check_limits(value, None)
        return value

    @field_validator("rate_limit_burst")
    @classmethod
    def _bucket_burst(cls, value: int) -> int:
        check_limits(None, value)
        return value

    @field_validator("voiceprint_key")
    @classmethod
    def _a_usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A malformed key is an invalid setting like any other, refused before the model loads.
        if value is not None:
            parse_key(value.get_secret_value())  # CryptoError is a ValueError: one line, key not shown
        return value

    @field_validator("cudnn_conv_algo_search", mode="before")
    @classmethod
    def _upper_search(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("voiceprint_key", "auth", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files pass `${VAR:-}`: an empty variable means "not set", not an empty key.
        return None if value == "" else value

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        # Accept "cuda,cpu" as well as the JSON list form.
        if isinstance(value, str) and value != "auto" and not value.startswith("["):
            return [p.strip().lower() for p in value.split(",") if p.strip()]
        return value

    @property
    def auth_required(self) -> bool:
        """Whether requests need an API key (see ``auth``)."""
        if self.auth is not None:
            return self.auth == "required"
        return not is_loopback(self.host)

    @property
    def front_end_workers(self) -> int:
        """How many front-end processes serve (0: one process serves everything); see ``workers``."""
        if self.workers != "auto":
            return self.workers
        cores = available_cpus()
        return 0 if cores <= AUTO_SINGLE_PROCESS_CORES else min(MAX_WORKERS, cores - 1)

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= MAX_WORKERS:
            raise ValueError(f"workers must be 0-{MAX_WORKERS} or auto")
        return value

    @property
    def retention_s(self) -> float | None:
        return self.retention_days * 86400.0 if self.retention_days > 0 else None

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.enroll_speech_seconds < self.min_speech_seconds:
            raise ValueError("enroll_speech_seconds must be >= min_speech_seconds")
        if self.request_memory_bytes < self.max_upload_bytes:
            raise ValueError("request_memory_bytes must be >= max_upload_bytes (no upload could be read)")
        return self
