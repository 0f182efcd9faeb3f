"""What an API key may do: one scope per kind of request, and one to lower a decision threshold.

A key is given its scopes when it is created (``voxgate keys create --scopes verify,read``). A key created
without ``--scopes``, and every key created before scopes existed (its record has none), holds
``DEFAULT_SCOPES``: every endpoint, as before. Lowering a threshold below the floor is never a default:
only a key created with ``threshold-override`` (or ``all``) may.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Scope(StrEnum):
    ENROLL = "enroll"  # POST /enroll
    VERIFY = "verify"  # POST /verify
    IDENTIFY = "identify"  # POST /identify
    READ = "read"  # GET /speakers, GET /speakers/{id}
    DELETE = "delete"  # DELETE /speakers/{id}
    EXPORT = "export"  # GET /speakers/{id}/export: everything held about a speaker (data-subject requests)
    THRESHOLD_OVERRIDE = "threshold-override"  # a request's threshold below the floor


ALL_SCOPES = frozenset(Scope)
DEFAULT_SCOPES = ALL_SCOPES - {Scope.THRESHOLD_OVERRIDE}
ALL = "all"
_NAMES = frozenset(s.value for s in Scope)


def parse_scopes(text: str) -> frozenset[Scope]:
    """``--scopes``: comma-separated scope names, or ``all``; ValueError naming the valid ones."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"--scopes needs at least one of: {', '.join(Scope)} (or {ALL})")
    if ALL in names:
        return ALL_SCOPES
    unknown = sorted(set(names) - _NAMES)
    if unknown:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown)}: the scopes are {', '.join(Scope)} (or {ALL})"
        )
    return frozenset(Scope(name) for name in names)


def stored_scopes(text: str | None) -> frozenset[Scope]:
    """The scopes of a stored key record: ``DEFAULT_SCOPES`` when it has none (a key from before scopes);
    names this version does not know (a record edited by hand, or a newer version's) grant nothing."""
    if text is None:
        return DEFAULT_SCOPES
    return frozenset(Scope(name) for name in text.split(",") if name in _NAMES)


def scopes_text(scopes: Iterable[Scope]) -> str:
    """Stored and printed form, in the enum's order."""
    chosen = set(scopes)
    return ",".join(s.value for s in Scope if s in chosen)
