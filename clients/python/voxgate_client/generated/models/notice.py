from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define

T = TypeVar("T", bound="Notice")


@_attrs_define
class Notice:
    """A non-fatal remark about the request (e.g. a recording unlike the enrolled ones).

    Attributes:
        code (str):
        detail (str):
        file (None | str):
    """

    code: str
    detail: str
    file: None | str

    def to_dict(self) -> dict[str, Any]:
        code = self.code

        detail = self.detail

        file: None | str
        file = self.file

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "code": code,
                "detail": detail,
                "file": file,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        code = d.pop("code")

        detail = d.pop("detail")

        def _parse_file(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        file = _parse_file(d.pop("file"))

        notice = cls(
            code=code,
            detail=detail,
            file=file,
        )

        return notice
