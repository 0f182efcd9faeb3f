from http import HTTPStatus
from typing import Any

import httpx

from ...client import AuthenticatedClient, Client
from ...models.identify_form import IdentifyForm
from ...models.identify_response import IdentifyResponse
from ...models.problem import Problem
from ...types import Response


def _get_kwargs(
    *,
    body: IdentifyForm,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/identify",
    }

    _kwargs["files"] = body.to_multipart()

    headers["Content-Type"] = "multipart/form-data; boundary=+++"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> IdentifyResponse | Problem:
    if response.status_code == 200:
        response_200 = IdentifyResponse.from_dict(response.json())

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
) -> Response[IdentifyResponse | Problem]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: IdentifyForm,
) -> Response[IdentifyResponse | Problem]:
    """Identify

     Exact cosine search over every speaker enrolled under this model (or only `candidates`).
    `speaker_id` is the best candidate when its score reaches the threshold, else null. The threshold
    follows the same policy as /verify (`threshold_source`); locked speakers are not searched.

    Args:
        body (IdentifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[IdentifyResponse | Problem]
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
    body: IdentifyForm,
) -> IdentifyResponse | Problem | None:
    """Identify

     Exact cosine search over every speaker enrolled under this model (or only `candidates`).
    `speaker_id` is the best candidate when its score reaches the threshold, else null. The threshold
    follows the same policy as /verify (`threshold_source`); locked speakers are not searched.

    Args:
        body (IdentifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        IdentifyResponse | Problem
    """

    return sync_detailed(
        client=client,
        body=body,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: IdentifyForm,
) -> Response[IdentifyResponse | Problem]:
    """Identify

     Exact cosine search over every speaker enrolled under this model (or only `candidates`).
    `speaker_id` is the best candidate when its score reaches the threshold, else null. The threshold
    follows the same policy as /verify (`threshold_source`); locked speakers are not searched.

    Args:
        body (IdentifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[IdentifyResponse | Problem]
    """

    kwargs = _get_kwargs(
        body=body,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: IdentifyForm,
) -> IdentifyResponse | Problem | None:
    """Identify

     Exact cosine search over every speaker enrolled under this model (or only `candidates`).
    `speaker_id` is the best candidate when its score reaches the threshold, else null. The threshold
    follows the same policy as /verify (`threshold_source`); locked speakers are not searched.

    Args:
        body (IdentifyForm):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        IdentifyResponse | Problem
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
        )
    ).parsed
