"""The multipart form contract: one pydantic model per endpoint.

The same model validates what the streaming multipart reader (``app.api.multipart``) returns and is the
request body schema of the OpenAPI document, so a limit is written once and the document states
exactly what the service accepts. Limits that are settings (files per enrollment, metadata size) are
baked into the models when the app is built (``build_forms``).

Text fields arrive as lists of strings; a list field may repeat, a scalar field given twice is refused
(which of two thresholds or speaker ids was meant is not for the service to guess); blank values count
as absent. Errors become 422 problems: ``invalid_speaker_id`` for a malformed id,
``invalid_request`` for everything else.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from starlette.requests import Request

from app.api.multipart import FileHeadCheck, FormContents, UploadedFile, read_multipart
from app.core.errors import InvalidRequest, InvalidSpeakerId
from app.core.ids import SPEAKER_ID_PATTERN, invalid_speaker_id
from app.core.settings import Settings

FormT = TypeVar("FormT", bound="Form")

# Stored metadata is served back inside the speaker JSON; pydantic refuses to serialise nesting deeper
# than ~250 levels, so a deeper object would be accepted once and then 500 every read of the speaker.
MAX_METADATA_DEPTH = 32
MAX_TOP_K = 100
DEFAULT_TOP_K = 5
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_SPEAKER_ID_FIELDS = ("speaker_id", "candidates")

AudioFile = Annotated[
    InstanceOf[UploadedFile],
    WithJsonSchema({"type": "string", "format": "binary"}),
]
SpeakerId = Annotated[str, StringConstraints(pattern=SPEAKER_ID_PATTERN)]
_FLOOR = (
    "Stricter than the operator's threshold, or at least at its floor: below it the answer is 403 "
    "threshold_below_floor unless the API key holds the threshold-override scope."
)
Threshold = Annotated[
    float | None,
    Field(
        None,
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description=f"Cosine threshold for a match. {_FLOOR}",
    ),
]
# VOXGATE_SCORE_NORMALIZATION=asnorm: scores (and thresholds) are AS-Norm z-scores, not cosines.
ASNORM_THRESHOLD_LIMIT = 100.0
AsnormThreshold = Annotated[
    float | None,
    Field(
        None,
        ge=-ASNORM_THRESHOLD_LIMIT,
        le=ASNORM_THRESHOLD_LIMIT,
        allow_inf_nan=False,
        description=f"AS-Norm score threshold for a match. {_FLOOR}",
    ),
]


def _integer_text(value: object) -> object:
    # Only plain decimal digits: "3.0" or "0x3" is not an integer a client meant.
    if isinstance(value, str) and not _INTEGER.fullmatch(value):
        raise ValueError("must be a whole number written in decimal digits")
    return value


def _split_ids(value: object) -> object:
    # Candidates may repeat the field or be comma-separated in one value.
    if isinstance(value, list):
        return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf without going through parse_constant; stored, it would come back altered.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_metadata(raw: object, max_bytes: int) -> dict[str, Any] | None:
    """The metadata form field: a JSON object of finite numbers and valid Unicode, size- and depth-capped."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError("metadata must be JSON text")
    if len(raw.encode()) > max_bytes:
        raise ValueError(f"metadata is larger than {max_bytes} bytes")
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
        # "\ud800" escapes decode to lone surrogates, which no UTF-8 response can carry: stored, they
        # would make every later read of the speaker (GET /speakers) fail with a 500.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting under a large limit
        raise ValueError("metadata must be a JSON object of finite numbers and valid Unicode text") from exc
    if not isinstance(value, dict):
        raise ValueError("metadata must be a JSON object")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    return value


class Form(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def file_fields(cls) -> frozenset[str]:
        return _file_fields(cls)

    @classmethod
    def max_files(cls) -> int:
        """Most file parts a valid form has (the multipart reader stops beyond it)."""
        return _max_files(cls)


class EnrollForm(Form):
    speaker_id: SpeakerId
    audio: list[AudioFile] = Field(
        min_length=1, description="One or more recordings (WAV, FLAC, OGG Vorbis/Opus, MP3)."
    )
    metadata: dict[str, Any] | None = None


class VerifyForm(Form):
    # Exactly one of the two, written so that schema-driven clients (schemathesis) generate it. Inside
    # allOf, beside the properties: a top-level anyOf is read by client generators as the whole schema
    # (openapi-python-client then drops the properties and sends an empty form).
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "anyOf": [
                        {"required": ["speaker_id"], "not": {"required": ["reference"]}},
                        {"required": ["reference"], "not": {"required": ["speaker_id"]}},
                    ]
                }
            ]
        }
    )

    audio: AudioFile
    speaker_id: SpeakerId | None = Field(None, description="Compare against this enrolled speaker ...")
    reference: AudioFile | None = Field(None, description="... or against this second recording.")
    threshold: Threshold = None

    @model_validator(mode="after")
    def _one_reference(self) -> VerifyForm:
        if (self.speaker_id is None) == (self.reference is None):
            raise ValueError("give exactly one of: form field 'speaker_id' or file 'reference'")
        return self


class IdentifyForm(Form):
    audio: AudioFile
    top_k: Annotated[int, BeforeValidator(_integer_text)] = Field(
        DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="How many of the closest speakers `candidates` lists."
    )
    threshold: Threshold = None
    candidates: Annotated[list[SpeakerId] | None, BeforeValidator(_split_ids)] = Field(
        None,
        min_length=1,  # a value with separators only would search nobody, silently
        description="Restrict the search to these speaker ids (repeat the field or comma-separate).",
    )


@dataclass(frozen=True)
class Forms:
    """The app's form models, with its settings' limits in them."""

    enroll: type[EnrollForm]
    verify: type[VerifyForm]
    identify: type[IdentifyForm]


def build_forms(settings: Settings) -> Forms:
    max_metadata = settings.max_metadata_bytes

    def limited_metadata(raw: object) -> dict[str, Any] | None:
        return parse_metadata(raw, max_metadata)

    class LimitedEnrollForm(EnrollForm):
        audio: list[AudioFile] = Field(
            min_length=1,
            max_length=settings.max_enroll_files,
            description="One or more recordings (WAV, FLAC, OGG Vorbis/Opus, MP3).",
        )
        metadata: Annotated[
            dict[str, Any] | None,
            BeforeValidator(limited_metadata),
            WithJsonSchema({"type": "object"}),
        ] = Field(
            None,
            description=f"JSON object stored with the speaker (replaces earlier metadata): at most "
            f"{max_metadata} bytes of UTF-8, finite numbers, valid Unicode, at most {MAX_METADATA_DEPTH} "
            "levels deep.",
        )

    LimitedEnrollForm.__name__ = LimitedEnrollForm.__qualname__ = "EnrollForm"
    verify: type[VerifyForm] = VerifyForm
    identify: type[IdentifyForm] = IdentifyForm
    if settings.score_normalization == "asnorm":

        class AsnormVerifyForm(VerifyForm):
            threshold: AsnormThreshold = None

        class AsnormIdentifyForm(IdentifyForm):
            threshold: AsnormThreshold = None

        AsnormVerifyForm.__name__ = AsnormVerifyForm.__qualname__ = "VerifyForm"
        AsnormIdentifyForm.__name__ = AsnormIdentifyForm.__qualname__ = "IdentifyForm"
        verify, identify = AsnormVerifyForm, AsnormIdentifyForm
    return Forms(enroll=LimitedEnrollForm, verify=verify, identify=identify)


# --- from multipart contents to a validated form -------------------------------------------------
def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(_strip_optional(annotation)) is list


@functools.cache
def _file_fields(model: type[Form]) -> frozenset[str]:
    """Fields whose schema is binary (``AudioFile`` or a list of them)."""
    names = set()
    for name, schema in model.model_json_schema()["properties"].items():
        variants = [schema, schema.get("items", {}), *schema.get("anyOf", [])]
        if any(v.get("format") == "binary" for v in variants):
            names.add(name)
    return frozenset(names)


# What a form model's fields are is worked out once per model, not per request.
@functools.cache
def _max_files(model: type[Form]) -> int:
    total = 0
    for name in _file_fields(model):
        info = model.model_fields[name]
        limit = next((m.max_length for m in info.metadata if hasattr(m, "max_length")), None)
        total += (limit or 1) if name in _list_fields(model) else 1
    return total


@functools.cache
def _list_fields(model: type[Form]) -> frozenset[str]:
    """Fields that take several values."""
    return frozenset(name for name, info in model.model_fields.items() if _is_list(info.annotation))


def _is_file_field(model: type[Form], name: str) -> bool:
    return name in _file_fields(model)


def _form_input(model: type[Form], contents: FormContents) -> dict[str, Any]:
    data: dict[str, Any] = {}
    many_values = _list_fields(model)
    for name in model.model_fields:
        many = name in many_values
        if _is_file_field(model, name):
            files = contents.file_list(name)
            if not files:
                continue
            if not many and len(files) > 1:
                raise InvalidRequest(f"at most 1 file in field {name!r}")
            data[name] = files if many else files[0]
            continue
        values = [v.strip() for v in contents.field_values(name) if v.strip()]
        if not many and len(values) > 1:
            raise InvalidRequest(f"form field {name!r} given {len(values)} times; send it once")
        if values:
            data[name] = values if many else values[0]
    return data


def _problem(model: type[Form], error: dict[str, Any]) -> InvalidRequest | InvalidSpeakerId:
    loc = [str(p) for p in error.get("loc", ())]
    where = ".".join(loc)
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        kind = "file field" if loc and _is_file_field(model, loc[0]) else "form field"
        return InvalidRequest(f"{kind} {where!r} is required")
    if loc and loc[0] in _SPEAKER_ID_FIELDS and error.get("type") == "string_pattern_mismatch":
        return invalid_speaker_id()
    return InvalidRequest(f"{where}: {message}" if where else message)


def validate_form(model: type[FormT], contents: FormContents) -> FormT:
    try:
        return model.model_validate(_form_input(model, contents))
    except ValidationError as exc:
        raise _problem(model, dict(exc.errors()[0])) from None


async def read_form(
    request: Request,
    model: type[FormT],
    *,
    max_file_bytes: int,
    on_unannounced_bytes: Callable[[int], None] | None = None,
    on_file_head: FileHeadCheck | None = None,
) -> FormT:
    """Stream the multipart body in (limits enforced while reading), then validate it as ``model``."""
    contents = await read_multipart(
        request,
        max_file_bytes=max_file_bytes,
        max_files=model.max_files(),
        file_fields=model.file_fields(),
        on_unannounced_bytes=on_unannounced_bytes,
        on_file_head=on_file_head,
    )
    return validate_form(model, contents)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A multipart field is absent or present; "null" is no value a form part can have."""
    variants = schema.get("anyOf")
    if variants is None:
        return schema
    kept = [v for v in variants if v.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


def form_schema(model: type[Form]) -> dict[str, Any]:
    """The JSON schema of a form as the OpenAPI document names it (``components/schemas/<model name>``);
    ``json_schema_extra`` of the model can add combinators (verify: exactly one of speaker_id /
    reference)."""
    schema = copy.deepcopy(model.model_json_schema())
    schema["properties"] = {name: _without_null(prop) for name, prop in schema.get("properties", {}).items()}
    return schema


def openapi_body(model: type[Form]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is ``model`` as multipart/form-data (the schema itself is
    added to the document's components by ``app.api.routes.openapi``). Object fields (metadata) are
    JSON-encoded parts."""
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    encoding = {
        name: {"contentType": "application/json"}
        for name, prop in form_schema(model)["properties"].items()
        if prop.get("type") == "object"
    }
    if encoding:
        media["encoding"] = encoding
    return {"requestBody": {"required": True, "content": {"multipart/form-data": media}}}
