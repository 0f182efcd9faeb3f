from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.speaker_metadata import SpeakerMetadata


T = TypeVar("T", bound="Speaker")


@_attrs_define
class Speaker:
    """
    Attributes:
        speaker_id (str):
        model (str):
        utterances (int):
        speech_seconds (float):
        enrolled (bool):
        metadata (SpeakerMetadata):
        created_at (float): Unix time
        updated_at (float): Unix time
        expires_at (float | None): Unix time the voiceprint is deleted unless enrolled into or successfully verified
            before (VOXGATE_RETENTION_DAYS); null = kept until deleted.
    """

    speaker_id: str
    model: str
    utterances: int
    speech_seconds: float
    enrolled: bool
    metadata: SpeakerMetadata
    created_at: float
    updated_at: float
    expires_at: float | None

    def to_dict(self) -> dict[str, Any]:
        speaker_id = self.speaker_id

        model = self.model

        utterances = self.utterances

        speech_seconds = self.speech_seconds

        enrolled = self.enrolled

        metadata = self.metadata.to_dict()

        created_at = self.created_at

        updated_at = self.updated_at

        expires_at: float | None
        expires_at = self.expires_at

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "model": model,
                "utterances": utterances,
                "speech_seconds": speech_seconds,
                "enrolled": enrolled,
                "metadata": metadata,
                "created_at": created_at,
                "updated_at": updated_at,
                "expires_at": expires_at,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.speaker_metadata import SpeakerMetadata

        d = dict(src_dict)
        speaker_id = d.pop("speaker_id")

        model = d.pop("model")

        utterances = d.pop("utterances")

        speech_seconds = d.pop("speech_seconds")

        enrolled = d.pop("enrolled")

        metadata = SpeakerMetadata.from_dict(d.pop("metadata"))

        created_at = d.pop("created_at")

        updated_at = d.pop("updated_at")

        def _parse_expires_at(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        expires_at = _parse_expires_at(d.pop("expires_at"))

        speaker = cls(
            speaker_id=speaker_id,
            model=model,
            utterances=utterances,
            speech_seconds=speech_seconds,
            enrolled=enrolled,
            metadata=metadata,
            created_at=created_at,
            updated_at=updated_at,
            expires_at=expires_at,
        )

        return speaker
