"""A streaming multipart/form-data reader that enforces the upload limits *while* reading.

Starlette's form parser spools any file size to disk before a route sees it; here every file part
is counted as its bytes arrive and the request is refused with 413 ``audio_too_large`` the moment a
file passes ``max_file_bytes`` — the rest of the body is never read. A ``Content-Length`` larger than
the whole request could legitimately be is refused before reading anything.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.core.errors import (
    AudioTooLarge,
    InvalidRequest,
    RequestCancelled,
    UnsupportedMediaType,
    VoxGateError,
)

if TYPE_CHECKING:  # the TypedDict exists only for type checkers
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 16 * 1024  # text fields (ids, thresholds, metadata JSON) are small
# A file's first bytes are shown to ``on_file_head`` once this many have arrived (its container header:
# an over-long recording is refused while the rest of the upload is still on the way).
HEAD_BYTES = 64 * 1024
FileHeadCheck = Callable[[bytes], None]
MAX_FIELDS = 64
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers


@dataclass(frozen=True)
class UploadedFile:
    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class FormContents:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)

    def field_value(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def field_values(self, name: str) -> list[str]:
        return self.fields.get(name, [])

    def file_list(self, name: str) -> list[UploadedFile]:
        return self.files.get(name, [])


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)
    head_seen: bool = False


class _Collector:
    def __init__(
        self,
        charset: str,
        max_file_bytes: int,
        max_files: int,
        file_fields: frozenset[str],
        on_file_head: FileHeadCheck | None,
    ) -> None:
        self.charset = charset
        self.file_fields = file_fields
        self.on_file_head = on_file_head
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.contents = FormContents()
        self.part = _Part()
        self.n_files = 0
        self.n_fields = 0
        self._header_name = b""
        self._header_value = b""

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        # UnicodeError, not just UnicodeDecodeError: codecs such as punycode / idna raise the base class.
        except UnicodeError as exc:
            raise InvalidRequest(f"form field is not valid {self.charset}") from exc

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self._header_name.lower()] = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise InvalidRequest('a form part lacks the Content-Disposition "name"')
        self.part.name = self._decode(options[b"name"])
        # A part is a file when it says so (a filename) or when the form declares that field a file.
        if b"filename" in options or self.part.name in self.file_fields:
            self.part.is_file = True
            if b"filename" in options:
                self.part.filename = self._decode(options[b"filename"])
            self.n_files += 1
            if self.n_files > self.max_files:
                raise InvalidRequest(f"too many files: at most {self.max_files} per request")
        else:
            self.n_fields += 1
            if self.n_fields > MAX_FIELDS:
                raise InvalidRequest(f"too many form fields: at most {MAX_FIELDS}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        limit = self.max_file_bytes if part.is_file else MAX_FIELD_BYTES
        if len(part.data) + (end - start) > limit:
            if part.is_file:
                raise AudioTooLarge(
                    f"file {part.filename!r} exceeds the upload limit of {limit} bytes",
                    max_upload_bytes=limit,
                )
            raise InvalidRequest(f"form field {part.name!r} exceeds {limit} bytes")
        part.data.extend(data[start:end])
        if (
            part.is_file
            and not part.head_seen
            and self.on_file_head is not None
            and len(part.data) >= HEAD_BYTES
        ):
            part.head_seen = True
            name = part.filename or part.name
            try:
                self.on_file_head(bytes(part.data[:HEAD_BYTES]))
            except VoxGateError as exc:
                exc.extra.setdefault("file", name)
                raise

    def on_part_end(self) -> None:
        part = self.part
        if part.is_file:
            ctype = part.headers.get(b"content-type")
            upload = UploadedFile(
                part.name, part.filename, ctype.decode("latin-1") if ctype else None, bytes(part.data)
            )
            self.contents.files.setdefault(part.name, []).append(upload)
        else:
            self.contents.fields.setdefault(part.name, []).append(self._decode(bytes(part.data)))


def _text_charset(raw: bytes) -> str:
    """The declared charset when it names a text encoding, else UTF-8. codecs.lookup() also knows
    bytes-to-bytes codecs (base64, hex, zlib, rot13) that str.decode() refuses with LookupError."""
    try:
        name = codecs.lookup(raw.decode("latin-1")).name
        b"a".decode(name)  # not b"": an empty input skips the text-encoding check
    except LookupError:
        return "utf-8"
    except UnicodeError:
        pass  # a text encoding ("a" is just not valid in it, e.g. UTF-16)
    return name


def max_body_bytes(max_files: int, max_file_bytes: int) -> int:
    """The largest multipart body a form of ``max_files`` files of ``max_file_bytes`` can be."""
    return max_files * max_file_bytes + MAX_FIELDS * MAX_FIELD_BYTES + _MULTIPART_OVERHEAD


def declared_length(request: Request) -> int | None:
    """The request's Content-Length when it is a plain decimal number, else None."""
    declared = request.headers.get("content-length")
    # isascii() too: str.isdigit() accepts digits such as '²' that int() refuses (ValueError -> 500).
    if declared is not None and declared.isascii() and declared.isdigit():
        return int(declared)
    return None


async def read_multipart(
    request: Request,
    *,
    max_file_bytes: int,
    max_files: int,
    file_fields: frozenset[str] = frozenset(),
    on_unannounced_bytes: Callable[[int], None] | None = None,
    on_file_head: FileHeadCheck | None = None,
) -> FormContents:
    """Read and parse the body; ``on_unannounced_bytes`` is told of every chunk of a body that came
    without a Content-Length (so the caller can count it against a budget as it streams in), and
    ``on_file_head`` sees the first ``HEAD_BYTES`` of every file part (and may refuse the request)."""
    content_type = request.headers.get("content-type", "")
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType("the request body must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary")

    declared = declared_length(request)
    limit = max_body_bytes(max_files, max_file_bytes)
    if declared is not None and declared > limit:
        raise AudioTooLarge(
            f"request body of {declared} bytes exceeds the upload limit "
            f"({max_files} file(s) of at most {max_file_bytes} bytes)",
            max_upload_bytes=max_file_bytes,
        )

    charset = _text_charset(params.get(b"charset", b"utf-8"))
    collector = _Collector(charset, max_file_bytes, max_files, file_fields, on_file_head)
    callbacks: MultipartCallbacks = {
        "on_part_begin": collector.on_part_begin,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
    }
    received = 0
    try:
        # Inside the try: the parser refuses an over-long boundary (> 256 bytes) with FormParserError.
        parser = MultipartParser(boundary, callbacks)
        async for chunk in request.stream():
            received += len(chunk)
            if declared is None and on_unannounced_bytes is not None:
                on_unannounced_bytes(len(chunk))
            if received > limit:  # a chunked body without Content-Length
                raise AudioTooLarge(f"request body exceeds {limit} bytes", max_upload_bytes=max_file_bytes)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    except ClientDisconnect as exc:  # nobody reads the answer; not a server error either
        raise RequestCancelled("the client went away while sending the body") from exc
    return collector.contents
