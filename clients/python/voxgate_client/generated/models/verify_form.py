from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any, Self, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from .. import types
from ..types import UNSET, File, FileTypes, Unset

T = TypeVar("T", bound="VerifyForm")


@_attrs_define
class VerifyForm:
    """
    Attributes:
        audio (File):
        speaker_id (str | Unset): Compare against this enrolled speaker ...
        reference (File | Unset): ... or against this second recording.
        threshold (float | Unset): Cosine threshold for a match. Stricter than the operator's threshold, or at least at
            its floor: below it the answer is 403 threshold_below_floor unless the API key holds the threshold-override
            scope.
    """

    audio: File
    speaker_id: str | Unset = UNSET
    reference: File | Unset = UNSET
    threshold: float | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        audio = self.audio.to_tuple()

        speaker_id = self.speaker_id

        reference: FileTypes | Unset = UNSET
        if not isinstance(self.reference, Unset):
            reference = self.reference.to_tuple()

        threshold = self.threshold

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "audio": audio,
            }
        )
        if speaker_id is not UNSET:
            field_dict["speaker_id"] = speaker_id
        if reference is not UNSET:
            field_dict["reference"] = reference
        if threshold is not UNSET:
            field_dict["threshold"] = threshold

        return field_dict

    def to_multipart(self) -> types.RequestFiles:
        files: types.RequestFiles = []

        files.append(("audio", self.audio.to_tuple()))

        if not isinstance(self.speaker_id, Unset):
            files.append(
                ("speaker_id", (None, str(self.speaker_id).encode(), "text/plain"))
            )

        if not isinstance(self.reference, Unset):
            files.append(("reference", self.reference.to_tuple()))

        if not isinstance(self.threshold, Unset):
            files.append(
                ("threshold", (None, str(self.threshold).encode(), "text/plain"))
            )

        for prop_name, prop in self.additional_properties.items():
            files.append((prop_name, (None, str(prop).encode(), "text/plain")))

        return files

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        audio = File(payload=BytesIO(d.pop("audio")))

        speaker_id = d.pop("speaker_id", UNSET)

        _reference = d.pop("reference", UNSET)
        reference: File | Unset
        if isinstance(_reference, Unset):
            reference = UNSET
        else:
            reference = File(payload=BytesIO(_reference))

        threshold = d.pop("threshold", UNSET)

        verify_form = cls(
            audio=audio,
            speaker_id=speaker_id,
            reference=reference,
            threshold=threshold,
        )

        verify_form.additional_properties = d
        return verify_form

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
