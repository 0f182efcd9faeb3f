"""From an uploaded file to a unit-length embedding: decode and speech check in a worker thread,
inference through the engine's batcher. Errors name the file they are about."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.api.multipart import FormContents, UploadedFile
from app.api.state import AppState
from app.audio import TARGET_SAMPLE_RATE, decode_audio, require_speech
from app.errors import InvalidAudio, InvalidRequest, VoxGateError
from app.store.keys import validate_speaker_id
from app.store.redis_store import l2_normalize


@dataclass(frozen=True)
class Utterance:
    name: str
    embedding: npt.NDArray[np.float32]  # L2-normalised
    speech_seconds: float
    duration_s: float


def _label(upload: UploadedFile, position: int) -> str:
    return upload.filename or f"{upload.field}[{position}]"


@dataclass(frozen=True)
class _Decoded:
    name: str
    waveform: npt.NDArray[np.float32]
    speech_seconds: float


def _decode_and_check(upload: UploadedFile, name: str, max_seconds: float, min_speech: float) -> _Decoded:
    audio = decode_audio(upload.data, content_type=upload.content_type, max_seconds=max_seconds)
    speech = require_speech(audio, min_speech)
    return _Decoded(name, audio.waveform, speech)


async def embed_uploads(
    state: AppState, request: Request, uploads: list[UploadedFile], min_speech: float
) -> list[Utterance]:
    """Decode and check every upload first (one bad file refuses the request before any inference),
    then embed them all concurrently so the engine can batch them."""
    decoded: list[_Decoded] = []
    for position, upload in enumerate(uploads):
        name = _label(upload, position)
        try:
            decoded.append(
                await run_in_threadpool(
                    _decode_and_check, upload, name, state.settings.max_audio_seconds, min_speech
                )
            )
        except VoxGateError as exc:
            exc.extra.setdefault("file", name)
            raise
    deadline = time.monotonic() + state.settings.request_timeout_s

    async def embed_one(item: _Decoded) -> Utterance:
        raw = await state.engine.embed(
            item.waveform, deadline=deadline, is_disconnected=request.is_disconnected
        )
        try:
            unit = l2_normalize(raw)
        except ValueError as exc:  # a degenerate input the model maps to the zero vector
            raise InvalidAudio(
                "the model produced no usable embedding for this recording", file=item.name
            ) from exc
        return Utterance(item.name, unit, item.speech_seconds, item.waveform.size / TARGET_SAMPLE_RATE)

    # A TaskGroup cancels the sibling inferences as soon as one fails (e.g. 429): no wasted work.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(embed_one(item)) for item in decoded]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


# --- form fields ---
def required_field(form: FormContents, name: str) -> str:
    value = form.field_value(name)
    if value is None or not value.strip():
        raise InvalidRequest(f"form field {name!r} is required")
    return value.strip()


def speaker_id_field(form: FormContents, name: str = "speaker_id") -> str:
    return validate_speaker_id(required_field(form, name))


def threshold_field(form: FormContents, default: float) -> float:
    raw = form.field_value("threshold")
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidRequest("threshold must be a number in [-1, 1]") from exc
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise InvalidRequest("threshold must be a number in [-1, 1]")
    return value


def int_field(form: FormContents, name: str, default: int, lo: int, hi: int) -> int:
    raw = form.field_value(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an integer in [{lo}, {hi}]") from exc
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be an integer in [{lo}, {hi}]")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf without going through parse_constant; stored, it would come back altered.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


# Stored metadata is served back inside the speaker JSON; pydantic refuses to serialise nesting deeper
# than ~250 levels, so a deeper object would be accepted once and then 500 every read of the speaker.
MAX_METADATA_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def metadata_field(form: FormContents, max_bytes: int) -> dict[str, Any] | None:
    raw = form.field_value("metadata")
    if raw is None or not raw.strip():
        return None
    if len(raw.encode()) > max_bytes:
        raise InvalidRequest(f"metadata is larger than {max_bytes} bytes")
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
        # "\ud800" escapes decode to lone surrogates, which no UTF-8 response can carry: stored, they
        # would make every later read of the speaker (GET /speakers) fail with a 500.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting under a large limit
        raise InvalidRequest(
            "metadata must be a JSON object of finite numbers and valid Unicode text"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be a JSON object")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise InvalidRequest(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    return value


def files_field(form: FormContents, name: str, *, at_most: int | None = None) -> list[UploadedFile]:
    files = form.file_list(name)
    if not files:
        raise InvalidRequest(f"file field {name!r} is required")
    if at_most is not None and len(files) > at_most:
        raise InvalidRequest(f"at most {at_most} file(s) in field {name!r}")
    return files
