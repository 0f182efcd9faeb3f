from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import httpx

from ...client import AuthenticatedClient, Client
from ...models.problem import Problem
from ...models.speaker_export import SpeakerExport
from ...types import Response


def _get_kwargs(
    speaker_id: str,
) -> dict[str, Any]:

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/speakers/{speaker_id}/export".format(
            speaker_id=quote(str(speaker_id), safe=""),
        ),
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Problem | SpeakerExport:
    if response.status_code == 200:
        response_200 = SpeakerExport.from_dict(response.json())

        return response_200

    if response.status_code == 401:
        response_401 = Problem.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = Problem.from_dict(response.json())

        return response_403

    if response.status_code == 404:
        response_404 = Problem.from_dict(response.json())

        return response_404

    if response.status_code == 422:
        response_422 = Problem.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = Problem.from_dict(response.json())

        return response_429

    if response.status_code == 503:
        response_503 = Problem.from_dict(response.json())

        return response_503

    response_default = Problem.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[Problem | SpeakerExport]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    speaker_id: str,
    *,
    client: AuthenticatedClient,
) -> Response[Problem | SpeakerExport]:
    """Export Speaker

     Everything held about one speaker except the voiceprint itself, for a data-subject request: its
    records under every model (metadata, counts, times), its lockout state and every audit event that
    names it (enrollments, verifications, identifications, deletion, ...). Needs the `export` scope; the
    export itself is audited. 404 when nothing at all is held about the speaker.

    Args:
        speaker_id (str): An enrolled speaker's id.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | SpeakerExport]
    """

    kwargs = _get_kwargs(
        speaker_id=speaker_id,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    speaker_id: str,
    *,
    client: AuthenticatedClient,
) -> Problem | SpeakerExport | None:
    """Export Speaker

     Everything held about one speaker except the voiceprint itself, for a data-subject request: its
    records under every model (metadata, counts, times), its lockout state and every audit event that
    names it (enrollments, verifications, identifications, deletion, ...). Needs the `export` scope; the
    export itself is audited. 404 when nothing at all is held about the speaker.

    Args:
        speaker_id (str): An enrolled speaker's id.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | SpeakerExport
    """

    return sync_detailed(
        speaker_id=speaker_id,
        client=client,
    ).parsed


async def asyncio_detailed(
    speaker_id: str,
    *,
    client: AuthenticatedClient,
) -> Response[Problem | SpeakerExport]:
    """Export Speaker

     Everything held about one speaker except the voiceprint itself, for a data-subject request: its
    records under every model (metadata, counts, times), its lockout state and every audit event that
    names it (enrollments, verifications, identifications, deletion, ...). Needs the `export` scope; the
    export itself is audited. 404 when nothing at all is held about the speaker.

    Args:
        speaker_id (str): An enrolled speaker's id.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | SpeakerExport]
    """

    kwargs = _get_kwargs(
        speaker_id=speaker_id,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    speaker_id: str,
    *,
    client: AuthenticatedClient,
) -> Problem | SpeakerExport | None:
    """Export Speaker

     Everything held about one speaker except the voiceprint itself, for a data-subject request: its
    records under every model (metadata, counts, times), its lockout state and every audit event that
    names it (enrollments, verifications, identifications, deletion, ...). Needs the `export` scope; the
    export itself is audited. 404 when nothing at all is held about the speaker.

    Args:
        speaker_id (str): An enrolled speaker's id.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | SpeakerExport
    """

    return (
        await asyncio_detailed(
            speaker_id=speaker_id,
            client=client,
        )
    ).parsed
