from http import HTTPStatus
from typing import Any

import httpx

from ...client import AuthenticatedClient, Client
from ...models.enroll_form import EnrollForm
from ...models.enroll_response import EnrollResponse
from ...models.problem import Problem
from ...types import Response


def _get_kwargs(
    *,
    body: EnrollForm,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/enroll",
    }

    _kwargs["files"] = body.to_multipart()

    headers["Content-Type"] = "multipart/form-data; boundary=+++"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> EnrollResponse | Problem:
    if response.status_code == 200:
        response_200 = EnrollResponse.from_dict(response.json())

        return response_200

    if response.status_code == 400:
        response_400 = Problem.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = Problem.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = Problem.from_dict(response.json())

        return response_403

    if response.status_code == 409:
        response_409 = Problem.from_dict(response.json())

        return response_409

    if response.status_code == 413:
        response_413 = Problem.from_dict(response.json())

        return response_413

    if response.status_code == 415:
        response_415 = Problem.from_dict(response.json())

        return response_415

    if response.status_code == 422:
        response_422 = Problem.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = Problem.from_dict(response.json())

        return response_429

    if response.status_code == 503:
        response_503 = Problem.from_dict(response.json())

        return response_503

    if response.status_code == 504:
        response_504 = Problem.from_dict(response.json())

        return response_504

    response_default = Problem.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[EnrollResponse | Problem]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: EnrollForm,
) -> Response[EnrollResponse | Problem]:
    """Enroll

     Each recording needs at least `min_speech_seconds` of speech; the speaker counts as enrolled
    once the voiceprint holds `enroll_speech_seconds`. Nothing is stored unless every recording is
    accepted. A recording unlike the rest of the voiceprint (cosine below the threshold) is still
    added, with a warning, or refused with 409 `unlike_voiceprint` (VOXGATE_UNLIKE_VOICEPRINT=refuse). A
    recording already in the voiceprint (the same decoded audio) is refused with 409 `duplicate_audio`,
    or added with a warning (VOXGATE_DUPLICATE_ENROLLMENT=warn).

    Args:
        body (EnrollForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[EnrollResponse | Problem]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: EnrollForm,
) -> EnrollResponse | Problem | None:
    """Enroll

     Each recording needs at least `min_speech_seconds` of speech; the speaker counts as enrolled
    once the voiceprint holds `enroll_speech_seconds`. Nothing is stored unless every recording is
    accepted. A recording unlike the rest of the voiceprint (cosine below the threshold) is still
    added, with a warning, or refused with 409 `unlike_voiceprint` (VOXGATE_UNLIKE_VOICEPRINT=refuse). A
    recording already in the voiceprint (the same decoded audio) is refused with 409 `duplicate_audio`,
    or added with a warning (VOXGATE_DUPLICATE_ENROLLMENT=warn).

    Args:
        body (EnrollForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        EnrollResponse | Problem
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: EnrollForm,
) -> Response[EnrollResponse | Problem]:
    """Enroll

     Each recording needs at least `min_speech_seconds` of speech; the speaker counts as enrolled
    once the voiceprint holds `enroll_speech_seconds`. Nothing is stored unless every recording is
    accepted. A recording unlike the rest of the voiceprint (cosine below the threshold) is still
    added, with a warning, or refused with 409 `unlike_voiceprint` (VOXGATE_UNLIKE_VOICEPRINT=refuse). A
    recording already in the voiceprint (the same decoded audio) is refused with 409 `duplicate_audio`,
    or added with a warning (VOXGATE_DUPLICATE_ENROLLMENT=warn).

    Args:
        body (EnrollForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[EnrollResponse | Problem]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: EnrollForm,
) -> EnrollResponse | Problem | None:
    """Enroll

     Each recording needs at least `min_speech_seconds` of speech; the speaker counts as enrolled
    once the voiceprint holds `enroll_speech_seconds`. Nothing is stored unless every recording is
    accepted. A recording unlike the rest of the voiceprint (cosine below the threshold) is still
    added, with a warning, or refused with 409 `unlike_voiceprint` (VOXGATE_UNLIKE_VOICEPRINT=refuse). A
    recording already in the voiceprint (the same decoded audio) is refused with 409 `duplicate_audio`,
    or added with a warning (VOXGATE_DUPLICATE_ENROLLMENT=warn).

    Args:
        body (EnrollForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        EnrollResponse | Problem
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
