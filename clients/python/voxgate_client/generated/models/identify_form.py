from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from .. import types
from ..types import UNSET, File, Unset

T = TypeVar("T", bound="IdentifyForm")


@_attrs_define
class IdentifyForm:
    """
    Attributes:
        audio (File):
        top_k (int | Unset):  Default: 5.
        threshold (float | Unset): Cosine threshold for a match. Stricter than the operator's threshold, or at least at
            its floor: below it the answer is 403 threshold_below_floor unless the API key holds the threshold-override
            scope.
        candidates (list[str] | Unset): Restrict the search to these speaker ids (repeat the field or comma-separate).
    """

    audio: File
    top_k: int | Unset = 5
    threshold: float | Unset = UNSET
    candidates: list[str] | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        audio = self.audio.to_tuple()

        top_k = self.top_k

        threshold = self.threshold

        candidates: list[str] | Unset = UNSET
        if not isinstance(self.candidates, Unset):
            candidates = self.candidates

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "audio": audio,
            }
        )
        if top_k is not UNSET:
            field_dict["top_k"] = top_k
        if threshold is not UNSET:
            field_dict["threshold"] = threshold
        if candidates is not UNSET:
            field_dict["candidates"] = candidates

        return field_dict

    def to_multipart(self) -> types.RequestFiles:
        files: types.RequestFiles = []

        files.append(("audio", self.audio.to_tuple()))

        if not isinstance(self.top_k, Unset):
            files.append(("top_k", (None, str(self.top_k).encode(), "text/plain")))

        if not isinstance(self.threshold, Unset):
            files.append(
                ("threshold", (None, str(self.threshold).encode(), "text/plain"))
            )

        if not isinstance(self.candidates, Unset):
            for candidates_item_element in self.candidates:
                files.append(
                    (
                        "candidates",
                        (None, str(candidates_item_element).encode(), "text/plain"),
                    )
                )

        for prop_name, prop in self.additional_properties.items():
            files.append((prop_name, (None, str(prop).encode(), "text/plain")))

        return files

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        audio = File(payload=BytesIO(d.pop("audio")))

        top_k = d.pop("top_k", UNSET)

        threshold = d.pop("threshold", UNSET)

        candidates = cast(list[str], d.pop("candidates", UNSET))

        identify_form = cls(
            audio=audio,
            top_k=top_k,
            threshold=threshold,
            candidates=candidates,
        )

        identify_form.additional_properties = d
        return identify_form

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
