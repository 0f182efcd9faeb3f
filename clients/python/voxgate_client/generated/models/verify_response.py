from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.score_type import ScoreType
from ..models.threshold_source import ThresholdSource

if TYPE_CHECKING:
    from ..models.notice import Notice


T = TypeVar("T", bound="VerifyResponse")


@_attrs_define
class VerifyResponse:
    """
    Attributes:
        speaker_id (None | str): The enrolled speaker compared against, if any.
        reference (None | str): Filename of the reference recording, if used.
        score (float): The score score_type names: cosine similarity in [-1, 1], or AS-Norm.
        score_type (ScoreType): What `score` is: a raw cosine, or AS-Norm against the model's cohort
            (VOXGATE_SCORE_NORMALIZATION).
        llr (float | None): Calibrated log-likelihood ratio (natural log) of `score`, from the model's logistic-
            regression calibration (voxgate calibrate); null unless VOXGATE_CALIBRATED_SCORES=true. > 0 favours same
            speaker.
        threshold (float):
        threshold_source (ThresholdSource): Where a decision's threshold came from: the model (its manifest or
            calibration), the service
            (VOXGATE_THRESHOLD), the tenant's policy or the API key's (set by the operator), or the request.
        match (bool): score >= threshold
        model (str):
        warnings (list[Notice]):
    """

    speaker_id: None | str
    reference: None | str
    score: float
    score_type: ScoreType
    llr: float | None
    threshold: float
    threshold_source: ThresholdSource
    match: bool
    model: str
    warnings: list[Notice]

    def to_dict(self) -> dict[str, Any]:
        speaker_id: None | str
        speaker_id = self.speaker_id

        reference: None | str
        reference = self.reference

        score = self.score

        score_type = self.score_type.value

        llr: float | None
        llr = self.llr

        threshold = self.threshold

        threshold_source = self.threshold_source.value

        match = self.match

        model = self.model

        warnings = []
        for warnings_item_data in self.warnings:
            warnings_item = warnings_item_data.to_dict()
            warnings.append(warnings_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "reference": reference,
                "score": score,
                "score_type": score_type,
                "llr": llr,
                "threshold": threshold,
                "threshold_source": threshold_source,
                "match": match,
                "model": model,
                "warnings": warnings,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.notice import Notice

        d = dict(src_dict)

        def _parse_speaker_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        speaker_id = _parse_speaker_id(d.pop("speaker_id"))

        def _parse_reference(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        reference = _parse_reference(d.pop("reference"))

        score = d.pop("score")

        score_type = ScoreType(d.pop("score_type"))

        def _parse_llr(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        llr = _parse_llr(d.pop("llr"))

        threshold = d.pop("threshold")

        threshold_source = ThresholdSource(d.pop("threshold_source"))

        match = d.pop("match")

        model = d.pop("model")

        warnings = []
        _warnings = d.pop("warnings")
        for warnings_item_data in _warnings:
            warnings_item = Notice.from_dict(warnings_item_data)

            warnings.append(warnings_item)

        verify_response = cls(
            speaker_id=speaker_id,
            reference=reference,
            score=score,
            score_type=score_type,
            llr=llr,
            threshold=threshold,
            threshold_source=threshold_source,
            match=match,
            model=model,
            warnings=warnings,
        )

        return verify_response
