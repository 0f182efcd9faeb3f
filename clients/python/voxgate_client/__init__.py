"""Typed Python client of the VoxGate service.

    from voxgate_client import VoxGate, VoxGateError

    with VoxGate("http://127.0.0.1:8000", api_key=None) as voxgate:
        voxgate.enroll("spk1688", ["a.flac", "b.flac"])
        print(voxgate.verify("c.flac", speaker_id="spk1688").match)

``VoxGate`` (``voxgate_client.client``) is written by hand over ``voxgate_client.generated``, which
openapi-python-client generates from the service's OpenAPI document (``make client`` in the VoxGate
repository regenerates it; never edit it by hand). The answers are the generated models.
"""

from voxgate_client.client import Audio, VoxGate, VoxGateError
from voxgate_client.generated.models import (
    Candidate,
    DeleteResponse,
    EnrollResponse,
    Health,
    IdentifyResponse,
    Notice,
    Precision,
    Readiness,
    ScoreType,
    Speaker,
    SpeakerPage,
    VerifyResponse,
)

__all__ = [
    "Audio",
    "Candidate",
    "DeleteResponse",
    "EnrollResponse",
    "Health",
    "IdentifyResponse",
    "Notice",
    "Precision",
    "Readiness",
    "ScoreType",
    "Speaker",
    "SpeakerPage",
    "VerifyResponse",
    "VoxGate",
    "VoxGateError",
]
