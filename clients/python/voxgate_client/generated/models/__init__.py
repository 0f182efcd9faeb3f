"""Contains all the data models used in inputs/outputs"""

from .audit_record import AuditRecord
from .candidate import Candidate
from .delete_response import DeleteResponse
from .enroll_form import EnrollForm
from .enroll_form_metadata import EnrollFormMetadata
from .enroll_response import EnrollResponse
from .health import Health
from .held_voiceprint import HeldVoiceprint
from .held_voiceprint_metadata_type_0 import HeldVoiceprintMetadataType0
from .identify_form import IdentifyForm
from .identify_response import IdentifyResponse
from .notice import Notice
from .precision import Precision
from .problem import Problem
from .readiness import Readiness
from .ready_checks import ReadyChecks
from .score_type import ScoreType
from .self_check_report import SelfCheckReport
from .speaker import Speaker
from .speaker_export import SpeakerExport
from .speaker_metadata import SpeakerMetadata
from .speaker_page import SpeakerPage
from .threshold_source import ThresholdSource
from .verify_form import VerifyForm
from .verify_response import VerifyResponse

__all__ = (
    "AuditRecord",
    "Candidate",
    "DeleteResponse",
    "EnrollForm",
    "EnrollFormMetadata",
    "EnrollResponse",
    "Health",
    "HeldVoiceprint",
    "HeldVoiceprintMetadataType0",
    "IdentifyForm",
    "IdentifyResponse",
    "Notice",
    "Precision",
    "Problem",
    "Readiness",
    "ReadyChecks",
    "ScoreType",
    "SelfCheckReport",
    "Speaker",
    "SpeakerExport",
    "SpeakerMetadata",
    "SpeakerPage",
    "ThresholdSource",
    "VerifyForm",
    "VerifyResponse",
)
