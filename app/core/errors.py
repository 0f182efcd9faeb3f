"""One error base class; each subclass carries its HTTP status and a stable machine-readable code.

The API renders every ``VoxGateError`` as an RFC 9457 problem+json body (see ``app.api.problems``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, get_args


class VoxGateError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the problem body."""
        return {}


class _RetryLater(VoxGateError):
    """An error whose answer says when to try again (``Retry-After``, whole seconds)."""

    def __init__(self, detail: str, retry_after_s: float = 1.0, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class _Unauthorized(VoxGateError):
    status, title = 401, "Authentication required"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="voxgate"'}


# --- caller (401) ---
class MissingApiKey(_Unauthorized):
    code = "missing_api_key"


class InvalidApiKey(_Unauthorized):
    code = "invalid_api_key"


class RevokedApiKey(_Unauthorized):
    code = "revoked_api_key"


class ExpiredApiKey(_Unauthorized):
    code = "expired_api_key"


# --- caller's rights (403) ---
class InsufficientScope(VoxGateError):
    """The key is valid but was not given the scope this endpoint needs (``voxgate keys create --scopes``)."""

    status, code, title = 403, "insufficient_scope", "The API key lacks the scope this needs"


class ThresholdBelowFloor(VoxGateError):
    """A client asked for a laxer decision than the operator allows (the threshold floor)."""

    status, code, title = 403, "threshold_below_floor", "Threshold below the floor"


# --- client input (4xx) ---
class InvalidAudio(VoxGateError):
    status, code, title = 400, "invalid_audio", "The audio could not be decoded"


class UnsupportedMediaType(VoxGateError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class AudioTooLarge(VoxGateError):
    status, code, title = 413, "audio_too_large", "Upload too large"


class AudioTooLong(VoxGateError):
    status, code, title = 422, "audio_too_long", "Recording too long"


class NoSpeech(VoxGateError):
    status, code, title = 422, "no_speech", "No speech found"


class NotEnoughSpeech(VoxGateError):
    status, code, title = 422, "not_enough_speech", "Not enough speech"


class UnlikeVoiceprint(VoxGateError):
    # VOXGATE_UNLIKE_VOICEPRINT=refuse: the recording conflicts with the voiceprint it would join.
    status, code, title = 409, "unlike_voiceprint", "Recording unlike the voiceprint"


class DuplicateAudio(VoxGateError):
    # VOXGATE_DUPLICATE_ENROLLMENT=refuse: the same recording is in the voiceprint (or twice in the request).
    status, code, title = 409, "duplicate_audio", "Recording already enrolled"


class InvalidSpeakerId(VoxGateError):
    status, code, title = 422, "invalid_speaker_id", "Invalid speaker id"


class InvalidRequest(VoxGateError):
    status, code, title = 422, "invalid_request", "Invalid request"


class SpeakerNotFound(VoxGateError):
    status, code, title = 404, "speaker_not_found", "Speaker not found"


# --- server state (429 / 503 / 504) ---
# Why the server refused work as ``overloaded`` (a metric label and a log field, not in the answer):
# the queue of segments is full, the expected wait for inference is too long (or past the request's
# deadline), or the memory held for requests is in use.
OverloadReason = Literal["queue_full", "expected_wait", "memory"]
OVERLOAD_REASONS: tuple[OverloadReason, ...] = get_args(OverloadReason)


class Overloaded(_RetryLater):
    status, code, title = 429, "overloaded", "Server overloaded, retry later"

    def __init__(
        self, detail: str, retry_after_s: float = 1.0, *, reason: OverloadReason = "expected_wait"
    ) -> None:
        super().__init__(detail, retry_after_s)
        self.reason: OverloadReason = reason


class RateLimited(_RetryLater):
    """This API key's own request rate (not the server's load)."""

    status, code, title = 429, "rate_limited", "Rate limit of the API key exceeded"


class SpeakerLocked(_RetryLater):
    """Too many failed verifications of this speaker (``VOXGATE_LOCKOUT_*``): verifications of it are
    refused until the back-off ends or an operator clears it. 423, not 429: the speaker is locked, whoever
    asks, and clients must not retry it as they retry their own rate limit."""

    status, code, title = 423, "speaker_locked", "Speaker locked after failed verifications"


class SpeakerBusy(_RetryLater):
    """As many verifications of this speaker are under way as the lockout lets fail: a next one waits until
    one of them is decided (none failed yet, so the speaker is not locked; an attacker cannot run more
    attempts in parallel than the lockout allows)."""

    status, code, title = 429, "speaker_busy", "Too many verifications of this speaker at once"


class DeadlineExceeded(VoxGateError):
    status, code, title = 504, "deadline_exceeded", "Request deadline exceeded"


class EngineUnavailable(VoxGateError):
    status, code, title = 503, "engine_unavailable", "Inference engine unavailable"


class StoreUnavailable(VoxGateError):
    status, code, title = 503, "store_unavailable", "Voiceprint store (Redis) unreachable"


class StoreFull(StoreUnavailable):
    """Redis reached its memory limit and refuses writes (``maxmemory-policy noeviction``: it never drops
    voiceprints to make room). Not retried by waiting: an operator frees memory or raises the limit."""

    status, code, title = 507, "store_full", "Voiceprint store (Redis) full"


class RequestCancelled(VoxGateError):
    # The client went away; nobody reads this answer (499 as nginx uses it).
    status, code, title = 499, "client_closed_request", "Client closed the request"


def error_class(code: str) -> type[VoxGateError]:
    """The error class of a problem code (``VoxGateError`` itself for an unknown one): how an error
    raised in the inference process is raised again in the front-end worker that asked."""
    found: dict[str, type[VoxGateError]] = {}
    pending: list[type[VoxGateError]] = [VoxGateError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found.get(code, VoxGateError)
