from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define

T = TypeVar("T", bound="DeleteResponse")


@_attrs_define
class DeleteResponse:
    """
    Attributes:
        speaker_id (str):
        deleted_models (list[str]): Model keys under which the speaker was erased.
    """

    speaker_id: str
    deleted_models: list[str]

    def to_dict(self) -> dict[str, Any]:
        speaker_id = self.speaker_id

        deleted_models = self.deleted_models

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "deleted_models": deleted_models,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        speaker_id = d.pop("speaker_id")

        deleted_models = cast(list[str], d.pop("deleted_models"))

        delete_response = cls(
            speaker_id=speaker_id,
            deleted_models=deleted_models,
        )

        return delete_response
