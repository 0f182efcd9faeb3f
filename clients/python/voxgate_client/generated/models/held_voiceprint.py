from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.held_voiceprint_metadata_type_0 import HeldVoiceprintMetadataType0


T = TypeVar("T", bound="HeldVoiceprint")


@_attrs_define
class HeldVoiceprint:
    """What is stored about a speaker under one model, without the voiceprint itself.

    Attributes:
        model (str):
        utterances (int):
        speech_seconds (float):
        recordings_fingerprinted (int): Recordings whose digest (SHA-256 of the decoded audio, 128 bits) is kept to
            detect duplicate enrollments; the digests themselves are not exported.
        metadata (HeldVoiceprintMetadataType0 | None): As enrolled; null when it is sealed under data keys that were
            erased.
        created_at (float): Unix time
        updated_at (float): Unix time
        expires_at (float | None): Unix time (retention); null = kept until deleted.
    """

    model: str
    utterances: int
    speech_seconds: float
    recordings_fingerprinted: int
    metadata: HeldVoiceprintMetadataType0 | None
    created_at: float
    updated_at: float
    expires_at: float | None

    def to_dict(self) -> dict[str, Any]:
        from ..models.held_voiceprint_metadata_type_0 import HeldVoiceprintMetadataType0

        model = self.model

        utterances = self.utterances

        speech_seconds = self.speech_seconds

        recordings_fingerprinted = self.recordings_fingerprinted

        metadata: dict[str, Any] | None
        if isinstance(self.metadata, HeldVoiceprintMetadataType0):
            metadata = self.metadata.to_dict()
        else:
            metadata = self.metadata

        created_at = self.created_at

        updated_at = self.updated_at

        expires_at: float | None
        expires_at = self.expires_at

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "model": model,
                "utterances": utterances,
                "speech_seconds": speech_seconds,
                "recordings_fingerprinted": recordings_fingerprinted,
                "metadata": metadata,
                "created_at": created_at,
                "updated_at": updated_at,
                "expires_at": expires_at,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.held_voiceprint_metadata_type_0 import HeldVoiceprintMetadataType0

        d = dict(src_dict)
        model = d.pop("model")

        utterances = d.pop("utterances")

        speech_seconds = d.pop("speech_seconds")

        recordings_fingerprinted = d.pop("recordings_fingerprinted")

        def _parse_metadata(data: object) -> HeldVoiceprintMetadataType0 | None:
            if data is None:
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                metadata_type_0 = HeldVoiceprintMetadataType0.from_dict(data)

                return metadata_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(HeldVoiceprintMetadataType0 | None, data)

        metadata = _parse_metadata(d.pop("metadata"))

        created_at = d.pop("created_at")

        updated_at = d.pop("updated_at")

        def _parse_expires_at(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        expires_at = _parse_expires_at(d.pop("expires_at"))

        held_voiceprint = cls(
            model=model,
            utterances=utterances,
            speech_seconds=speech_seconds,
            recordings_fingerprinted=recordings_fingerprinted,
            metadata=metadata,
            created_at=created_at,
            updated_at=updated_at,
            expires_at=expires_at,
        )

        return held_voiceprint
