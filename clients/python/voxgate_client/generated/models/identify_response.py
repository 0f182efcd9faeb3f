from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.score_type import ScoreType
from ..models.threshold_source import ThresholdSource

if TYPE_CHECKING:
    from ..models.candidate import Candidate
    from ..models.notice import Notice


T = TypeVar("T", bound="IdentifyResponse")


@_attrs_define
class IdentifyResponse:
    """
    Attributes:
        speaker_id (None | str): Best match at or above the threshold; null = nobody known.
        score (float | None): Score of speaker_id (null when nobody matched).
        candidates (list[Candidate]): Best-scoring speakers, best first.
        score_type (ScoreType): What `score` is: a raw cosine, or AS-Norm against the model's cohort
            (VOXGATE_SCORE_NORMALIZATION).
        llr (float | None): Calibrated log-likelihood ratio (natural log) of `score`, from the model's logistic-
            regression calibration (voxgate calibrate); null unless VOXGATE_CALIBRATED_SCORES=true. > 0 favours same
            speaker. Of speaker_id's score.
        threshold (float):
        threshold_source (ThresholdSource): Where a decision's threshold came from: the model (its manifest or
            calibration), the service
            (VOXGATE_THRESHOLD), the tenant's policy or the API key's (set by the operator), or the request.
        searched (int): How many enrolled speakers were compared.
        model (str):
        warnings (list[Notice]):
    """

    speaker_id: None | str
    score: float | None
    candidates: list[Candidate]
    score_type: ScoreType
    llr: float | None
    threshold: float
    threshold_source: ThresholdSource
    searched: int
    model: str
    warnings: list[Notice]

    def to_dict(self) -> dict[str, Any]:
        speaker_id: None | str
        speaker_id = self.speaker_id

        score: float | None
        score = self.score

        candidates = []
        for candidates_item_data in self.candidates:
            candidates_item = candidates_item_data.to_dict()
            candidates.append(candidates_item)

        score_type = self.score_type.value

        llr: float | None
        llr = self.llr

        threshold = self.threshold

        threshold_source = self.threshold_source.value

        searched = self.searched

        model = self.model

        warnings = []
        for warnings_item_data in self.warnings:
            warnings_item = warnings_item_data.to_dict()
            warnings.append(warnings_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "score": score,
                "candidates": candidates,
                "score_type": score_type,
                "llr": llr,
                "threshold": threshold,
                "threshold_source": threshold_source,
                "searched": searched,
                "model": model,
                "warnings": warnings,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.candidate import Candidate
        from ..models.notice import Notice

        d = dict(src_dict)

        def _parse_speaker_id(data: object) -> None | str:
            if data is None:
                return data
            return cast(None | str, data)

        speaker_id = _parse_speaker_id(d.pop("speaker_id"))

        def _parse_score(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        score = _parse_score(d.pop("score"))

        candidates = []
        _candidates = d.pop("candidates")
        for candidates_item_data in _candidates:
            candidates_item = Candidate.from_dict(candidates_item_data)

            candidates.append(candidates_item)

        score_type = ScoreType(d.pop("score_type"))

        def _parse_llr(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        llr = _parse_llr(d.pop("llr"))

        threshold = d.pop("threshold")

        threshold_source = ThresholdSource(d.pop("threshold_source"))

        searched = d.pop("searched")

        model = d.pop("model")

        warnings = []
        _warnings = d.pop("warnings")
        for warnings_item_data in _warnings:
            warnings_item = Notice.from_dict(warnings_item_data)

            warnings.append(warnings_item)

        identify_response = cls(
            speaker_id=speaker_id,
            score=score,
            candidates=candidates,
            score_type=score_type,
            llr=llr,
            threshold=threshold,
            threshold_source=threshold_source,
            searched=searched,
            model=model,
            warnings=warnings,
        )

        return identify_response
