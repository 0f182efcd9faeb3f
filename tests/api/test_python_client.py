"""The Python client (clients/python) and the OpenAPI document it is generated from.

- the document, keys off and keys required, is what client generators read as the service behaves
  (named form schemas, problem+json errors with a ``default``, short operation ids, shared enums,
  always-sent fields required), and openapi-python-client generates from both without a warning;
- the committed client is exactly what the pinned generator makes of today's document (no drift), and
  the drift check notices a changed document or changed generated code;
- the README's Python example, and the whole flow (several files, both kinds of verification, identify,
  paging, delete, errors parsed with their code), run against a real ``voxgate serve`` process with the
  default model and a real redis-server;
- with keys required, the client sends its key, refusals are 401 problems, a rate-limited request is
  retried after its ``Retry-After`` (a multipart POST sent again whole), and the HTTP layer's own 408
  answer (no ``instance``) parses with the generated ``Problem``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from voxgate_client import VoxGate, VoxGateError
from voxgate_client.generated.api.operations import healthz, metrics, readyz
from voxgate_client.generated.api.speakers import get_speaker, list_speakers
from voxgate_client.generated.api.verification import verify
from voxgate_client.generated.models import Problem, Readiness, VerifyForm, VerifyResponse
from voxgate_client.generated.types import UNSET, File

from app.api.factory import create_app
from app.core.settings import Settings
from app.engine.manifest import ModelManifest
from app.speakers.policy import THRESHOLD_SOURCES
from app.speakers.scoring import SCORE_TYPES
from tests.support.data import EXAMPLES_AUDIO, REPO_ROOT, speech_files, wav_bytes
from tests.support.models import build_tiny_model, default_model_dir
from tests.support.redis_server import RedisProcess
from tests.support.service import LiveService, run_voxgate

pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "scripts" / "python_client.py"
CLIENT_DIR = REPO_ROOT / "clients" / "python"
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
README_URL = "http://127.0.0.1:8000"
SPEECH = speech_files()
SAMPLE = EXAMPLES_AUDIO / "1688-142285-{:04d}.flac"


# --- the document -------------------------------------------------------------------------------------
def _document(**settings: Any) -> dict[str, Any]:
    values = {"redis_url": "redis://127.0.0.1:6379/0", **settings}
    document: dict[str, Any] = create_app(Settings.model_construct(**values)).openapi()
    return document


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


OPERATIONS = (
    "enroll",
    "verify",
    "identify",
    "list_speakers",
    "get_speaker",
    "delete_speaker",
    "export_speaker",
)
OPERATIONS += ("healthz", "readyz", "metrics")
VARIANTS = {"keys-off": {"auth": "off"}, "keys-required": {"auth": "required"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_document_says_what_generators_need(variant: str) -> None:
    document = _document(**VARIANTS[variant])
    schemas, responses = document["components"]["schemas"], document["components"]["responses"]
    ids = [op["operationId"] for _, _, op in _operations(document)]
    assert sorted(ids) == sorted(OPERATIONS)
    for path, method, operation in _operations(document):
        where = f"{method.upper()} {path}"
        assert operation["responses"]["default"] == {"$ref": "#/components/responses/Problem"}, where
        for status, response in operation["responses"].items():
            if status == "default" or (int(status) >= 400 and not (path == "/readyz" and status == "503")):
                assert set(response) == {"$ref"}, f"{where} {status}: one shared problem response"
        body = operation.get("requestBody")
        if body is not None:  # a named form schema, not FastAPI's inline EnrollEnrollPostEnrollForm
            ref = body["content"]["multipart/form-data"]["schema"]["$ref"]
            assert ref.removeprefix("#/components/schemas/") in {"EnrollForm", "VerifyForm", "IdentifyForm"}
        assert ("401" in operation["responses"]) is (
            variant == "keys-required" and path not in ("/healthz", "/readyz", "/metrics")
        ), where
    for response in responses.values():  # only problem+json, with the schema under it
        assert response["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    assert ("Unauthorized" in responses) is (variant == "keys-required")
    assert ("securitySchemes" in document["components"]) is (variant == "keys-required")
    # instance is absent from the HTTP layer's own answers (408, 503 connection_limit); request_id never
    assert "instance" not in schemas["Problem"]["required"]
    assert "request_id" in schemas["Problem"]["required"]
    # /verify: the exactly-one-of rule inside allOf, beside the properties (not a top-level anyOf)
    verify_form = schemas["VerifyForm"]
    assert "anyOf" not in verify_form
    assert {"audio", "speaker_id", "reference", "threshold"} <= set(verify_form["properties"])
    assert [len(part["anyOf"]) for part in verify_form["allOf"]] == [2]
    # every field the service always sends is required (null or not)
    for name in ("EnrollResponse", "VerifyResponse", "IdentifyResponse", "Speaker", "Readiness", "Health",
                 "SpeakerExport", "HeldVoiceprint", "AuditRecord"):  # fmt: skip
        assert set(schemas[name]["required"]) == set(schemas[name]["properties"]), name
    # one schema per value set (the service's own: the scorer's score types, the manifest's precisions)
    assert schemas["ScoreType"]["enum"] == list(SCORE_TYPES)
    assert schemas["ThresholdSource"]["enum"] == list(THRESHOLD_SOURCES)
    assert schemas["Precision"]["enum"] == list(get_args(ModelManifest.model_fields["precision"].annotation))
    inline = [name for name, s in schemas.items() if '"enum":' in json.dumps(s) and "enum" not in s]
    assert not inline, f"value sets written inside {inline}: make them enums (one schema each)"
    metrics_200 = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert [media["schema"] for media in metrics_200.values()] == [{"type": "string"}]
    assert all(media.startswith("text/plain") for media in metrics_200)


def _with_venv_on_path() -> dict[str, str]:
    # The generator's post-hooks run `ruff` by name (without it: a warning, unformatted code).
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}


@pytest.mark.parametrize("variant", VARIANTS)
def test_openapi_python_client_generates_from_the_document_without_a_warning(
    variant: str, tmp_path: Path
) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(_document(**VARIANTS[variant])), encoding="utf-8")
    generate = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(tmp_path / "out"), "--config", str(CLIENT_DIR / "generator.yaml")],
        capture_output=True, text=True, timeout=300, check=False, env=_with_venv_on_path(),
    )  # fmt: skip
    output = generate.stdout + generate.stderr
    assert generate.returncode == 0, output
    assert "Warning" not in output, output
    models = {p.stem for p in (tmp_path / "out" / "models").glob("*.py")}
    assert {"enroll_form", "verify_form", "identify_form", "problem", "score_type", "precision"} <= models
    assert not [m for m in models if "_post_" in m or m.endswith("_score_type")], models
    functions = {p.stem for p in (tmp_path / "out" / "api").glob("*/*.py")} - {"__init__"}
    assert functions == set(OPERATIONS)
    verify_code = (tmp_path / "out" / "api" / "verification" / "verify.py").read_text(encoding="utf-8")
    assert "body: VerifyForm" in verify_code  # not `body: Any`


# --- no drift ---------------------------------------------------------------------------------------------
def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_committed_client_is_what_the_generator_makes_of_the_document() -> None:
    result = _check()
    assert result.returncode == 0, f"the client drifted from the document (`make client`):\n{result.stderr}"


def test_the_drift_check_notices_a_changed_document_and_changed_code(tmp_path: Path) -> None:
    copy = tmp_path / "python"
    shutil.copytree(CLIENT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    document = json.loads((copy / "openapi.json").read_text(encoding="utf-8"))
    document["paths"]["/healthz"]["get"]["operationId"] = "healthz_healthz_get"
    (copy / "openapi.json").write_text(json.dumps(document), encoding="utf-8")
    speaker = copy / "voxgate_client" / "generated" / "models" / "speaker.py"
    speaker.write_text(speaker.read_text(encoding="utf-8").replace("utterances", "utterance"), "utf-8")
    result = _check("--client-dir", str(copy))
    assert result.returncode == 1
    assert "openapi.json is not the service's document" in result.stderr
    assert "voxgate_client/generated/models/speaker.py differs" in result.stderr
    # the document changed: the code generated from it differs too
    assert "voxgate_client/generated/api/operations/healthz_healthz_get.py differs" in result.stderr


# --- against a live service, keys off (the README's flow) -----------------------------------------------
@pytest.fixture(scope="module")
def service(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with LiveService(default_model_dir(), redis_server.url, tmp_path_factory.mktemp("client")) as live:
        yield live


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, re.DOTALL | re.MULTILINE)


def _same_output(expected: str, actual: str) -> bool:
    """Printed words equal, numbers to the README's rounding (0.01)."""
    want, got = expected.split(), actual.split()
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        try:
            if abs(float(w) - float(g)) > 0.01:
                return False
        except ValueError:
            if w != g:
                return False
    return True


def test_the_readme_python_example_prints_what_it_says(service: LiveService) -> None:
    """The README's example, run as written (from the repository root) with the service's address; each
    print's ``# comment`` is the output it must give."""
    (code,) = _python_blocks(README)
    expected = [
        line.split("#", 1)[1].strip()
        for line in code.splitlines()
        if line.strip().startswith("print(") and "#" in line
    ]
    run = subprocess.run(
        [sys.executable, "-c", code.replace(README_URL, service.url)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.splitlines()
    assert len(printed) == len(expected), printed
    for want, got in zip(expected, printed, strict=True):
        assert _same_output(want, got), f"README says {want!r}, the example printed {got!r}"
    with VoxGate(service.url) as voxgate:  # it erased what it enrolled
        assert [s.speaker_id for s in voxgate.iter_speakers()] == []


def test_the_client_runs_every_endpoint_against_the_live_service(service: LiveService) -> None:
    one, other = SPEECH["librispeech_1688"], SPEECH["vctk_p225"]
    with VoxGate(service.url) as voxgate:
        assert voxgate.health().status == "ok"
        readiness = voxgate.readiness()
        assert readiness.ready is True
        assert readiness.precision.value == "fp32"
        # several files in one request, each kind of recording the client takes: path, bytes, file object
        with one[2].open("rb") as handle:
            enrolled = voxgate.enroll("alice", [one[0], wav_bytes(one[1]), handle], metadata={"team": "qa"})
        assert (enrolled.created, enrolled.added_utterances, enrolled.utterances) == (True, 3, 3)
        assert enrolled.warnings == []
        voxgate.enroll("bob", other[:2])
        voxgate.enroll("carol", [SPEECH["vctk_p226"][0]])

        same = voxgate.verify(one[3], speaker_id="alice")
        assert (same.speaker_id, same.reference, same.match) == ("alice", None, True)
        assert same.score_type.value == "cosine"
        assert same.llr is None
        assert voxgate.verify(other[3], speaker_id="alice").match is False
        pair = voxgate.verify(one[3], reference=io.BytesIO(wav_bytes(one[4])), threshold=0.8)  # stricter
        assert (pair.speaker_id, pair.threshold, pair.threshold_source.value) == (None, 0.8, "request")
        assert pair.match is (pair.score >= 0.8)
        lax = _raised(lambda: voxgate.verify(one[3], reference=one[4], threshold=0.1))
        assert (lax.status, lax.code, lax.extra["floor_source"]) == (403, "threshold_below_floor", "model")

        found = voxgate.identify(one[4], top_k=2)
        assert found.speaker_id == "alice"
        assert [c.speaker_id for c in found.candidates][:1] == ["alice"]
        assert len(found.candidates) == 2
        assert found.searched == 3
        only = voxgate.identify(one[4], candidates=["bob", "carol"])
        assert only.searched == 2
        assert {c.speaker_id for c in only.candidates} <= {"bob", "carol"}

        first = voxgate.list_speakers(limit=2)
        assert ([s.speaker_id for s in first.items], first.total) == (["alice", "bob"], 3)
        assert isinstance(first.next_cursor, str)
        second = voxgate.list_speakers(limit=2, cursor=first.next_cursor)
        assert ([s.speaker_id for s in second.items], second.next_cursor) == (["carol"], None)
        assert [s.speaker_id for s in voxgate.iter_speakers(page_size=1)] == ["alice", "bob", "carol"]
        alice = voxgate.get_speaker("alice")
        assert (alice.utterances, alice.metadata.to_dict(), alice.enrolled) == (3, {"team": "qa"}, True)
        assert alice.expires_at is not None
        export = voxgate.export_speaker("alice")  # without keys: every scope but threshold-override
        assert [v.utterances for v in export.voiceprints] == [3]
        assert [e.action for e in export.audit_events][:2] == ["enroll", "verify"]

        deleted = voxgate.delete_speaker("carol")
        assert deleted.speaker_id == "carol"
        assert deleted.deleted_models == [readiness.model]
        assert "voxgate_http_requests_total" in voxgate.metrics()

        for speaker_id in ("alice", "bob"):
            voxgate.delete_speaker(speaker_id)


def _raised(call: Any) -> VoxGateError:
    with pytest.raises(VoxGateError) as caught:
        call()
    return caught.value


def test_error_answers_are_raised_with_their_problem(service: LiveService) -> None:
    speech = SPEECH["vctk_p226"][0]
    with VoxGate(service.url) as voxgate:
        missing = _raised(lambda: voxgate.get_speaker("nobody"))
        assert (missing.status, missing.code) == (404, "speaker_not_found")
        assert missing.title == "Speaker not found"
        assert missing.instance == "/speakers/nobody"
        assert re.fullmatch(r"[0-9a-f]{32}", missing.request_id or "")
        assert str(missing).startswith("404 speaker_not_found: ")
        assert (_raised(lambda: voxgate.verify(speech, speaker_id="nobody")).code) == "speaker_not_found"
        bad_id = _raised(lambda: voxgate.enroll("no spaces", [speech]))
        assert (bad_id.status, bad_id.code) == (422, "invalid_speaker_id")
        both = _raised(lambda: voxgate.verify(speech, speaker_id="x", reference=speech))
        assert (both.status, both.code) == (422, "invalid_request")
        paging = _raised(lambda: voxgate.list_speakers(limit=0))
        assert paging.code == "invalid_request"
        assert paging.extra["errors"][0]["loc"] == ["query", "limit"]  # a problem's own members
        not_audio = _raised(lambda: voxgate.identify(b"this is text, not audio"))
        assert (not_audio.status, not_audio.code) == (415, "unsupported_media_type")
        assert [s.speaker_id for s in voxgate.iter_speakers()] == []  # nothing refused was stored


def test_the_generated_functions_parse_every_answer(service: LiveService) -> None:
    """The generated layer alone (what any openapi-python-client user gets): successes and errors are
    typed models, including the ``default`` problem of a status an operation does not list."""
    with VoxGate(service.url) as voxgate:
        api = voxgate.api
        assert healthz.sync(client=api) is not None
        assert isinstance(readyz.sync(client=api), Readiness)
        assert "voxgate_" in str(metrics.sync(client=api))
        found = get_speaker.sync_detailed("nobody", client=api)
        assert isinstance(found.parsed, Problem)
        assert (found.status_code, found.parsed.code) == (404, "speaker_not_found")
        limit = list_speakers.sync(client=api, limit=0)
        assert isinstance(limit, Problem)
        assert limit.code == "invalid_request"
        body = VerifyForm(
            audio=File(payload=io.BytesIO(wav_bytes(SPEECH["vctk_p226"][0])), file_name="a.wav"),
            reference=File(payload=io.BytesIO(wav_bytes(SPEECH["vctk_p226"][1])), file_name="b.wav"),
        )
        answer = verify.sync(client=api, body=body)
        assert isinstance(answer, VerifyResponse)
        assert answer.match is True
        assert answer.speaker_id is None
        assert answer.warnings == []
        # 405 is listed by no operation: the default response parses it
        wrong_method = httpx.put(f"{service.url}/healthz", timeout=10)
        assert wrong_method.status_code == 405
        problem = healthz._build_response(client=api, response=wrong_method).parsed
        assert isinstance(problem, Problem)
        assert problem.code == "method_not_allowed"


# --- keys required --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_service(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-client"))
    settings = {"auth": "required", "warmup": "false", "header_timeout_s": "1"}
    with LiveService(model, redis_server.url, tmp_path_factory.mktemp("keyed"), settings) as live:
        yield live


def _new_key(service: LiveService, tenant: str, *limits: str) -> str:
    created = run_voxgate("keys", "create", "--tenant", tenant, "--json", *limits, env=service.env)
    assert created.returncode == 0, created.stderr
    key: str = json.loads(created.stdout)["key"]
    return key


def test_the_client_sends_its_api_key(keyed_service: LiveService) -> None:
    key = _new_key(keyed_service, "acme")
    speech = SPEECH["vctk_p225"]
    with VoxGate(keyed_service.url, api_key=key) as voxgate:
        assert voxgate.enroll("dora", speech[:2]).utterances == 2
        assert [s.speaker_id for s in voxgate.iter_speakers()] == ["dora"]
        assert voxgate.verify(speech[2], speaker_id="dora").speaker_id == "dora"
        voxgate.delete_speaker("dora")
    with VoxGate(keyed_service.url) as anonymous:
        refused = _raised(lambda: anonymous.list_speakers())
        assert (refused.status, refused.code) == (401, "missing_api_key")
        assert anonymous.health().status == "ok"  # operations endpoints need no key
    with VoxGate(keyed_service.url, api_key=key[:-4] + "0000") as wrong:
        assert _raised(lambda: wrong.list_speakers()).code == "invalid_api_key"


class RecordingTransport(httpx.HTTPTransport):
    """httpx's own transport, noting each answer's status, Retry-After and when it came."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, str | None, float]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.answers.append((response.status_code, response.headers.get("retry-after"), time.monotonic()))
        return response


def test_rate_limited_requests_are_retried_after_retry_after(keyed_service: LiveService) -> None:
    # One request at once, one more each 2 s: the second request at once is 429 with Retry-After: 2.
    key = _new_key(keyed_service, "slow", "--rate", "0.5", "--burst", "1")
    speech = SPEECH["vctk_p226"]
    with VoxGate(keyed_service.url, api_key=key, max_retries=0) as impatient:
        impatient.list_speakers()
        limited = _raised(lambda: impatient.enroll("eve", speech[:2]))
        assert (limited.status, limited.code) == (429, "rate_limited")
    transport = RecordingTransport()
    with VoxGate(keyed_service.url, api_key=key, transport=transport) as patient:
        patient.list_speakers()  # retried until it gets the token: none is left for the enrollment
        transport.answers.clear()
        enrolled = patient.enroll("eve", speech[:2])  # the multipart body is sent again, whole
        assert (enrolled.created, enrolled.added_utterances) == (True, 2)
        statuses = [status for status, _, _ in transport.answers]
        assert statuses[-1] == 200
        assert set(statuses[:-1]) == {429}
        assert len(statuses) >= 2
        for (_, retry_after, answered), (_, _, next_answered) in zip(
            transport.answers, transport.answers[1:], strict=False
        ):
            assert retry_after is not None
            assert next_answered - answered >= float(retry_after) - 0.05  # it waited as told
        patient.delete_speaker("eve")


def test_the_http_layers_own_problem_parses_without_instance(keyed_service: LiveService) -> None:
    """A request whose headers never end gets the HTTP layer's 408, written before any path is known:
    it has no ``instance``, which the document allows, so the generated Problem parses it."""
    with socket.create_connection(("127.0.0.1", keyed_service.port), timeout=30) as sock:
        sock.sendall(b"GET /speakers HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    problem = Problem.from_dict(json.loads(body))
    assert (problem.status, problem.code, problem.instance) == (408, "request_timeout", UNSET)
    assert problem.request_id
