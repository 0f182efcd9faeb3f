"""``--pretrained``: the real download code against a local HTTP server serving a fixture checkpoint."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.cli.export import PRETRAINED_NAMES
from app.cli.main import main
from app.engine.manifest import load_manifest
from app.export.pretrained import (
    BASE_URL_ENV,
    PRETRAINED,
    DownloadError,
    download_file,
    fetch_checkpoint,
)
from tests.support.data import audio, nemo_path, reference

FIXTURE_MODEL = "titanet-large-reduced"


@dataclass
class FileServer:
    """Serves ``files`` (name -> bytes) with Range support; can cut the first N responses short."""

    files: dict[str, bytes]
    requests: list[dict[str, str]] = field(default_factory=list)
    truncate_next: list[int] = field(default_factory=list)  # bytes to send before dropping the connection
    url: str = ""


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            state.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
            body = state.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            start = 0
            range_header = self.headers.get("Range")
            if range_header:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if state.truncate_next:
                payload = payload[: state.truncate_next.pop(0)]
                self.close_connection = True
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(files={f"{name}.nemo": nemo_path(FIXTURE_MODEL).read_bytes() for name in PRETRAINED})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def fixture_sha256() -> str:
    return hashlib.sha256(nemo_path(FIXTURE_MODEL).read_bytes()).hexdigest()


def test_cli_pretrained_export_through_base_url_env(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    cache, out = tmp_path / "cache", tmp_path / "bundle"
    argv = ["export", "--pretrained", "titanet_large", "--out", str(out), "--cache-dir", str(cache)]
    assert main(argv) == 0
    cached = cache / "titanet_large.nemo"
    assert cached.read_bytes() == nemo_path(FIXTURE_MODEL).read_bytes()
    assert (cache / "titanet_large.nemo.sha256").read_text().strip() == fixture_sha256()
    assert not list(cache.glob("*.part"))
    manifest = load_manifest(out)
    assert manifest.name == "titanet_large"
    assert manifest.source == f"{server.url}titanet_large.nemo"
    assert manifest.source_sha256 == fixture_sha256()
    assert manifest.license == "CC-BY-4.0"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = audio("utt2")
    (emb,) = session.run(None, {"audio": x[None], "lengths": np.array([len(x)], dtype=np.int64)})
    assert np.abs(emb - reference(FIXTURE_MODEL, "utt2.emb")).max() < 1e-4

    # A second export reuses the verified cache: no new request.
    before = len(server.requests)
    assert main([*argv[:-4], "--out", str(tmp_path / "again"), "--cache-dir", str(cache)]) == 0
    assert len(server.requests) == before


def test_interrupted_download_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.nemo"
    url = f"{server.url}titanet_large.nemo"
    server.truncate_next = [100_000]
    with pytest.raises(DownloadError, match=r"interrupted|got \d+ of"):
        download_file(url, dest, progress=False)
    part = tmp_path / "ckpt.nemo.part"
    assert part.stat().st_size == 100_000
    assert not dest.exists()  # never a partial file under the final name

    digest = download_file(url, dest, expected_sha256=fixture_sha256(), progress=False)
    assert digest == fixture_sha256()
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert dest.read_bytes() == nemo_path(FIXTURE_MODEL).read_bytes()
    assert not part.exists()


def test_sha256_mismatch_is_refused_and_nothing_kept(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.nemo"
    with pytest.raises(DownloadError, match="sha256"):
        download_file(f"{server.url}titanet_large.nemo", dest, expected_sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupted_cache_is_downloaded_again(server: FileServer, tmp_path: Path) -> None:
    path, digest, _ = fetch_checkpoint("ecapa_tdnn", cache_dir=tmp_path, base_url=server.url, progress=False)
    assert digest == fixture_sha256()
    path.write_bytes(b"corrupted")
    path2, digest2, _ = fetch_checkpoint(
        "ecapa_tdnn", cache_dir=tmp_path, base_url=server.url, progress=False
    )
    assert path2 == path
    assert digest2 == fixture_sha256()
    assert path.read_bytes() == nemo_path(FIXTURE_MODEL).read_bytes()


def test_missing_file_on_every_mirror_fails_cleanly(server: FileServer, tmp_path: Path) -> None:
    server.files.clear()
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_checkpoint("titanet_small", cache_dir=tmp_path, base_url=server.url, progress=False)
    assert not (tmp_path / "titanet_small.nemo").exists()


def test_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        fetch_checkpoint("titanet_small", cache_dir=tmp_path, base_url="http://127.0.0.1:9", progress=False)


def test_registry_covers_the_cli_and_uses_https() -> None:
    assert set(PRETRAINED_NAMES) == set(PRETRAINED)
    for checkpoint in PRETRAINED.values():
        assert checkpoint.urls
        assert all(url.startswith("https://") for url in checkpoint.urls)
        assert checkpoint.urls[-1].endswith(".nemo")
