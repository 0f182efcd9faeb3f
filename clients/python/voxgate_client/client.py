"""``VoxGate``: the service's endpoints as typed methods over the generated code (``generated/``).

What the generated code leaves to its caller is done here, once:

- errors: every answer that is not the operation's success is raised as ``VoxGateError`` with the
  problem's ``code``, ``status``, ``detail`` and ``request_id`` (an answer that is no problem+json, e.g.
  from a proxy, is ``code == "unexpected_response"``);
- retries: 429 and 503 answers are retried, after the ``Retry-After`` they carry (each wait capped,
  the number of retries bounded). POST requests are retried too: the service changes nothing on a
  request it refuses with 429 or 503;
- files: a recording is a path, bytes or a binary file object; it is read into memory once (the
  service caps uploads), so a retried request sends it again whole.

Requests are built by the generated modules (their ``_get_kwargs``) and answers parsed into the generated
models; the request itself is sent here, so that any answer but the operation's success, whether a
problem or a proxy's page, reaches ``VoxGateError`` with its status.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from http import HTTPMethod
from pathlib import Path
from typing import IO, Any, Self, TypeVar

import httpx
from httpx_retries import Retry, RetryTransport

from voxgate_client.generated.api.enrollment import enroll as enroll_op
from voxgate_client.generated.api.identification import identify as identify_op
from voxgate_client.generated.api.operations import healthz as healthz_op
from voxgate_client.generated.api.operations import metrics as metrics_op
from voxgate_client.generated.api.operations import readyz as readyz_op
from voxgate_client.generated.api.speakers import delete_speaker as delete_speaker_op
from voxgate_client.generated.api.speakers import export_speaker as export_speaker_op
from voxgate_client.generated.api.speakers import get_speaker as get_speaker_op
from voxgate_client.generated.api.speakers import list_speakers as list_speakers_op
from voxgate_client.generated.api.verification import verify as verify_op
from voxgate_client.generated.client import AuthenticatedClient, Client
from voxgate_client.generated.models import (
    DeleteResponse,
    EnrollForm,
    EnrollFormMetadata,
    EnrollResponse,
    Health,
    IdentifyForm,
    IdentifyResponse,
    Problem,
    Readiness,
    Speaker,
    SpeakerExport,
    SpeakerPage,
    VerifyForm,
    VerifyResponse,
)
from voxgate_client.generated.types import UNSET, File

T = TypeVar("T")

# A recording: a file path, its bytes, or a binary file object (read from its current position).
Audio = str | os.PathLike[str] | bytes | IO[bytes]

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (429, 503)


class VoxGateError(Exception):
    """An error answer of the service: an RFC 9457 problem with a stable ``code``."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        title: str,
        detail: str,
        request_id: str | None = None,
        instance: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}" + (f" (request {request_id})" if request_id else ""))
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.instance = instance
        # Members some problems add (``errors`` of invalid_request, ``other_models`` of speaker_not_found).
        self.extra: dict[str, Any] = dict(extra or {})

    @classmethod
    def from_response(cls, response: httpx.Response) -> VoxGateError:
        try:
            problem = Problem.from_dict(response.json())
        except (ValueError, KeyError, TypeError):  # not JSON, or JSON that is no problem
            return cls(
                status=response.status_code,
                code="unexpected_response",
                title=response.reason_phrase,
                detail=response.text[:500],
                request_id=response.headers.get("x-request-id"),
            )
        return cls(
            status=problem.status,
            code=problem.code,
            title=problem.title,
            detail=problem.detail,
            request_id=problem.request_id,
            instance=problem.instance or None,
            extra=problem.additional_properties,
        )


def _file(audio: Audio) -> File:
    if isinstance(audio, bytes):
        return File(payload=io.BytesIO(audio), file_name="audio", mime_type="application/octet-stream")
    if isinstance(audio, str | os.PathLike):
        path = Path(audio)
        return File(payload=io.BytesIO(path.read_bytes()), file_name=path.name)
    name = Path(str(getattr(audio, "name", "audio"))).name
    return File(payload=io.BytesIO(audio.read()), file_name=name, mime_type="application/octet-stream")


class VoxGate:
    """A client of one VoxGate service.

    ``api_key``: sent as ``Authorization: Bearer KEY`` (needed when the service requires keys).
    ``max_retries``: how often a 429 or 503 answer is retried (0: never); each wait is the answer's
    ``Retry-After``, or a short exponential backoff without one, at most ``max_retry_wait_s``.
    ``transport``: the httpx transport under the retries (default: httpx's own).
    ``api`` is the generated client (``voxgate_client.generated``), for its async functions.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        retry = Retry(
            total=max_retries,
            allowed_methods=list(HTTPMethod),
            status_forcelist=RETRY_STATUSES,
            retry_on_exceptions=(),  # a request that may have reached the service is not resent
            backoff_factor=0.5,
            max_backoff_wait=max_retry_wait_s,
        )
        httpx_args = {"transport": RetryTransport(transport=transport, retry=retry)}
        timeout = httpx.Timeout(timeout_s)
        self.api: Client | AuthenticatedClient = (
            AuthenticatedClient(base_url=base_url, token=api_key, timeout=timeout, httpx_args=httpx_args)
            if api_key is not None
            else Client(base_url=base_url, timeout=timeout, httpx_args=httpx_args)
        )
        self._http = self.api.get_httpx_client()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self, request: dict[str, Any], parse: Callable[[httpx.Response], T], *, also_ok: int | None = None
    ) -> T:
        """Send a request the generated code built; the parsed answer, or VoxGateError."""
        response = self._http.request(**request)
        if response.status_code == 200 or response.status_code == also_ok:
            return parse(response)
        raise VoxGateError.from_response(response)

    # --- enrollment, verification, identification ---

    def enroll(
        self, speaker_id: str, audio: Sequence[Audio], *, metadata: Mapping[str, Any] | None = None
    ) -> EnrollResponse:
        """Add recordings to a speaker's voiceprint (creating the speaker); ``metadata`` replaces the
        speaker's stored metadata."""
        if isinstance(audio, str | bytes | os.PathLike):
            audio = [audio]  # one recording, not a sequence of characters or bytes
        form = EnrollForm(
            speaker_id=speaker_id,
            audio=[_file(a) for a in audio],
            metadata=UNSET if metadata is None else EnrollFormMetadata.from_dict(dict(metadata)),
        )
        return self._call(enroll_op._get_kwargs(body=form), lambda r: EnrollResponse.from_dict(r.json()))

    def verify(
        self,
        audio: Audio,
        *,
        speaker_id: str | None = None,
        reference: Audio | None = None,
        threshold: float | None = None,
    ) -> VerifyResponse:
        """Is this the enrolled ``speaker_id``, or the speaker of the ``reference`` recording (give one)?"""
        form = VerifyForm(
            audio=_file(audio),
            speaker_id=UNSET if speaker_id is None else speaker_id,
            reference=UNSET if reference is None else _file(reference),
            threshold=UNSET if threshold is None else threshold,
        )
        return self._call(verify_op._get_kwargs(body=form), lambda r: VerifyResponse.from_dict(r.json()))

    def identify(
        self,
        audio: Audio,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        candidates: Sequence[str] | None = None,
    ) -> IdentifyResponse:
        """Who among the enrolled speakers (or only ``candidates``) is this?"""
        form = IdentifyForm(
            audio=_file(audio),
            top_k=UNSET if top_k is None else top_k,
            threshold=UNSET if threshold is None else threshold,
            candidates=UNSET if candidates is None else list(candidates),
        )
        return self._call(identify_op._get_kwargs(body=form), lambda r: IdentifyResponse.from_dict(r.json()))

    # --- speakers ---

    def list_speakers(self, *, limit: int = 100, cursor: str | None = None) -> SpeakerPage:
        """One page of speakers, ordered by id; pass the page's ``next_cursor`` for the next."""
        request = list_speakers_op._get_kwargs(limit=limit, cursor=UNSET if cursor is None else cursor)
        return self._call(request, lambda r: SpeakerPage.from_dict(r.json()))

    def iter_speakers(self, *, page_size: int = 100) -> Iterator[Speaker]:
        """Every speaker, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_speakers(limit=page_size, cursor=cursor)
            yield from page.items
            if not isinstance(page.next_cursor, str):
                return
            cursor = page.next_cursor

    def get_speaker(self, speaker_id: str) -> Speaker:
        request = get_speaker_op._get_kwargs(speaker_id)
        return self._call(request, lambda r: Speaker.from_dict(r.json()))

    def delete_speaker(self, speaker_id: str) -> DeleteResponse:
        """Erase the speaker's voiceprint under every model."""
        request = delete_speaker_op._get_kwargs(speaker_id)
        return self._call(request, lambda r: DeleteResponse.from_dict(r.json()))

    def export_speaker(self, speaker_id: str) -> SpeakerExport:
        """Everything held about the speaker except the voiceprint (a data-subject request; the key
        needs the ``export`` scope)."""
        request = export_speaker_op._get_kwargs(speaker_id)
        return self._call(request, lambda r: SpeakerExport.from_dict(r.json()))

    # --- operations ---

    def health(self) -> Health:
        return self._call(healthz_op._get_kwargs(), lambda r: Health.from_dict(r.json()))

    def readiness(self) -> Readiness:
        """Readiness, ready or not (a service that is not ready answers 503 with the same body)."""
        request = {**readyz_op._get_kwargs(), "extensions": {"retry": Retry(total=0)}}  # 503 = not ready
        return self._call(request, lambda r: Readiness.from_dict(r.json()), also_ok=503)

    def metrics(self) -> str:
        """The Prometheus metrics text."""
        return self._call(metrics_op._get_kwargs(), lambda r: r.text)
