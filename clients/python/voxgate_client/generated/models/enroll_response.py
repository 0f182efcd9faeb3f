from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.notice import Notice


T = TypeVar("T", bound="EnrollResponse")


@_attrs_define
class EnrollResponse:
    """
    Attributes:
        speaker_id (str):
        model (str):
        created (bool): True when this request created the speaker.
        added_utterances (int):
        utterances (int): Utterances in the voiceprint after this request.
        speech_seconds (float): Net speech in the voiceprint after this request.
        enrolled (bool): Enough net speech for a reliable voiceprint.
        remaining_speech_seconds (float):
        warnings (list[Notice]):
    """

    speaker_id: str
    model: str
    created: bool
    added_utterances: int
    utterances: int
    speech_seconds: float
    enrolled: bool
    remaining_speech_seconds: float
    warnings: list[Notice]

    def to_dict(self) -> dict[str, Any]:
        speaker_id = self.speaker_id

        model = self.model

        created = self.created

        added_utterances = self.added_utterances

        utterances = self.utterances

        speech_seconds = self.speech_seconds

        enrolled = self.enrolled

        remaining_speech_seconds = self.remaining_speech_seconds

        warnings = []
        for warnings_item_data in self.warnings:
            warnings_item = warnings_item_data.to_dict()
            warnings.append(warnings_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "model": model,
                "created": created,
                "added_utterances": added_utterances,
                "utterances": utterances,
                "speech_seconds": speech_seconds,
                "enrolled": enrolled,
                "remaining_speech_seconds": remaining_speech_seconds,
                "warnings": warnings,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.notice import Notice

        d = dict(src_dict)
        speaker_id = d.pop("speaker_id")

        model = d.pop("model")

        created = d.pop("created")

        added_utterances = d.pop("added_utterances")

        utterances = d.pop("utterances")

        speech_seconds = d.pop("speech_seconds")

        enrolled = d.pop("enrolled")

        remaining_speech_seconds = d.pop("remaining_speech_seconds")

        warnings = []
        _warnings = d.pop("warnings")
        for warnings_item_data in _warnings:
            warnings_item = Notice.from_dict(warnings_item_data)

            warnings.append(warnings_item)

        enroll_response = cls(
            speaker_id=speaker_id,
            model=model,
            created=created,
            added_utterances=added_utterances,
            utterances=utterances,
            speech_seconds=speech_seconds,
            enrolled=enrolled,
            remaining_speech_seconds=remaining_speech_seconds,
            warnings=warnings,
        )

        return enroll_response
