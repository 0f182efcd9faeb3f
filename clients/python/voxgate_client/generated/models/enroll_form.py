from __future__ import annotations

import json
from collections.abc import Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any, Self, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from .. import types
from ..types import UNSET, File, Unset

if TYPE_CHECKING:
    from ..models.enroll_form_metadata import EnrollFormMetadata


T = TypeVar("T", bound="EnrollForm")


@_attrs_define
class EnrollForm:
    """
    Attributes:
        speaker_id (str):
        audio (list[File]): One or more recordings (WAV, FLAC, OGG Vorbis/Opus, MP3).
        metadata (EnrollFormMetadata | Unset): JSON object stored with the speaker (replaces earlier metadata): at most
            4096 bytes of UTF-8, finite numbers, valid Unicode, at most 32 levels deep.
    """

    speaker_id: str
    audio: list[File]
    metadata: EnrollFormMetadata | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        speaker_id = self.speaker_id

        audio = []
        for audio_item_data in self.audio:
            audio_item = audio_item_data.to_tuple()

            audio.append(audio_item)

        metadata: dict[str, Any] | Unset = UNSET
        if not isinstance(self.metadata, Unset):
            metadata = self.metadata.to_dict()

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "speaker_id": speaker_id,
                "audio": audio,
            }
        )
        if metadata is not UNSET:
            field_dict["metadata"] = metadata

        return field_dict

    def to_multipart(self) -> types.RequestFiles:
        files: types.RequestFiles = []

        files.append(
            ("speaker_id", (None, str(self.speaker_id).encode(), "text/plain"))
        )

        for audio_item_element in self.audio:
            files.append(("audio", audio_item_element.to_tuple()))

        if not isinstance(self.metadata, Unset):
            files.append(
                (
                    "metadata",
                    (
                        None,
                        json.dumps(self.metadata.to_dict()).encode(),
                        "application/json",
                    ),
                )
            )

        for prop_name, prop in self.additional_properties.items():
            files.append((prop_name, (None, str(prop).encode(), "text/plain")))

        return files

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.enroll_form_metadata import EnrollFormMetadata

        d = dict(src_dict)
        speaker_id = d.pop("speaker_id")

        audio = []
        _audio = d.pop("audio")
        for audio_item_data in _audio:
            audio_item = File(payload=BytesIO(audio_item_data))

            audio.append(audio_item)

        _metadata = d.pop("metadata", UNSET)
        metadata: EnrollFormMetadata | Unset
        if isinstance(_metadata, Unset):
            metadata = UNSET
        else:
            metadata = EnrollFormMetadata.from_dict(_metadata)

        enroll_form = cls(
            speaker_id=speaker_id,
            audio=audio,
            metadata=metadata,
        )

        enroll_form.additional_properties = d
        return enroll_form

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
