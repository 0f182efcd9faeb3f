from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.precision import Precision

if TYPE_CHECKING:
    from ..models.ready_checks import ReadyChecks
    from ..models.self_check_report import SelfCheckReport


T = TypeVar("T", bound="Readiness")


@_attrs_define
class Readiness:
    """
    Attributes:
        ready (bool):
        checks (ReadyChecks):
        provider (str):
        model (str):
        precision (Precision): Numeric precision of a served graph.
        speakers_indexed (int):
        selfcheck (None | SelfCheckReport): The start-up self-check's result.
        detail (None | str):
    """

    ready: bool
    checks: ReadyChecks
    provider: str
    model: str
    precision: Precision
    speakers_indexed: int
    selfcheck: None | SelfCheckReport
    detail: None | str

    def to_dict(self) -> dict[str, Any]:
        from ..models.self_check_report import SelfCheckReport

        ready = self.ready

        checks = self.checks.to_dict()

        provider = self.provider

        model = self.model

        precision = self.precision.value

        speakers_indexed = self.speakers_indexed

        selfcheck: dict[str, Any] | None
        if isinstance(self.selfcheck, SelfCheckReport):
            selfcheck = self.selfcheck.to_dict()
        else:
            selfcheck = self.selfcheck

        detail: None | str
        detail = self.detail

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "ready": ready,
                "checks": checks,
                "provider": provider,
                "model": model,
                "precision": precision,
                "speakers_indexed": speakers_indexed,
                "selfcheck": selfcheck,
                "detail": detail,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.ready_checks import ReadyChecks
        from ..models.self_check_report import SelfCheckReport

        d = dict(src_dict)
        ready = d.pop("ready")

        checks = ReadyChecks.from_dict(d.pop("checks"))

        provider = d.pop("provider")

        model = d.pop("model")

        precision = Precision(d.pop("precision"))

        speakers_indexed = d.pop("speakers_indexed")

        def _parse_selfcheck(data: object) -> None | SelfCheckReport:
            if data is None:
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                selfcheck_type_0 = SelfCheckReport.from_dict(data)

                return selfcheck_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | SelfCheckReport, data)

        selfcheck = _parse_selfcheck(d.pop("selfcheck"))

        def _parse_detail(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        detail = _parse_detail(d.pop("detail"))

        readiness = cls(
            ready=ready,
            checks=checks,
            provider=provider,
            model=model,
            precision=precision,
            speakers_indexed=speakers_indexed,
            selfcheck=selfcheck,
            detail=detail,
        )

        return readiness
