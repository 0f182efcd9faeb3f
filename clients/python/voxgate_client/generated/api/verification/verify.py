from http import HTTPStatus
from typing import Any

import httpx

from ...client import AuthenticatedClient, Client
from ...models.problem import Problem
from ...models.verify_form import VerifyForm
from ...models.verify_response import VerifyResponse
from ...types import Response


def _get_kwargs(
    *,
    body: VerifyForm,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/verify",
    }

    _kwargs["files"] = body.to_multipart()

    headers["Content-Type"] = "multipart/form-data; boundary=+++"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Problem | VerifyResponse:
    if response.status_code == 200:
        response_200 = VerifyResponse.from_dict(response.json())

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

    if response.status_code == 404:
        response_404 = Problem.from_dict(response.json())

        return response_404

    if response.status_code == 413:
        response_413 = Problem.from_dict(response.json())

        return response_413

    if response.status_code == 415:
        response_415 = Problem.from_dict(response.json())

        return response_415

    if response.status_code == 422:
        response_422 = Problem.from_dict(response.json())

        return response_422

    if response.status_code == 423:
        response_423 = Problem.from_dict(response.json())

        return response_423

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
) -> Response[Problem | VerifyResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: VerifyForm,
) -> Response[Problem | VerifyResponse]:
    """Verify

     Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
    cosine similarity; `match` = score >= threshold. The threshold is the operator's (the model's,
    the tenant's or the API key's: `threshold_source`) unless the request gives a stricter one; one
    below the floor is 403 `threshold_below_floor` unless the key holds `threshold-override`. After
    repeated failed verifications of a speaker, verifying it is 423 `speaker_locked` for a while.

    Args:
        body (VerifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | VerifyResponse]
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
    body: VerifyForm,
) -> Problem | VerifyResponse | None:
    """Verify

     Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
    cosine similarity; `match` = score >= threshold. The threshold is the operator's (the model's,
    the tenant's or the API key's: `threshold_source`) unless the request gives a stricter one; one
    below the floor is 403 `threshold_below_floor` unless the key holds `threshold-override`. After
    repeated failed verifications of a speaker, verifying it is 423 `speaker_locked` for a while.

    Args:
        body (VerifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | VerifyResponse
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: VerifyForm,
) -> Response[Problem | VerifyResponse]:
    """Verify

     Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
    cosine similarity; `match` = score >= threshold. The threshold is the operator's (the model's,
    the tenant's or the API key's: `threshold_source`) unless the request gives a stricter one; one
    below the floor is 403 `threshold_below_floor` unless the key holds `threshold-override`. After
    repeated failed verifications of a speaker, verifying it is 423 `speaker_locked` for a while.

    Args:
        body (VerifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | VerifyResponse]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: VerifyForm,
) -> Problem | VerifyResponse | None:
    """Verify

     Give either `speaker_id` (an enrolled speaker) or a second file `reference`. `score` is the
    cosine similarity; `match` = score >= threshold. The threshold is the operator's (the model's,
    the tenant's or the API key's: `threshold_source`) unless the request gives a stricter one; one
    below the floor is 403 `threshold_below_floor` unless the key holds `threshold-override`. After
    repeated failed verifications of a speaker, verifying it is 423 `speaker_locked` for a while.

    Args:
        body (VerifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | VerifyResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
