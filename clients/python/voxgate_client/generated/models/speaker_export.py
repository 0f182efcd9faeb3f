from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.audit_record import AuditRecord
    from ..models.held_voiceprint import HeldVoiceprint


T = TypeVar("T", bound="SpeakerExport")


@_attrs_define
class SpeakerExport:
    """Everything held about one speaker except the voiceprint itself (a data-subject request).

    Attributes:
        speaker_id (str):
        tenant (str):
        exported_at (float): Unix time
        voiceprints (list[HeldVoiceprint]): One per model the speaker is enrolled under.
        locked_until (float | None): Unix time the speaker's lockout ends; null = not locked.
        recent_failed_verifications (int): Failed verifications within the lockout window.
        audit_events (list[AuditRecord]): Every audit event naming the speaker still in the tenant's trail (capped at
            VOXGATE_AUDIT_MAX_EVENTS per stream), oldest first.
    """

    speaker_id: str
    tenant: str
    exported_at: float
    voiceprints: list[HeldVoiceprint]
    locked_until: float | None
    recent_failed_verifications: int
    audit_events: list[AuditRecord]

    def to_dict(self) -> dict[str, Any]:
        speaker_id = self.speaker_id

        tenant = self.tenant

        exported_at = self.exported_at

        voiceprints = []
        for voiceprints_item_data in self.voiceprints:
            voiceprints_item = voiceprints_item_data.to_dict()
            voiceprints.append(voiceprints_item)

        locked_until: float | None
        locked_until = self.locked_until

        recent_failed_verifications = self.recent_failed_verifications

        audit_events = []
        for audit_events_item_data in self.audit_events:
            audit_events_item = audit_events_item_data.to_dict()
            audit_events.append(audit_events_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "speaker_id": speaker_id,
                "tenant": tenant,
                "exported_at": exported_at,
                "voiceprints": voiceprints,
                "locked_until": locked_until,
                "recent_failed_verifications": recent_failed_verifications,
                "audit_events": audit_events,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.audit_record import AuditRecord
        from ..models.held_voiceprint import HeldVoiceprint

        d = dict(src_dict)
        speaker_id = d.pop("speaker_id")

        tenant = d.pop("tenant")

        exported_at = d.pop("exported_at")

        voiceprints = []
        _voiceprints = d.pop("voiceprints")
        for voiceprints_item_data in _voiceprints:
            voiceprints_item = HeldVoiceprint.from_dict(voiceprints_item_data)

            voiceprints.append(voiceprints_item)

        def _parse_locked_until(data: object) -> float | None:
            if data is None:
                return data
            return cast(float | None, data)

        locked_until = _parse_locked_until(d.pop("locked_until"))

        recent_failed_verifications = d.pop("recent_failed_verifications")

        audit_events = []
        _audit_events = d.pop("audit_events")
        for audit_events_item_data in _audit_events:
            audit_events_item = AuditRecord.from_dict(audit_events_item_data)

            audit_events.append(audit_events_item)

        speaker_export = cls(
            speaker_id=speaker_id,
            tenant=tenant,
            exported_at=exported_at,
            voiceprints=voiceprints,
            locked_until=locked_until,
            recent_failed_verifications=recent_failed_verifications,
            audit_events=audit_events,
        )

        return speaker_export
