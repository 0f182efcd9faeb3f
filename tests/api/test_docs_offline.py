"""/docs works on a host that reaches nothing outside: every asset comes from the service itself.

The browser tests run Debian's Chromium headless against a real `voxgate serve` on 127.0.0.1, with
every other address unreachable (a proxy on a closed port, every host name unresolvable), and watch
the page through the DevTools protocol (over a pipe): which URLs it asked for, what failed, what it
rendered. A control run against FastAPI's stock /docs page shows the same harness catching a CDN.

Set VOXGATE_DOCS_SCREENSHOT=/some/file.png to also save a screenshot of the rendered page.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.factory import create_app
from app.api.routes import docs
from app.core.settings import Settings
from app.store.embedded_redis import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"
ENDPOINTS = ("/enroll", "/verify", "/identify")
# Chromium's own background services (update checks, sign-in, time) are switched off where a flag
# exists; the rest can only fail, as below. The page's requests are what the tests check.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1600",
    # Nothing but 127.0.0.1 is reachable: other requests go to a proxy on a port nobody listens on,
    # and every host name but 127.0.0.1 fails to resolve.
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
PAGE_TIMEOUT_S = 60.0  # give up waiting for the page (a failure, not a measurement)


# --- Chromium over the DevTools protocol ------------------------------------------------------------
def chromium_binary() -> str:
    """Debian's chromium (VOXGATE_CHROMIUM overrides); a clear failure, not a skip, when missing."""
    override = os.environ.get("VOXGATE_CHROMIUM")
    found = override or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        pytest.fail(
            "Chromium is needed for the /docs browser tests and was not found: `make test` installs it "
            "(Debian package `chromium`: apt-get install -y chromium), or set VOXGATE_CHROMIUM"
        )
    return found


class DevTools:
    """Chromium with --remote-debugging-pipe: CDP messages as NUL-terminated JSON on fds 3 (in) and 4
    (out). One page target, attached in flattened mode; events are kept for the test to read."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The browser wants the pipe ends as exactly fds 3 and 4; the shell puts them there.
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.log = profile.with_name(profile.name + ".log")
        with self.log.open("wb") as log:  # a file, not a pipe nobody reads (it would fill and block)
            self.proc = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    script,
                    binary,
                    *CHROMIUM_FLAGS,
                    "--remote-debugging-pipe",
                    f"--user-data-dir={profile}",
                    "about:blank",
                ],
                pass_fds=(to_browser_r, from_browser_w),
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = ""

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)

    def _pump(self, deadline: float) -> None:
        message = self._messages.get(timeout=max(0.01, deadline - time.monotonic()))
        if message is None:
            err = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"chromium closed the DevTools pipe (exit {self.proc.poll()}): {err}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)

    def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while self._next_id not in self._replies:
            self._pump(deadline)
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise AssertionError(f"DevTools {method} failed: {reply['error']}")
        return reply.get("result", {})

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)[
            "sessionId"
        ]
        for domain in ("Network", "Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", page=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self._to_browser)


@dataclass
class Rendered:
    paths: list[str]  # the operation paths Swagger UI rendered
    title: str
    requested: list[str] = field(default_factory=list)  # every URL the page asked for
    failed: list[str] = field(default_factory=list)  # URL + error of each failed load
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # script exceptions and console errors


RENDERED_PATHS_JS = (
    "JSON.stringify([...document.querySelectorAll('.opblock-summary-path')]"
    ".map(e => e.getAttribute('data-path') || e.textContent))"
)


def render_docs(url: str, profile: Path, *, want: tuple[str, ...] = ENDPOINTS) -> Rendered:
    """Open ``url`` in headless Chromium; wait until every path in ``want`` is rendered, the page
    stops (load finished and a failed script), or PAGE_TIMEOUT_S; report what the page did."""
    browser = DevTools(chromium_binary(), profile)
    try:
        browser.open_page()
        browser.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        paths: list[str] = []
        while time.monotonic() < deadline:
            paths = json.loads(browser.evaluate(RENDERED_PATHS_JS) or "[]")
            loaded = any(e["method"] == "Page.loadEventFired" for e in browser.events)
            if set(want) <= set(paths) or (loaded and _failed(browser.events) and not paths):
                break
            with contextlib.suppress(queue.Empty):
                browser._pump(time.monotonic() + 0.2)
        shot = os.environ.get("VOXGATE_DOCS_SCREENSHOT")
        if shot:
            data = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            Path(shot).write_bytes(base64.b64decode(data["data"]))
        title = str(browser.evaluate("document.querySelector('.info .title')?.textContent ?? ''"))
    finally:
        browser.close()
    rendered = Rendered(paths=paths, title=title)
    for event in browser.events:
        params = event.get("params", {})
        method = event["method"]
        if method == "Network.requestWillBeSent":
            rendered.requested.append(params["request"]["url"])
        elif method == "Network.responseReceived":
            rendered.statuses[params["response"]["url"]] = int(params["response"]["status"])
        elif method == "Runtime.exceptionThrown":
            rendered.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            rendered.errors.append(params["entry"].get("text", "")[:500])
    rendered.failed = _failed(browser.events)
    return rendered


def _failed(events: list[dict[str, Any]]) -> list[str]:
    urls = {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in events
        if e["method"] == "Network.requestWillBeSent"
    }
    return [
        f"{urls.get(e['params']['requestId'], '?')}: {e['params'].get('errorText')}"
        for e in events
        if e["method"] == "Network.loadingFailed"
    ]


def off_host(urls: list[str]) -> list[str]:
    """URLs that would leave 127.0.0.1 (data:/blob: URLs are the page's own)."""
    return [
        u for u in urls if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname != "127.0.0.1"
    ]


# --- servers ----------------------------------------------------------------------------------------
def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`voxgate serve` on 127.0.0.1 (default model, embedded redis-server), until the module ends."""
    data_dir = tmp_path_factory.mktemp("serve-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "VOXGATE_REDIS_URL")}
    env.update({"VOXGATE_DATA_DIR": str(data_dir), "VOXGATE_WARMUP": "false", "VOXGATE_LOG_JSON": "true"})
    log_path = data_dir / "serve.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            str(DEFAULT_MODEL_DIR),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                err = log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"voxgate serve exited: {err}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                if _get(f"{base}/healthz") == 200:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("voxgate serve did not start")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def stock_fastapi_docs() -> Iterator[str]:
    """A bare FastAPI app with its default, CDN-backed /docs, under uvicorn on 127.0.0.1."""
    app = FastAPI(title="stock")

    @app.post("/enroll")
    async def enroll() -> dict[str, str]:  # pragma: no cover - only documented, never called
        return {}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- browser tests ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_docs_render_offline_in_a_real_browser(served: str, tmp_path: Path) -> None:
    page = render_docs(f"{served}/docs", tmp_path / "profile")
    assert set(ENDPOINTS) <= set(page.paths), page
    assert page.title.startswith("VoxGate"), page.title
    assert not off_host(page.requested), f"requests left 127.0.0.1: {off_host(page.requested)}"
    assert not page.failed, page.failed
    assert not page.errors, page.errors
    # The assets really came from the service (not a browser cache: the profile is new).
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert page.statuses.get(f"{served}{docs.ASSETS_PATH}/{asset}") == 200, page.statuses
    assert page.statuses.get(f"{served}/openapi.json") == 200, page.statuses


@pytest.mark.slow
def test_the_harness_catches_a_cdn_backed_docs_page(tmp_path: Path) -> None:
    """Control: FastAPI's stock /docs, in the same offline browser, asks a CDN and renders nothing."""
    with stock_fastapi_docs() as base:
        page = render_docs(f"{base}/docs", tmp_path / "profile", want=("/enroll",))
    leaked = {urlsplit(u).hostname for u in off_host(page.requested)}
    assert "cdn.jsdelivr.net" in leaked, page.requested
    assert page.failed
    assert page.paths == []


# --- the service's docs routes (in process) ---------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> TestClient:
    # No lifespan: the docs routes need no engine or Redis, so nothing is started.
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))  # type: ignore[call-arg]
    return TestClient(app)


def test_docs_page_references_only_the_service_s_own_assets(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.text
    for name in docs.ASSETS:
        assert f'"{docs.ASSETS_PATH}/{name}"' in html
    assert "http://" not in html, html
    assert "https://" not in html, html
    assert '"validatorUrl": null' in html


def test_every_asset_is_served_with_its_type_and_a_cache_header(client: TestClient) -> None:
    for name, media_type in docs.ASSETS.items():
        response = client.get(f"{docs.ASSETS_PATH}/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.headers["cache-control"] == docs.ASSET_CACHE_CONTROL
        assert response.content == (docs.ASSETS_DIR / name).read_bytes()


def test_only_listed_assets_are_served(client: TestClient) -> None:
    assert (docs.ASSETS_DIR / "LICENSE").is_file()
    for path in ("LICENSE", "README.md", "..%2Fdocs.py", "%2E%2E%2F%2E%2E%2Fsettings.py"):
        response = client.get(f"{docs.ASSETS_PATH}/{path}")
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


def test_redoc_is_off_and_docs_are_not_in_the_openapi_document(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404
    spec = client.get("/openapi.json").json()
    assert not [p for p in spec["paths"] if p.startswith("/docs")]


def test_asset_urls_follow_the_root_path_behind_a_proxy() -> None:
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))  # type: ignore[call-arg]
    html = TestClient(app, root_path="/voxgate").get("/docs").text
    assert f'"/voxgate{docs.ASSETS_PATH}/swagger-ui-bundle.js"' in html
    assert "url: '/voxgate/openapi.json'" in html


def test_the_vendored_copy_keeps_its_licence_and_only_what_the_page_needs() -> None:
    kept = {p.name for p in docs.ASSETS_DIR.iterdir()}
    licence_files = {"LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt", "README.md"}
    assert kept == set(docs.ASSETS) | licence_files
    assert "Apache License" in (docs.ASSETS_DIR / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_installed_package_carries_the_assets(tmp_path: Path) -> None:
    """The Docker image pip-installs the package (not a checkout): build the wheel from what its
    builder stage copies (pyproject.toml, README.md, app/) and look inside."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("voxgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    rel = docs.ASSETS_DIR.relative_to(REPO_ROOT).as_posix()
    for name in (*docs.ASSETS, "LICENSE", "NOTICE"):
        assert f"{rel}/{name}" in names, sorted(n for n in names if "static" in n)
