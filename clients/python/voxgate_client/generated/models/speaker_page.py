from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.speaker import Speaker


T = TypeVar("T", bound="SpeakerPage")


@_attrs_define
class SpeakerPage:
    """
    Attributes:
        items (list[Speaker]):
        total (int):
        next_cursor (None | str): Pass as ?cursor= for the next page; null at the end.
    """

    items: list[Speaker]
    total: int
    next_cursor: None | str

    def to_dict(self) -> dict[str, Any]:
        items = []
        for items_item_data in self.items:
            items_item = items_item_data.to_dict()
            items.append(items_item)

        total = self.total

        next_cursor: None | str
        next_cursor = self.next_cursor

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "items": items,
                "total": total,
                "next_cursor": next_cursor,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.speaker import Speaker

        d = dict(src_dict)
        items = []
        _items = d.pop("items")
        for items_item_data in _items:
            items_item = Speaker.from_dict(items_item_data)

            items.append(items_item)

        total = d.pop("total")

        def _parse_next_cursor(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        next_cursor = _parse_next_cursor(d.pop("next_cursor"))

        speaker_page = cls(
            items=items,
            total=total,
            next_cursor=next_cursor,
        )

        return speaker_page
