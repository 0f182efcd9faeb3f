from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.threshold_source import ThresholdSource

T = TypeVar("T", bound="AuditRecord")


@_attrs_define
class AuditRecord:
    """One audit event: never audio, embeddings or metadata.

    Attributes:
        time (float): Unix time
        tenant (str):
        key_id (None | str): The API key that acted (null: keys off, or an operator).
        speaker_id (None | str):
        action (str):
        outcome (str): ok, or the problem code the request was answered with.
        request_id (None | str):
        score (float | None):
        threshold (float | None):
        threshold_source (None | ThresholdSource):
        match (bool | None):
        actor (None | str): Who ran an operator's command (cli:user@host).
        detail (None | str):
    """

    time: float
    tenant: str
    key_id: None | str
    speaker_id: None | str
    action: str
    outcome: str
    request_id: None | str
    score: float | None
    threshold: float | None
    threshold_source: None | ThresholdSource
    match: bool | None
    actor: None | str
    detail: None | str

    def to_dict(self) -> dict[str, Any]:
        time = self.time

        tenant = self.tenant

        key_id: None | str
        key_id = self.key_id

        speaker_id: None | str
        speaker_id = self.speaker_id

        action = self.action

        outcome = self.outcome

        request_id: None | str
        request_id = self.request_id

        score: float | None
        score = self.score

        threshold: float | None
        threshold = self.threshold

        threshold_source: None | str
        if isinstance(self.threshold_source, ThresholdSource):
            threshold_source = self.threshold_source.value
        else:
            threshold_source = self.threshold_source

        match: bool | None
        match = self.match

        actor: None | str
        actor = self.actor

        detail: None | str
        detail = self.detail

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "time": time,
                "tenant": tenant,
                "key_id": key_id,
                "speaker_id": speaker_id,
                "action": action,
                "outcome": outcome,
                "request_id": request_id,
                "score": score,
                "threshold": threshold,
                "threshold_source": threshold_source,
                "match": match,
                "actor": actor,
                "detail": detail,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        time = d.pop("time")

        tenant = d.pop("tenant")

        def _parse_key_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        key_id = _parse_key_id(d.pop("key_id"))

        def _parse_speaker_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        speaker_id = _parse_speaker_id(d.pop("speaker_id"))

        action = d.pop("action")

        outcome = d.pop("outcome")

        def _parse_request_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        request_id = _parse_request_id(d.pop("request_id"))

        def _parse_score(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        score = _parse_score(d.pop("score"))

        def _parse_threshold(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        threshold = _parse_threshold(d.pop("threshold"))

        def _parse_threshold_source(data: object) -> None | ThresholdSource:
            if data is None:
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                threshold_source_type_0 = ThresholdSource(data)

                return threshold_source_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | ThresholdSource, data)

        threshold_source = _parse_threshold_source(d.pop("threshold_source"))

        def _parse_match(data: object) -> bool | None:
            if data is None:
                return data
            return cast(bool | None, data)

        match = _parse_match(d.pop("match"))

        def _parse_actor(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        actor = _parse_actor(d.pop("actor"))

        def _parse_detail(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        detail = _parse_detail(d.pop("detail"))

        audit_record = cls(
            time=time,
            tenant=tenant,
            key_id=key_id,
            speaker_id=speaker_id,
            action=action,
            outcome=outcome,
            request_id=request_id,
            score=score,
            threshold=threshold,
            threshold_source=threshold_source,
            match=match,
            actor=actor,
            detail=detail,
        )

        return audit_record
