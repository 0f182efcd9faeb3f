"""The OpenAPI document: what the routes declare (their problem responses, short operation ids) and the
pass that finishes the document FastAPI builds, so that client generators read it as the service
behaves:

- every error is ``application/problem+json`` with the ``Problem`` schema: one shared response per
  status in ``components/responses`` (its description names the codes), and a ``default`` response on
  every operation for the statuses it does not list (405, 408, 500, ...);
- the multipart form bodies are named schemas (``EnrollForm``, ...) in ``components/schemas``, built from
  the same form models that validate requests (``app.api.forms``);
- without keys (VOXGATE_AUTH=off) the document asks for none: no security schemes, no 401 answers.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api.forms import Forms, form_schema
from app.api.problems import PROBLEM_MEDIA_TYPE
from app.api.schemas import Problem

_SCHEMAS: Final = "#/components/schemas/"
_RESPONSES: Final = "#/components/responses/"

# The shared problem responses: status -> (component name, description).
PROBLEM_RESPONSES: Final[dict[int | str, tuple[str, str]]] = {
    400: ("BadRequest", "`invalid_audio`: a supported audio container that cannot be decoded."),
    401: (
        "Unauthorized",
        "`missing_api_key`, `invalid_api_key`, `revoked_api_key`, `expired_api_key` (with "
        "`WWW-Authenticate`).",
    ),
    403: (
        "Forbidden",
        "`insufficient_scope` (the API key lacks the scope this needs), `threshold_below_floor` (a "
        "threshold below the operator's floor).",
    ),
    404: ("NotFound", "`speaker_not_found`."),
    409: (
        "Conflict",
        "`unlike_voiceprint`: a recording unlike the voiceprint; `duplicate_audio`: a recording already "
        "enrolled (when enrollment refuses them).",
    ),
    413: ("ContentTooLarge", "`audio_too_large`."),
    415: ("UnsupportedMediaType", "`unsupported_media_type`: content that is no supported audio container."),
    422: (
        "UnprocessableContent",
        "`audio_too_long`, `no_speech`, `not_enough_speech`, `invalid_speaker_id`, `invalid_request`.",
    ),
    423: (
        "Locked",
        "`speaker_locked`: too many failed verifications of this speaker; `Retry-After` says when.",
    ),
    429: (
        "TooManyRequests",
        "`overloaded` (the server), `rate_limited` (the API key), `speaker_busy` (as many verifications of "
        "the speaker under way as its lockout allows); `Retry-After` says when.",
    ),
    503: (
        "ServiceUnavailable",
        "`store_unavailable`, `engine_unavailable`, `connection_limit` (with `Retry-After`).",
    ),
    504: ("GatewayTimeout", "`deadline_exceeded`."),
    "default": (
        "Problem",
        "Any other error, as problem+json: e.g. 405, 408 `request_timeout`, 500 `internal_error`, "
        "507 `store_full` (Redis at its memory limit refuses writes).",
    ),
}
_RETRY_AFTER: Final = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}


def operation_id(route: APIRoute) -> str:
    """The operation id of a route: its function's name (``get_speaker``, not FastAPI's
    ``get_speaker_speakers__speaker_id__get``), which generated clients use as the method's name."""
    return route.name


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses an operation lists (besides ``default``, which every operation gets)."""
    return {status: {"$ref": _RESPONSES + PROBLEM_RESPONSES[status][0]} for status in statuses}


def _problem_response(status: int | str, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _SCHEMAS + "Problem"}}},
    }
    if status in (423, 429, 503):
        response["headers"] = _RETRY_AFTER
    return response


def finish_document(document: dict[str, Any], forms: Forms, *, keys_required: bool) -> dict[str, Any]:
    """The document FastAPI built, finished as the module docstring says (changed in place)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(mode="serialization", ref_template=_SCHEMAS + "{model}")
    for form in (forms.enroll, forms.verify, forms.identify):
        schemas[form.__name__] = form_schema(form)
    if not keys_required:
        components.pop("securitySchemes", None)
    used: set[str] = set()
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if not keys_required:
                operation.pop("security", None)
                responses.pop("401", None)
            responses["default"] = {"$ref": _RESPONSES + PROBLEM_RESPONSES["default"][0]}
            for status, response in responses.items():
                if "$ref" in response:
                    # FastAPI adds a description beside the reference; the shared one says more.
                    responses[status] = {"$ref": response["$ref"]}
                    used.add(response["$ref"].removeprefix(_RESPONSES))
    components["responses"] = {
        name: _problem_response(status, description)
        for status, (name, description) in PROBLEM_RESPONSES.items()
        if name in used
    }
    return document


def install_openapi(app: FastAPI, forms: Forms, *, keys_required: bool) -> None:
    """Serve the finished document (built once, on the first request for it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_document(build(), forms, keys_required=keys_required)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
