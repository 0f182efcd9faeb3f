from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="Candidate")


@_attrs_define
class Candidate:
    """
    Attributes:
        speaker_id (str):
        score (float):
    """

    speaker_id: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        speaker_id = self.speaker_id

        score = self.score

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "score": score,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        speaker_id = d.pop("speaker_id")

        score = d.pop("score")

        candidate = cls(
            speaker_id=speaker_id,
            score=score,
        )

        return candidate
