from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.precision import Precision

T = TypeVar("T", bound="SelfCheckReport")


@_attrs_define
class SelfCheckReport:
    """The start-up self-check: the graph embedded its bundle's probe on the serving provider and was
    compared with the float32 model's reference embeddings.

        Attributes:
            passed (bool | None): true: the probe's embeddings matched; null: not checked (the bundle has no probe). A
                failed check stops start-up, so it is never false on a running service.
            cosine (float | None): Worst probe clip's cosine to its reference embedding.
            threshold (float | None): The cosine it had to reach for this precision.
            provider (str):
            precision (Precision): Numeric precision of a served graph.
            detail (None | str): Why the graph was not checked.
    """

    passed: bool | None
    cosine: float | None
    threshold: float | None
    provider: str
    precision: Precision
    detail: None | str

    def to_dict(self) -> dict[str, Any]:
        passed: bool | None
        passed = self.passed

        cosine: float | None
        cosine = self.cosine

        threshold: float | None
        threshold = self.threshold

        provider = self.provider

        precision = self.precision.value

        detail: None | str
        detail = self.detail

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "passed": passed,
                "cosine": cosine,
                "threshold": threshold,
                "provider": provider,
                "precision": precision,
                "detail": detail,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)

        def _parse_passed(data: object) -> bool | None:
            if data is None:
                return data
            return cast(bool | None, data)

        passed = _parse_passed(d.pop("passed"))

        def _parse_cosine(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        cosine = _parse_cosine(d.pop("cosine"))

        def _parse_threshold(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        threshold = _parse_threshold(d.pop("threshold"))

        provider = d.pop("provider")

        precision = Precision(d.pop("precision"))

        def _parse_detail(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        detail = _parse_detail(d.pop("detail"))

        self_check_report = cls(
            passed=passed,
            cosine=cosine,
            threshold=threshold,
            provider=provider,
            precision=precision,
            detail=detail,
        )

        return self_check_report
