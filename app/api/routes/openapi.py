"""OpenAPI helpers shared by the routes."""

from __future__ import annotations

from typing import Any

from app.api.schemas import Problem


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document error responses as problem+json."""
    return {
        status: {"model": Problem, "content": {"application/problem+json": {}}, "description": "Problem"}
        for status in statuses
    }
