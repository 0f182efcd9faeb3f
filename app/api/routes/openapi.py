"""OpenAPI helpers: multipart bodies are parsed by ``app.api.multipart`` (streaming, with limits), so
their schema is declared here from the form models instead of being inferred from parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.api.schemas import Problem


def multipart_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": model.model_json_schema()}},
        }
    }


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document error responses as problem+json."""
    return {
        status: {"model": Problem, "content": {"application/problem+json": {}}, "description": "Problem"}
        for status in statuses
    }
