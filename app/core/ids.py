"""The rules of names a client or an operator gives: speaker ids and tenant names (one pattern each,
used by the forms, the path parameters, the settings, the key schema and the CLI)."""

from __future__ import annotations

import re

from app.core.errors import InvalidSpeakerId

# No ':' (the key separator), no spaces or control characters; short enough for logs and keys.
SPEAKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
_SPEAKER_ID_RE = re.compile(SPEAKER_ID_PATTERN)
# Tenant names: the same alphabet as ids but no '@'; they start with a letter or digit ('_' names are
# the service's own, e.g. the audit stream of requests that named no valid key).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TENANT_RE = re.compile(TENANT_PATTERN)
UNAUTHENTICATED_TENANT = "_unauthenticated"


def validate_tenant(tenant: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(
            "a tenant name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return tenant


def invalid_speaker_id() -> InvalidSpeakerId:
    """The one error for a malformed speaker id, wherever it was given (form, path, query)."""
    return InvalidSpeakerId(
        "speaker_id must be 1-128 characters of letters, digits, '_', '.', '@' or '-', "
        "starting with a letter or digit",
        pattern=SPEAKER_ID_PATTERN,
    )


def validate_speaker_id(speaker_id: str) -> str:
    if not _SPEAKER_ID_RE.fullmatch(speaker_id):
        raise invalid_speaker_id()
    return speaker_id
