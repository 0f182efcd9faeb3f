"""Readable start-up errors for bad settings: one line per offending environment variable, no traceback.

``load_settings()`` is what start-up code calls instead of ``Settings()``; the ``voxgate`` command catches
``InvalidSettings`` (and a raw pydantic ``ValidationError`` of the Settings model) and exits with status 2.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import ValidationError

from app.core.settings import ENV_PREFIX, Settings, env_var

# Values never echoed back in an error message (a Redis URL carries its password).
_SECRET_FIELDS = frozenset({"redis_url", "voiceprint_key"})  # (files' names are shown, never their text)


class InvalidSettings(Exception):
    """Settings from the environment failed validation; ``str()`` is the message to print."""


def _field_of(loc: tuple[int | str, ...]) -> str | None:
    if not loc:
        return None
    head = str(loc[0])
    if head in Settings.model_fields:
        return head
    # pydantic-settings reports some errors under the alias (e.g. REDIS_URL); map back to the field.
    lowered = head.lower().removeprefix(ENV_PREFIX.lower())
    return lowered if lowered in Settings.model_fields else head


def format_validation_error(exc: ValidationError) -> str:
    """One line per error: ``VOXGATE_PORT=abc: Input should be a valid integer, ...``."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        field = _field_of(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid value"))
        if field is None:
            lines.append(f"settings: {message.removeprefix('Value error, ')}")
            continue
        name = env_var(field) if field in Settings.model_fields else field
        value: Any = error.get("input")
        shown = "" if field in _SECRET_FIELDS or isinstance(value, dict) else f"={value!s}"
        lines.append(f"{name}{shown}: {message}")
    return "\n".join(lines)


def is_settings_error(exc: BaseException) -> bool:
    """True for a pydantic error raised while building ``Settings`` (not some other model)."""
    return isinstance(exc, ValidationError) and exc.title == Settings.__name__


def load_settings(**overrides: Any) -> Settings:
    """``Settings()`` from the environment, raising ``InvalidSettings`` with a readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise InvalidSettings(format_validation_error(exc)) from None


def settings_or_report(program: str) -> Settings | None:
    """``load_settings()``, or None after printing why not (one readable line per bad variable, no
    traceback) for a command that then exits with status 2."""
    try:
        return load_settings()
    except InvalidSettings as exc:
        print(f"{program}: invalid settings\n{exc}", file=sys.stderr)
        return None
